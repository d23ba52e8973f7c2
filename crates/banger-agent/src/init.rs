//! banger's minimal init: what the agent does when the kernel starts it as PID 1
//! (`init=/usr/local/bin/banger-agent`, for images without systemd).
//!
//! PID 1 does the boot and then only supervises; the agent's server runs in a child
//! process (the same binary, started again, which is not PID 1 and so serves as always).
//! That split is what keeps reaping correct: orphans are re-parented to PID 1, which reaps
//! every child with `waitpid(-1)`, while the processes the agent runs for `exec` are the
//! agent's own children, whose exit statuses its exec code waits for as usual; PID 1 never
//! sees (and so never steals) them.
//!
//! The boot ([`run`]), each step logged to the console and none fatal:
//!
//! 1. signals blocked (before any thread exists, so they queue for [`run`]'s `sigwait`:
//!    PID 1 does not get signals it neither blocks nor handles), Ctrl-Alt-Del turned into
//!    SIGINT for PID 1;
//! 2. `/proc`, `/sys`, `/dev` (devtmpfs), `/dev/pts`, `/dev/shm`, `/run`, `/tmp` mounted
//!    unless already mount points (an initramfs moves its own over);
//! 3. the modules in `/etc/modules-load.d/banger.conf` loaded ([`crate::kmod`]);
//! 4. an image built with `--init systemd` ([`INSTALL_SYSTEMD_MARKER`]): systemd, when
//!    there, gets PID 1 at once; else the network comes up and the image's package manager
//!    installs it ([`install_commands`]), then systemd gets PID 1;
//! 5. the hostname from `/etc/hostname`, the network from `/etc/banger/network.env`
//!    ([`crate::net`]), the work disk `/dev/vdb` mounted at `/root`;
//! 6. first boot only: SSH host keys made with `ssh-keygen` when the image has it, then the
//!    marker the agent's `/host-keys` waits for;
//! 7. the agent started, and `sshd -D -e` when the image has `/usr/sbin/sshd`; both are
//!    restarted when they exit (at most once a second).
//!
//! Then it waits for signals: SIGCHLD reaps; SIGTERM, SIGPWR, SIGUSR2 and the ACPI power
//! button (QEMU's `system_powerdown`, read from the "Power Button" evdev device) power off;
//! SIGINT (Ctrl-Alt-Del, Firecracker's stop, with `reboot=k`) reboots, which ends a
//! Firecracker VM. Both first SIGTERM everything, wait up to [`STOP_GRACE`], SIGKILL what
//! is left, sync, unmount `/root`, remount `/` read-only and call `reboot(2)`.

use std::fs;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use banger_core::guest_init::{AGENT_PATH, INSTALL_SYSTEMD_MARKER};

use crate::host_keys::{FIRSTBOOT_DONE, SSH_DIR};
use crate::{kmod, net};

/// The `PATH` of everything init starts.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The work disk and where it goes.
pub const WORK_DISK: &str = "/dev/vdb";
pub const WORK_MOUNT: &str = "/root";
/// The image's sshd (the daemon checks the same path to decide whether to wait for ssh).
pub const SSHD: &str = "/usr/sbin/sshd";
/// How long processes get between SIGTERM and SIGKILL at shutdown.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Where systemd may be, in the order looked at.
pub const SYSTEMD_PATHS: [&str; 2] = ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"];

/// A mount made at boot: (source, target, type, flags, data).
pub type MountSpec<'a> = (&'a str, &'a str, &'a str, u64, &'a str);

const NOSUID: u64 = libc::MS_NOSUID;
const NODEV: u64 = libc::MS_NODEV;
const NOEXEC: u64 = libc::MS_NOEXEC;

/// The API filesystems, in mount order.
pub const MOUNTS: [MountSpec<'static>; 7] = [
    ("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", NOSUID | NODEV | NOEXEC, ""),
    ("devtmpfs", "/dev", "devtmpfs", NOSUID, "mode=0755"),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        NOSUID | NOEXEC,
        "mode=0620,ptmxmode=0666",
    ),
    ("tmpfs", "/dev/shm", "tmpfs", NOSUID | NODEV, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", NOSUID | NODEV, "mode=0755"),
    ("tmpfs", "/tmp", "tmpfs", NOSUID | NODEV, "mode=1777"),
];

/// The signals PID 1 takes through `sigwait`.
const SIGNALS: [libc::c_int; 6] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGPWR,
    libc::SIGUSR2,
    libc::SIGHUP,
];

/// How a shutdown ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    PowerOff,
    Reboot,
}

/// What a signal asks of PID 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Reap,
    Halt(Halt),
    Ignore,
}

/// The meaning of `signal` for PID 1 (see the module docs).
pub fn action(signal: libc::c_int) -> Action {
    match signal {
        libc::SIGCHLD => Action::Reap,
        libc::SIGTERM | libc::SIGPWR | libc::SIGUSR2 => Action::Halt(Halt::PowerOff),
        libc::SIGINT => Action::Halt(Halt::Reboot),
        _ => Action::Ignore,
    }
}

/// Runs as PID 1 (see the module docs); never returns.
pub fn run() -> ! {
    let set = block_signals();
    // SAFETY: reboot(RB_DISABLE_CAD) only changes what Ctrl-Alt-Del does.
    unsafe { libc::reboot(libc::RB_DISABLE_CAD) };
    for m in MOUNTS {
        if let Err(e) = mount_unless_mounted(m) {
            tracing::warn!("cannot mount {} on {}: {e}", m.2, m.1);
        }
    }
    load_modules();
    if Path::new(INSTALL_SYSTEMD_MARKER).exists() {
        hand_over_to_systemd(&set);
    }
    set_hostname();
    bring_up_network();
    mount_work_disk();
    first_boot_host_keys();
    std::thread::spawn(watch_power_button);
    let mut children = vec![Supervised::new("agent", AGENT_PATH, &[])];
    if Path::new(SSHD).is_file() {
        let _ = fs::create_dir_all("/run/sshd");
        children.push(Supervised::new("sshd", SSHD, &["-D", "-e"]));
    }
    for c in &mut children {
        c.start();
    }
    loop {
        let signal = wait_signal(&set);
        match action(signal) {
            Action::Reap => {
                for (pid, status) in reap() {
                    if let Some(c) = children.iter_mut().find(|c| c.pid == Some(pid)) {
                        tracing::warn!("{} (pid {pid}) exited ({status:#x}); restarting", c.name);
                        c.pid = None;
                    }
                }
                for c in children.iter_mut().filter(|c| c.pid.is_none()) {
                    c.start();
                }
            }
            Action::Halt(how) => shutdown(how),
            Action::Ignore => {}
        }
    }
}

/// A child PID 1 keeps running.
struct Supervised {
    name: &'static str,
    program: &'static str,
    args: &'static [&'static str],
    pid: Option<i32>,
    started: Option<Instant>,
}

impl Supervised {
    fn new(name: &'static str, program: &'static str, args: &'static [&'static str]) -> Self {
        Self {
            name,
            program,
            args,
            pid: None,
            started: None,
        }
    }

    fn start(&mut self) {
        if let Some(t) = self.started {
            let since = t.elapsed();
            if since < Duration::from_secs(1) {
                std::thread::sleep(Duration::from_secs(1) - since);
            }
        }
        self.started = Some(Instant::now());
        // std's spawn empties the child's signal mask and never waits for it: PID 1's reaper
        // collects its status.
        match Command::new(self.program)
            .args(self.args)
            .env("PATH", PATH)
            .env("HOME", WORK_MOUNT)
            .spawn()
        {
            Ok(child) => {
                self.pid = i32::try_from(child.id()).ok();
                tracing::info!("started {} (pid {})", self.name, child.id());
            }
            Err(e) => tracing::warn!("cannot start {} ({}): {e}", self.name, self.program),
        }
    }
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it, and
    // pthread_sigmask only changes this thread's mask (inherited by threads made later).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn unblock_signals(set: &libc::sigset_t) {
    // SAFETY: set was initialised by block_signals.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, set, std::ptr::null_mut()) };
}

fn wait_signal(set: &libc::sigset_t) -> libc::c_int {
    let mut sig: libc::c_int = 0;
    // SAFETY: set is initialised and blocked; sigwait writes the signal number into sig.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    if rc != 0 { 0 } else { sig }
}

/// Collects every exited child without blocking: (pid, raw wait status).
pub fn reap() -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG writes only status.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return out;
        }
        out.push((pid, status));
    }
}

/// Whether `path` is a mount point: on another device than its parent (or `/`).
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Ok(parent)) = (fs::metadata(path), fs::metadata(path.join(".."))) else {
        return false;
    };
    me.dev() != parent.dev() || me.ino() == parent.ino()
}

fn mount(source: &str, target: &str, fstype: &str, flags: u64, data: &str) -> io::Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).map_err(io::Error::other);
    let (source, target, fstype, data) = (c(source)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: every argument is a NUL-terminated string alive for the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Mounts `m` on its target (made if missing) unless something is mounted there already.
pub fn mount_unless_mounted(m: MountSpec<'_>) -> io::Result<bool> {
    let (source, target, fstype, flags, data) = m;
    fs::create_dir_all(target)?;
    if is_mount_point(Path::new(target)) {
        return Ok(false);
    }
    mount(source, target, fstype, flags, data)?;
    Ok(true)
}

fn load_modules() {
    let Ok(list) = fs::read_to_string(kmod::MODULES_LOAD_PATH) else {
        return;
    };
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let dir = PathBuf::from("/lib/modules").join(&release);
    for module in kmod::parse_modules_load(&list) {
        // One at a time: a module this kernel lacks does not keep the others out.
        match kmod::load(&dir, std::slice::from_ref(&module)) {
            Ok(files) if !files.is_empty() => tracing::info!("loaded {module}"),
            Ok(_) => {}
            Err(e) => tracing::warn!("{}", crate::error_chain(&e)),
        }
    }
}

fn set_hostname() {
    let Ok(name) = fs::read_to_string("/etc/hostname") else {
        return;
    };
    let name = name.trim();
    if !name.is_empty()
        && let Err(e) = rustix::system::sethostname(name.as_bytes())
    {
        tracing::warn!("cannot set the hostname {name:?}: {e}");
    }
}

fn bring_up_network() {
    let text = match fs::read_to_string(net::NETWORK_ENV_PATH) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("{}: {e}; no network", net::NETWORK_ENV_PATH);
            return;
        }
    };
    match net::NetworkEnv::parse(&text)
        .and_then(|env| net::configure(&env, Duration::from_secs(10)).map(|done| (env, done)))
    {
        Ok((env, done)) => tracing::info!(
            "network: {} {}/{}{}",
            done.iface,
            env.ip,
            env.prefix,
            env.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
        ),
        Err(e) => tracing::warn!("network: {}", crate::error_chain(&e)),
    }
}

fn mount_work_disk() {
    let disk = Path::new(WORK_DISK);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !disk.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if !disk.exists() {
        tracing::warn!("no work disk {WORK_DISK}; {WORK_MOUNT} stays on the root filesystem");
        return;
    }
    let _ = fs::create_dir_all(WORK_MOUNT);
    if is_mount_point(Path::new(WORK_MOUNT)) {
        return;
    }
    match mount(WORK_DISK, WORK_MOUNT, "ext4", 0, "") {
        Ok(()) => tracing::info!("mounted {WORK_DISK} on {WORK_MOUNT}"),
        Err(e) => tracing::warn!("cannot mount {WORK_DISK} on {WORK_MOUNT}: {e}"),
    }
}

/// The first of `PATH`'s directories holding `program`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    PATH.split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn first_boot_host_keys() {
    if Path::new(FIRSTBOOT_DONE).exists() {
        return;
    }
    if let Some(keygen) = find_program("ssh-keygen") {
        if let Ok(dir) = fs::read_dir(SSH_DIR) {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let _ = fs::create_dir_all(SSH_DIR);
        for kind in ["ed25519", "ecdsa"] {
            let file = format!("{SSH_DIR}/ssh_host_{kind}_key");
            match Command::new(&keygen)
                .args(["-q", "-t", kind, "-N", "", "-f", &file])
                .env("PATH", PATH)
                .status()
            {
                Ok(s) if s.success() => {}
                Ok(s) => tracing::warn!("ssh-keygen -t {kind}: {s}"),
                Err(e) => tracing::warn!("cannot run {}: {e}", keygen.display()),
            }
        }
    }
    let done = Path::new(FIRSTBOOT_DONE);
    if let Some(parent) = done.parent() {
        let _ = fs::create_dir_all(parent);
    }
    if let Err(e) = fs::write(done, b"") {
        tracing::warn!("cannot write {FIRSTBOOT_DONE}: {e}");
    }
}

/// The ACPI power button, pressed by QEMU's `system_powerdown`: a "Power Button" input
/// device (ACPI `button` and `evdev` modules); a press SIGPWRs PID 1.
fn watch_power_button() {
    let deadline = Instant::now() + Duration::from_secs(30);
    let device = loop {
        if let Some(d) = find_input_device("Power Button") {
            break d;
        }
        if Instant::now() >= deadline {
            tracing::info!("no power button device: ACPI shutdown is not handled");
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let Ok(mut f) = fs::File::open(&device) else {
        tracing::warn!("cannot open {}", device.display());
        return;
    };
    tracing::info!("power button: {}", device.display());
    // struct input_event on x86_64: a 16-byte timeval, then type u16, code u16, value i32.
    let mut ev = [0u8; 24];
    while f.read_exact(&mut ev).is_ok() {
        if is_power_press(&ev) {
            // SAFETY: kill to our own pid; the signal is blocked and taken by sigwait.
            unsafe { libc::kill(libc::getpid(), libc::SIGPWR) };
        }
    }
}

/// Whether an evdev `input_event` (x86_64 layout) is a press of `KEY_POWER`.
pub fn is_power_press(ev: &[u8; 24]) -> bool {
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;
    let kind = u16::from_ne_bytes([ev[16], ev[17]]);
    let code = u16::from_ne_bytes([ev[18], ev[19]]);
    let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

/// `/dev/input/eventN` of the input device named `name` (from sysfs).
fn find_input_device(name: &str) -> Option<PathBuf> {
    for e in fs::read_dir("/sys/class/input").ok()?.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        if !file.starts_with("event") {
            continue;
        }
        let n = fs::read_to_string(e.path().join("device/name")).unwrap_or_default();
        if n.trim() == name {
            return Some(Path::new("/dev/input").join(file));
        }
    }
    None
}

/// Stops everything and halts (see the module docs).
fn shutdown(how: Halt) -> ! {
    tracing::info!("shutting down ({how:?})");
    // SAFETY: kill(-1) signals every process but PID 1 (and kernel threads).
    unsafe { libc::kill(-1, libc::SIGTERM) };
    if !wait_all_children(STOP_GRACE) {
        // SAFETY: as above.
        unsafe { libc::kill(-1, libc::SIGKILL) };
        wait_all_children(Duration::from_secs(2));
    }
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if is_mount_point(Path::new(WORK_MOUNT))
        && let Err(e) = rustix::mount::unmount(WORK_MOUNT, rustix::mount::UnmountFlags::empty())
    {
        tracing::warn!("cannot unmount {WORK_MOUNT}: {e}");
    }
    if let Err(e) = mount("", "/", "", libc::MS_REMOUNT | libc::MS_RDONLY, "") {
        tracing::warn!("cannot remount / read-only: {e}");
    }
    // SAFETY: as above.
    unsafe { libc::sync() };
    let cmd = match how {
        Halt::PowerOff => libc::RB_POWER_OFF,
        Halt::Reboot => libc::RB_AUTOBOOT,
    };
    // SAFETY: reboot as PID 1 after syncing; it does not return on success.
    unsafe { libc::reboot(cmd) };
    tracing::error!("reboot(2) failed: {}", io::Error::last_os_error());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Reaps until no child is left (true) or `within` passed (false).
fn wait_all_children(within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG writes only status.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid < 0 {
            return true; // ECHILD: none left
        }
        if pid == 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A distribution family, by its package manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Debian,
    Alpine,
    Fedora,
    Arch,
    Suse,
}

/// The family of the system whose `/etc/os-release` is `text`: its `ID`, else the first
/// `ID_LIKE` word that names one.
pub fn family(text: &str) -> Option<Family> {
    let value = |key: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|v| v.strip_prefix('='))
                .map(|v| v.trim().trim_matches(['"', '\'']).to_ascii_lowercase())
        })
    };
    let of = |id: &str| match id {
        "debian" | "ubuntu" => Some(Family::Debian),
        "alpine" => Some(Family::Alpine),
        "fedora" | "rhel" | "centos" | "rocky" | "almalinux" => Some(Family::Fedora),
        "arch" | "archlinux" => Some(Family::Arch),
        "suse" | "opensuse" | "sles" => Some(Family::Suse),
        id if id.starts_with("opensuse") => Some(Family::Suse),
        _ => None,
    };
    value("ID")
        .as_deref()
        .and_then(of)
        .or_else(|| value("ID_LIKE")?.split_whitespace().find_map(of))
}

/// The commands installing systemd, openssh-server and `ip` for `family`. Alpine has no
/// systemd package: there they install sshd and `ip` only, and the agent stays init.
pub fn install_commands(family: Family) -> Vec<Vec<&'static str>> {
    match family {
        Family::Debian => vec![
            vec!["apt-get", "update"],
            vec![
                "apt-get",
                "install",
                "-y",
                "--no-install-recommends",
                "systemd",
                "systemd-sysv",
                "openssh-server",
                "iproute2",
                "kmod",
            ],
        ],
        Family::Alpine => vec![vec!["apk", "add", "--no-cache", "openssh", "iproute2"]],
        Family::Fedora => vec![vec![
            "dnf",
            "install",
            "-y",
            "systemd",
            "openssh-server",
            "iproute",
            "kmod",
        ]],
        Family::Arch => vec![vec![
            "pacman",
            "-Sy",
            "--noconfirm",
            "systemd",
            "systemd-sysvcompat",
            "openssh",
            "iproute2",
        ]],
        Family::Suse => vec![vec![
            "zypper",
            "--non-interactive",
            "install",
            "systemd",
            "systemd-sysvinit",
            "openssh-server",
            "iproute2",
            "kmod",
        ]],
    }
}

fn systemd() -> Option<&'static str> {
    SYSTEMD_PATHS.into_iter().find(|p| Path::new(p).is_file())
}

/// `--init systemd`: systemd gets PID 1, installed first if missing (with a network); when
/// that cannot be, the boot goes on with banger's init.
fn hand_over_to_systemd(set: &libc::sigset_t) {
    if systemd().is_none() {
        bring_up_network();
        let os = fs::read_to_string("/etc/os-release")
            .or_else(|_| fs::read_to_string("/usr/lib/os-release"))
            .unwrap_or_default();
        let Some(family) = family(&os) else {
            tracing::warn!("unknown distribution: cannot install systemd; banger's init goes on");
            return;
        };
        tracing::info!("installing systemd and openssh-server ({family:?})");
        for argv in install_commands(family) {
            let status = Command::new(argv[0])
                .args(&argv[1..])
                .env("PATH", PATH)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
            match status {
                Ok(s) if s.success() => {}
                Ok(s) => {
                    tracing::warn!("{}: {s}; banger's init goes on", argv.join(" "));
                    return;
                }
                Err(e) => {
                    tracing::warn!("cannot run {}: {e}; banger's init goes on", argv[0]);
                    return;
                }
            }
        }
    }
    let Some(systemd) = systemd() else {
        tracing::info!("no systemd for this distribution; banger's init goes on");
        return;
    };
    tracing::info!("handing PID 1 to {systemd}");
    unblock_signals(set);
    let e = Command::new(systemd).exec();
    block_signals();
    tracing::warn!("cannot exec {systemd}: {e}; banger's init goes on");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_come_from_id_then_id_like() {
        let cases = [
            ("ID=debian\n", Some(Family::Debian)),
            ("ID=ubuntu\nID_LIKE=debian\n", Some(Family::Debian)),
            ("ID=alpine\n", Some(Family::Alpine)),
            ("ID=\"fedora\"\n", Some(Family::Fedora)),
            (
                "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n",
                Some(Family::Fedora),
            ),
            ("ID=arch\n", Some(Family::Arch)),
            (
                "ID=\"opensuse-tumbleweed\"\nID_LIKE=\"opensuse suse\"\n",
                Some(Family::Suse),
            ),
            (
                "ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n",
                Some(Family::Debian),
            ),
            ("ID=\"garuda\"\nID_LIKE=\"arch\"\n", Some(Family::Arch)),
            ("ID=nixos\n", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(family(text), want, "{text:?}");
        }
    }

    #[test]
    fn install_commands_install_systemd_and_sshd_non_interactively() {
        let flat = |f| {
            install_commands(f)
                .into_iter()
                .map(|a| a.join(" "))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            flat(Family::Debian),
            [
                "apt-get update",
                "apt-get install -y --no-install-recommends systemd systemd-sysv openssh-server iproute2 kmod"
            ]
        );
        assert_eq!(
            flat(Family::Alpine),
            ["apk add --no-cache openssh iproute2"]
        );
        assert_eq!(
            flat(Family::Fedora),
            ["dnf install -y systemd openssh-server iproute kmod"]
        );
        assert_eq!(
            flat(Family::Arch),
            ["pacman -Sy --noconfirm systemd systemd-sysvcompat openssh iproute2"]
        );
        assert_eq!(
            flat(Family::Suse),
            [
                "zypper --non-interactive install systemd systemd-sysvinit openssh-server iproute2 kmod"
            ]
        );
    }

    #[test]
    fn signals_map_to_reaping_power_off_and_reboot() {
        assert_eq!(action(libc::SIGCHLD), Action::Reap);
        assert_eq!(action(libc::SIGTERM), Action::Halt(Halt::PowerOff));
        assert_eq!(action(libc::SIGPWR), Action::Halt(Halt::PowerOff));
        assert_eq!(action(libc::SIGINT), Action::Halt(Halt::Reboot));
        assert_eq!(action(libc::SIGHUP), Action::Ignore);
    }

    #[test]
    fn only_a_press_of_the_power_key_counts() {
        let ev = |kind: u16, code: u16, value: i32| {
            let mut e = [0u8; 24];
            e[16..18].copy_from_slice(&kind.to_ne_bytes());
            e[18..20].copy_from_slice(&code.to_ne_bytes());
            e[20..24].copy_from_slice(&value.to_ne_bytes());
            e
        };
        assert!(is_power_press(&ev(1, 116, 1)));
        assert!(!is_power_press(&ev(1, 116, 0)), "release");
        assert!(!is_power_press(&ev(1, 115, 1)), "another key");
        assert!(!is_power_press(&ev(0, 0, 0)), "sync");
    }

    #[test]
    fn mount_points_are_told_from_plain_directories() {
        assert!(is_mount_point(Path::new("/")));
        assert!(is_mount_point(Path::new("/proc")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(dir.path()));
    }

    #[test]
    #[allow(clippy::print_stderr)] // the visible reason for a skip
    fn a_mount_is_made_once_and_an_existing_mount_point_is_left_alone() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (mount)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("run");
        let target_str = target.display().to_string();
        let spec: MountSpec<'_> = ("tmpfs", &target_str, "tmpfs", NOSUID | NODEV, "mode=0755");
        assert!(
            mount_unless_mounted(spec).unwrap(),
            "made the directory and mounted"
        );
        assert!(is_mount_point(&target));
        assert!(!mount_unless_mounted(spec).unwrap(), "not stacked twice");
        rustix::mount::unmount(&target, rustix::mount::UnmountFlags::empty()).unwrap();
        assert!(!is_mount_point(&target));
    }

    /// The test process as a subreaper stands in for PID 1: an orphaned grandchild comes to
    /// it and is reaped with its exit status.
    #[test]
    fn the_reaper_collects_an_orphaned_grandchild() {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only marks this (test) process.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
        // sh forks a background sleep that outlives it: the orphan.
        let mut sh = Command::new("sh")
            .args(["-c", "sleep 0.2 & echo $!"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = String::new();
        sh.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let orphan: i32 = out.trim().parse().unwrap();
        // The intermediate sh is our child: it is waited for normally, by its own handle.
        let sh_status = sh.wait().unwrap();
        assert!(sh_status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut reaped = Vec::new();
        while !reaped.iter().any(|(p, _)| *p == orphan) && Instant::now() < deadline {
            reaped.extend(reap());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            reaped
                .iter()
                .any(|(p, s)| *p == orphan && libc::WIFEXITED(*s)),
            "orphan {orphan} reaped: {reaped:?}"
        );
    }
}
