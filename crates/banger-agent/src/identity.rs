//! `POST /identity` ([`banger_agent_proto::identity`]): a guest restored from a template
//! becomes itself — clock, entropy, files, hostname, network, machine id, SSH host keys,
//! grown file systems — before the host reports it ready.
//!
//! Every step runs even when an earlier one failed, and the answer lists every failure: a
//! half-renamed guest is never reported as done.
//!
//! **The boot id.** `/proc/sys/kernel/random/boot_id` is made by the kernel on its first read
//! (systemd reads it early in every boot, so a template has it) and cannot be written. The
//! agent does what container managers do for a container's boot id (systemd-nspawn, LXC): a
//! fresh random UUID in a read-only file under `/run`, bind-mounted over that path, so every
//! process that reads it from then on (`sd_id128_get_boot`, `journalctl`, a user's `cat`) sees
//! the restored VM's own. journald read it at boot and caches it, so it is restarted (without
//! waiting) to log under the new one; PID 1 keeps the template's in memory. A cold boot of the
//! VM's disks starts from a fresh kernel boot id and no mount.
//!
//! The paths the steps touch are those of a [`Guest`], so tests run them in a directory.

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use banger_agent_proto::identity::{Identity, MAX_ENTROPY, unhex};

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// A failed identity step.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the request is invalid: {0}")]
    Invalid(String),
    #[error("identity steps failed: {}", .0.join("; "))]
    Steps(Vec<String>),
    #[error("the new host keys cannot be read")]
    HostKeys(#[from] crate::host_keys::HostKeyError),
}

impl IdentityError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid(_) => 400,
            Self::Steps(_) | Self::HostKeys(_) => 500,
        }
    }
}

/// Where the steps act: `/` in a guest.
#[derive(Debug, Clone)]
pub struct Guest {
    pub root: PathBuf,
    /// Whether the steps that act on the running kernel or its devices (clock, entropy,
    /// hostname, network, sshd, file system growth) run; off in tests and in the fake
    /// Firecracker's sandbox (`banger-agent --identity-root`).
    pub kernel: bool,
}

impl Guest {
    /// The real guest.
    pub fn system() -> Self {
        Self {
            root: PathBuf::from("/"),
            kernel: true,
        }
    }

    fn path(&self, guest_path: &str) -> PathBuf {
        self.root.join(guest_path.trim_start_matches('/'))
    }
}

/// Checks `req` before any step runs.
fn check(req: &Identity) -> Result<Vec<u8>, IdentityError> {
    let invalid = IdentityError::Invalid;
    let entropy = unhex(&req.entropy).ok_or_else(|| invalid("entropy is not hex".to_string()))?;
    if entropy.len() < 32 || entropy.len() > MAX_ENTROPY {
        return Err(invalid(format!(
            "entropy is {} bytes: between 32 and {MAX_ENTROPY} are needed",
            entropy.len()
        )));
    }
    if req.hostname.is_empty()
        || req.hostname.len() > 63
        || !req
            .hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(invalid(format!("hostname {:?} is invalid", req.hostname)));
    }
    let mac_ok = req.mac.split(':').count() == 6
        && req
            .mac
            .split(':')
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !mac_ok {
        return Err(invalid(format!("MAC address {:?} is invalid", req.mac)));
    }
    for f in &req.files {
        banger_agent_proto::files::check_guest_path(&f.path).map_err(|e| invalid(e.to_string()))?;
    }
    for dev in &req.grow {
        if !dev.starts_with("/dev/") || dev.contains("..") {
            return Err(invalid(format!("{dev:?} is not a device under /dev")));
        }
    }
    Ok(entropy)
}

/// Runs every step for `req` on `guest` (see the module docs), then returns; the host reads
/// the new host keys afterwards.
pub fn apply(guest: &Guest, req: &Identity) -> Result<(), IdentityError> {
    let entropy = check(req)?;
    let mut failed = Vec::new();
    let kmsg = guest.kernel;
    let mut step = |what: &str, result: Result<(), String>| {
        tracing::info!(step = what, ok = result.is_ok(), "identity step");
        if kmsg {
            console(&format!(
                "identity step {what}: {}",
                if result.is_ok() { "ok" } else { "failed" }
            ));
        }
        if let Err(why) = result {
            failed.push(format!("{what}: {why}"));
        }
    };
    if guest.kernel {
        console("identity: starting");
        step("clock", set_clock(req.time_unix_ns));
        step("entropy", reseed(&entropy));
    }
    for f in &req.files {
        step(
            &f.path,
            write_atomic(&guest.path(&f.path), f.content.as_bytes()),
        );
    }
    if guest.kernel {
        step("hostname", set_hostname(&req.hostname));
        step("network", network(guest, &req.mac));
    }
    step("machine-id", machine_id(guest));
    if guest.kernel {
        step("boot id", boot_id());
    }
    step("ssh host keys", host_keys(guest));
    // Growing acts on the guest's block devices: not outside a guest.
    for dev in req.grow.iter().filter(|_| guest.kernel) {
        step(dev, run("resize2fs", &[dev.as_str()]));
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(IdentityError::Steps(failed))
    }
}

/// A line on the kernel log (and so the VM's console log, `banger vm logs`): a step that
/// hangs is seen there even when the host's request times out. Best effort.
fn console(line: &str) {
    if let Ok(mut f) = fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = f.write_all(format!("<4>banger-agent: {line}\n").as_bytes());
    }
}

fn set_clock(unix_ns: u64) -> Result<(), String> {
    let ts = libc::timespec {
        tv_sec: (unix_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec that lives across the call; clock_settime only reads it.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error().to_string())
    }
}

/// Adds `bytes` to the kernel's pool, counted as entropy, and reseeds the CRNG at once.
fn reseed(bytes: &[u8]) -> Result<(), String> {
    let random = fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")
        .map_err(|e| format!("/dev/random: {e}"))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&((bytes.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
    info.extend_from_slice(bytes);
    // Padded to whole u32 words, as the struct's buffer is.
    info.resize(8 + bytes.len().div_ceil(4) * 4, 0);
    // SAFETY: `info` is a rand_pool_info of `buf_size` bytes of buffer, alive for the call;
    // the ioctl only reads it.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    if rc != 0 {
        return Err(format!("RNDADDENTROPY: {}", io::Error::last_os_error()));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) };
    if rc != 0 {
        return Err(format!("RNDRESEEDCRNG: {}", io::Error::last_os_error()));
    }
    Ok(())
}

fn set_hostname(name: &str) -> Result<(), String> {
    // SAFETY: the pointer and length describe `name`'s bytes, alive for the call.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error().to_string())
    }
}

/// Writes `path` whole, through a temporary file renamed over it (a symlink there, such as
/// `/etc/resolv.conf`'s, is replaced by the file).
fn write_atomic(path: &Path, content: &[u8]) -> Result<(), String> {
    let parent = path.parent().ok_or("no parent directory")?;
    fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    let tmp = parent.join(format!(
        ".{}.banger-new",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let write = || -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        e.to_string()
    })
}

/// The `PATH` of the programs the steps run.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `program` with `args`; its stderr is the error.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let child = Command::new(program)
        .args(args)
        .env("PATH", SYSTEM_PATH)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    finish(program, args, child)
}

/// The guest's network interface: the first one other than `lo` (banger VMs have one).
fn interface() -> Result<String, String> {
    let mut names: Vec<String> = fs::read_dir("/sys/class/net")
        .map_err(|e| format!("/sys/class/net: {e}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .ok_or_else(|| "no network interface".to_string())
}

/// The template's address and neighbours go, the interface takes `mac` and the address,
/// prefix and gateway of the `network.env` just written (the contract the boot's
/// `network-up` reads, parsed by [`crate::net::NetworkEnv`]). One `ip -batch` does it all:
/// every process started costs a tenth of a second or more under an emulated CPU, and the
/// script that does this at boot starts a dozen.
fn network(guest: &Guest, mac: &str) -> Result<(), String> {
    let path = guest.path(crate::net::NETWORK_ENV_PATH);
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let env = crate::net::NetworkEnv::parse(&text).map_err(|e| e.to_string())?;
    let iface = interface()?;
    let mut batch = format!(
        "addr flush dev {iface}\nneigh flush dev {iface}\nlink set dev {iface} down\n\
         link set dev {iface} address {mac}\nlink set dev lo up\nlink set dev {iface} up\n\
         addr add {}/{} dev {iface}\n",
        env.ip, env.prefix
    );
    if let Some(gw) = env.gateway {
        batch.push_str(&format!("route replace default via {gw} dev {iface}\n"));
    }
    run_with_input("ip", &["-batch", "-"], batch.as_bytes())
}

/// [`run`] with `input` on the program's stdin.
fn run_with_input(program: &str, args: &[&str], input: &[u8]) -> Result<(), String> {
    let mut child = Command::new(program)
        .args(args)
        .env("PATH", SYSTEM_PATH)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|e| format!("{program}: stdin: {e}"))?;
    }
    finish(program, args, child)
}

/// Waits for `child` (started as `program args`); its stderr is the error.
fn finish(program: &str, args: &[&str], child: std::process::Child) -> Result<(), String> {
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A fresh `/etc/machine-id` (32 hex digits from the reseeded kernel CRNG).
fn machine_id(guest: &Guest) -> Result<(), String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_atomic(
        &guest.path("/etc/machine-id"),
        format!("{hex}\n").as_bytes(),
    )
}

/// Where the restored VM's own boot id is kept, bind-mounted over [`BOOT_ID`].
const OWN_BOOT_ID: &str = "/run/banger/boot_id";
/// The kernel's boot id.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// A random (version 4) UUID as the kernel prints one: 36 lowercase characters.
fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A fresh boot id over the template's (see the module docs). A guest already restored once
/// (a fork of a restored VM) has the mount: it is replaced, never stacked.
fn boot_id() -> Result<(), String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    let own = Path::new(OWN_BOOT_ID);
    if let Some(dir) = own.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    write_atomic(own, format!("{}\n", uuid_v4(bytes)).as_bytes())?;
    let path = |p: &str| std::ffi::CString::new(p).map_err(|e| e.to_string());
    let (src, dst) = (path(OWN_BOOT_ID)?, path(BOOT_ID)?);
    // SAFETY: umount2 with a NUL-terminated path; it fails harmlessly (EINVAL) when nothing is
    // mounted there yet.
    unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) };
    // SAFETY: mount(2) with NUL-terminated paths that outlive the call and null fs type and
    // data, which a bind mount does not read.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "bind {OWN_BOOT_ID} over {BOOT_ID}: {}",
            io::Error::last_os_error()
        ));
    }
    if Path::new("/run/systemd/system").exists() {
        // Not waited for (systemctl starting is itself slow under an emulated CPU): a thread
        // reaps it and logs a failure.
        let child = Command::new("systemctl")
            .args(["restart", "--no-block", "systemd-journald.service"])
            .env("PATH", SYSTEM_PATH)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("systemctl: {e}"))?;
        std::thread::spawn(move || {
            let args = ["restart", "--no-block", "systemd-journald.service"];
            if let Err(e) = finish("systemctl", &args, child) {
                tracing::warn!(error = %e, "journald not restarted under the new boot id");
            }
        });
    }
    Ok(())
}

/// New host keys of the types the guest had (none: nothing to do), then sshd reloads (it
/// re-executes on `SIGHUP` and reads them again).
fn host_keys(guest: &Guest) -> Result<(), String> {
    let dir = guest.path("/etc/ssh");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(());
    };
    let mut types: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("ssh_host_")
                .and_then(|n| n.strip_suffix("_key"))
                .map(str::to_string)
        })
        .collect();
    types.sort();
    // One ssh-keygen per type, all at once (each is a process start and a key under an
    // emulated CPU); every one is waited for, and the first failure reported.
    let keygens: Vec<_> = types
        .iter()
        .map(|kind| {
            let key = dir.join(format!("ssh_host_{kind}_key"));
            let _ = fs::remove_file(&key);
            let _ = fs::remove_file(key.with_extension("pub"));
            let key = key.to_string_lossy().into_owned();
            let kind = kind.clone();
            std::thread::spawn(move || {
                run("ssh-keygen", &["-q", "-t", &kind, "-N", "", "-f", &key])
            })
        })
        .collect();
    let results: Vec<Result<(), String>> = keygens
        .into_iter()
        .map(|t| {
            t.join()
                .unwrap_or_else(|_| Err("ssh-keygen thread panicked".into()))
        })
        .collect();
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    if guest.kernel
        && let Ok(pid) = fs::read_to_string("/run/sshd.pid")
        && let Ok(pid) = pid.trim().parse::<i32>()
    {
        // SAFETY: kill(2) with a pid read from sshd's pid file and SIGHUP has no memory
        // effects on this process.
        unsafe { libc::kill(pid, libc::SIGHUP) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_agent_proto::identity::IdentityFile;

    fn request() -> Identity {
        Identity {
            hostname: "calm-otter".into(),
            files: vec![IdentityFile {
                path: "/etc/hostname".into(),
                content: "calm-otter\n".into(),
            }],
            mac: "06:00:ac:1e:00:09".into(),
            entropy: banger_agent_proto::identity::hex(&[7u8; 64]),
            time_unix_ns: 1,
            grow: vec![],
        }
    }

    #[test]
    fn files_and_machine_id_are_written_and_old_host_keys_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let guest = Guest {
            root: dir.path().to_path_buf(),
            kernel: false,
        };
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/machine-id"), "template\n").unwrap();
        apply(&guest, &request()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("etc/hostname")).unwrap(),
            "calm-otter\n"
        );
        let id = fs::read_to_string(dir.path().join("etc/machine-id")).unwrap();
        assert_eq!(id.len(), 33, "{id:?}");
        assert_ne!(id, "template\n");
        // No /etc/ssh: no keys to replace, not an error.
        let ssh_keygen = Command::new("ssh-keygen").arg("-?").output().is_ok();
        if ssh_keygen {
            let ssh = dir.path().join("etc/ssh");
            fs::create_dir_all(&ssh).unwrap();
            fs::write(ssh.join("ssh_host_ed25519_key"), "old").unwrap();
            fs::write(ssh.join("ssh_host_ed25519_key.pub"), "old").unwrap();
            apply(&guest, &request()).unwrap();
            let public = fs::read_to_string(ssh.join("ssh_host_ed25519_key.pub")).unwrap();
            assert!(public.starts_with("ssh-ed25519 "), "{public}");
        }
    }

    #[test]
    fn a_boot_id_is_a_version_4_uuid_as_the_kernel_prints_one() {
        let id = uuid_v4([0xff; 16]);
        assert_eq!(id, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let id = uuid_v4([0; 16]);
        assert_eq!(id, "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn bad_requests_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let guest = Guest {
            root: dir.path().to_path_buf(),
            kernel: false,
        };
        type Edit = fn(&mut Identity);
        let cases: [(Edit, &str); 5] = [
            (|r| r.entropy = "!!".into(), "hex"),
            (|r| r.entropy = "01".repeat(8), "32"),
            (|r| r.hostname = "a b".into(), "hostname"),
            (|r| r.mac = "06:00".into(), "MAC"),
            (|r| r.files[0].path = "etc/x".into(), "relative"),
        ];
        for (edit, needle) in cases {
            let mut req = request();
            edit(&mut req);
            let err = apply(&guest, &req).unwrap_err();
            assert_eq!(err.status(), 400);
            assert!(err.to_string().contains(needle), "{err}");
        }
        assert!(!dir.path().join("etc").exists());
    }
}
