//! QEMU's snapshots: a template's memory in a file, its device state saved by migration, a
//! restore that maps the memory copy-on-write, and disks cloned as qcow2 overlays.
//!
//! # How, and why
//!
//! - **A template's guest RAM is a file** (`memory-backend-file`, `share=on`, as the
//!   machine's memory backend): everything the guest writes lands in the file. A snapshot
//!   stops the vCPUs and migrates to `exec:cat > vmstate` with the capability
//!   `x-ignore-shared`, which leaves shared RAM blocks out of the stream: the state file holds
//!   only the devices and the small non-shared blocks (firmware, option ROMs), a few hundred
//!   KiB. QEMU 7.2 has no `file:` migration URI, hence `exec:`.
//! - **A restore maps that file privately** (`share=off`: `MAP_PRIVATE`), started with
//!   `-incoming defer`, then `x-ignore-shared` and `migrate-incoming exec:cat vmstate`. The
//!   destination's block is not shared, but the source sent no pages for it, so the guest
//!   sees the file's contents, and each page the guest writes becomes a private copy: the
//!   template's file never changes (checked by experiment on QEMU 7.2: two VMs restored from
//!   one file ran on, the file's checksum stayed the same, and each VMM's unwritten pages
//!   were shared with the page cache). Pages the guest never touches cost the host nothing
//!   per VM.
//! - **The restored VM has its own devices.** The command line is built from the VM's own
//!   spec (its TAP, MAC, disks, sockets) with the same machine as the template, which
//!   migration requires; the migrated virtio-net state carries the template's MAC, which the
//!   guest agent replaces (the identity step).
//! - **An incoming migration that fails ends QEMU**, so a restore waits on `query-status`:
//!   `inmigrate` while loading, `paused` once loaded (the template was stopped when saved),
//!   then `cont`. A closed socket means QEMU died, and the error quotes its log.
//! - **Disks are qcow2 overlays** (`qemu-img create -F raw -b`), made in O(1), whose backing
//!   file is a hard link, next to the overlay, to the template's raw disk: deleting or
//!   remaking the template never pulls a disk from under a VM restored from it. A disk
//!   larger than the template's is grown once the guest runs (`block_resize`, which tells the
//!   guest its new capacity).

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::qmp::{QmpClient, QmpError, QmpSession};
use crate::{Disk, DiskClone, Restore, SnapshotFiles, StartMode, VmSpec, VmmError};

/// The id of the machine's memory backend object (the RAM block's name, which the template
/// and every restore must share).
const MEMORY_ID: &str = "banger-mem";
/// Longest a save or a load may take.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);
/// The migration bandwidth of a save, in bytes per second: 16 GiB/s, the disk's speed.
const SAVE_BANDWIDTH: u64 = 16 << 30;
/// Pause between two polls of a migration.
const MIGRATE_POLL: Duration = Duration::from_millis(10);
/// The first bytes of a qcow2 file.
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// The QEMU block driver of a disk file: `qcow2` for a qcow2 file (a restored VM's overlay,
/// also when it boots cold later), else `raw` (also when the file cannot be read: QEMU then
/// says why).
pub fn disk_driver(path: &Path) -> &'static str {
    let mut magic = [0u8; 4];
    let is_qcow2 = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == QCOW2_MAGIC;
    if is_qcow2 { "qcow2" } else { "raw" }
}

/// The QMP node name of a disk (the `-blockdev` node of [`super::qemu_args`]).
pub fn node_name(disk: Disk) -> &'static str {
    match disk {
        Disk::Root => "root",
        Disk::Work => "work",
    }
}

/// The arguments `mode` adds to a boot's: the machine's memory backend, always named
/// [`MEMORY_ID`] (migration matches RAM blocks by name, so any VM can be saved and restored):
/// anonymous RAM for a boot, the file-backed memory of a template (shared) or of a restore
/// (private), anonymous RAM again for a restore whose snapshot has no memory file (a fork of
/// a VM not booted as a template: its state carries the memory); and `-incoming defer` for a
/// restore. `-machine` may be given twice: QEMU merges its options.
pub fn mode_args(spec: &VmSpec, mode: &StartMode) -> Result<Vec<OsString>, VmmError> {
    let file = match mode {
        StartMode::Boot => None,
        StartMode::BootTemplate { memory } => Some((memory.as_path(), "on")),
        StartMode::Restore(restore) if restore.snapshot.memory.exists() => {
            Some((restore.snapshot.memory.as_path(), "off"))
        }
        StartMode::Restore(_) => None,
    };
    let object = match file {
        Some((memory, share)) => super::option(
            &format!(
                "memory-backend-file,id={MEMORY_ID},size={}M,mem-path=",
                spec.memory_mib
            ),
            memory.as_os_str(),
            &format!(",share={share}"),
        ),
        None => format!(
            "memory-backend-ram,id={MEMORY_ID},size={}M",
            spec.memory_mib
        )
        .into(),
    };
    let mut args: Vec<OsString> = vec![
        "-machine".into(),
        format!("memory-backend={MEMORY_ID}").into(),
        "-object".into(),
        object,
    ];
    if let StartMode::Restore(restore) = mode {
        // Checked before the spawn: the state file is read by a shell command.
        exec_path(&spec.vm_id, &restore.snapshot.state)?;
        args.extend(["-incoming".into(), "defer".into()]);
    }
    Ok(args)
}

/// `path` single-quoted for the shell of an `exec:` migration URI; a path with a `'` or
/// that is not UTF-8 is refused.
fn exec_path(vm_id: &str, path: &Path) -> Result<String, VmmError> {
    match path.to_str() {
        Some(p) if !p.contains('\'') => Ok(format!("'{p}'")),
        _ => Err(VmmError::InvalidSpec {
            vm_id: vm_id.to_string(),
            what: "snapshot state path",
            reason: format!("{} is not UTF-8 or contains a single quote", path.display()),
        }),
    }
}

fn qmp_error(vm_id: &str) -> impl Fn(QmpError) -> VmmError + '_ {
    move |source| VmmError::Qmp {
        vm_id: vm_id.to_string(),
        source: Box::new(source),
    }
}

async fn set_ignore_shared(session: &mut QmpSession) -> Result<(), QmpError> {
    session
        .execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
        )
        .await
        .map(drop)
}

/// Stops the guest and saves its device state into `files.state`; the VM stays paused. The
/// memory of a template stays in its shared memory file (`x-ignore-shared`); any other VM's
/// RAM is not shared, so it goes into the state too.
pub async fn save(client: &QmpClient, vm_id: &str, files: &SnapshotFiles) -> Result<(), VmmError> {
    let err = qmp_error(vm_id);
    let target = exec_path(vm_id, &files.state)?;
    let mut session = client.connect().await.map_err(&err)?;
    session.execute("stop", None).await.map_err(&err)?;
    set_ignore_shared(&mut session).await.map_err(&err)?;
    // A migration is throttled to 32 MiB/s by default, meant for a network; this one writes
    // a local file while the guest is stopped (a fork's state carries its RAM).
    session
        .execute(
            "migrate-set-parameters",
            Some(json!({"max-bandwidth": SAVE_BANDWIDTH})),
        )
        .await
        .map_err(&err)?;
    session
        .execute(
            "migrate",
            Some(json!({"uri": format!("exec:cat > {target}")})),
        )
        .await
        .map_err(&err)?;
    let started = Instant::now();
    loop {
        let info = session.execute("query-migrate", None).await.map_err(&err)?;
        match info.get("status").and_then(|s| s.as_str()) {
            Some("completed") => return Ok(()),
            Some("failed" | "cancelled") => {
                let why = info
                    .get("error-desc")
                    .and_then(|s| s.as_str())
                    .unwrap_or("no reason given");
                return Err(VmmError::Snapshot {
                    vm_id: vm_id.to_string(),
                    what: format!("saving the VM state failed: {why}"),
                });
            }
            _ if started.elapsed() > MIGRATE_TIMEOUT => {
                return Err(VmmError::Snapshot {
                    vm_id: vm_id.to_string(),
                    what: format!("saving the VM state took more than {MIGRATE_TIMEOUT:?}"),
                });
            }
            _ => tokio::time::sleep(MIGRATE_POLL).await,
        }
    }
}

/// Loads `restore`'s snapshot into a QEMU started with [`mode_args`], resumes the guest and
/// grows the disks that grew.
pub async fn load(client: &QmpClient, vm_id: &str, restore: &Restore) -> Result<(), VmmError> {
    let err = qmp_error(vm_id);
    let source = exec_path(vm_id, &restore.snapshot.state)?;
    let mut session = client.connect().await.map_err(&err)?;
    set_ignore_shared(&mut session).await.map_err(&err)?;
    session
        .execute(
            "migrate-incoming",
            Some(json!({"uri": format!("exec:cat {source}")})),
        )
        .await
        .map_err(&err)?;
    let started = Instant::now();
    loop {
        let status = session.query_status().await.map_err(&err)?;
        match status.status.as_str() {
            "inmigrate" if started.elapsed() > MIGRATE_TIMEOUT => {
                return Err(VmmError::Snapshot {
                    vm_id: vm_id.to_string(),
                    what: format!("loading the VM state took more than {MIGRATE_TIMEOUT:?}"),
                });
            }
            "inmigrate" => tokio::time::sleep(MIGRATE_POLL).await,
            "paused" | "running" | "prelaunch" => break,
            other => {
                return Err(VmmError::Snapshot {
                    vm_id: vm_id.to_string(),
                    what: format!("after loading the VM state, QEMU is {other}"),
                });
            }
        }
    }
    session.execute("cont", None).await.map_err(&err)?;
    for (disk, size) in &restore.grown {
        session
            .execute(
                "block_resize",
                Some(json!({"node-name": node_name(*disk), "size": size})),
            )
            .await
            .map_err(&err)?;
    }
    Ok(())
}

/// The hard link, next to a qcow2 overlay `disk`, to its backing file ([`clone_disk`]).
fn base_link(disk: &Path) -> std::path::PathBuf {
    let mut name = disk
        .file_name()
        .unwrap_or(OsStr::new("disk"))
        .to_os_string();
    name.push(".base");
    disk.with_file_name(name)
}

/// Copies the disk `src` of a paused VM to `dest` ([`crate::copy::copy_file`]); a qcow2
/// overlay's backing file, which it names relatively, gets a hard link next to the copy
/// (the backing file never changes, so both overlays share it).
pub async fn copy_disk(src: &Path, dest: &Path) -> Result<DiskClone, VmmError> {
    let how = crate::copy::copy_file(src, dest).await?;
    let base = base_link(src);
    if disk_driver(src) == "qcow2" && base.exists() {
        let link = dest.with_file_name(base.file_name().unwrap_or(OsStr::new("disk.base")));
        let linked = match std::fs::remove_file(&link) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => std::fs::hard_link(&base, &link),
        };
        linked.map_err(|source| VmmError::CopyDisk {
            vm_id: dest.display().to_string(),
            src: base.clone(),
            dest: link.clone(),
            source: Box::new(source),
        })?;
    }
    Ok(how)
}

/// Makes `dest` a qcow2 overlay of `size` bytes over a hard link to `base` (see the module
/// docs), with `qemu_img`.
pub async fn clone_disk(
    qemu_img: &Path,
    base: &Path,
    dest: &Path,
    size: u64,
) -> Result<DiskClone, VmmError> {
    let name = dest.display().to_string();
    let fail = |source: std::io::Error| VmmError::CloneDisk {
        vm_id: name.clone(),
        base: base.to_path_buf(),
        dest: dest.to_path_buf(),
        source,
    };
    let mut link_name = dest
        .file_name()
        .unwrap_or(OsStr::new("disk"))
        .to_os_string();
    link_name.push(".base");
    let link = dest.with_file_name(&link_name);
    match std::fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    std::fs::hard_link(base, &link).map_err(fail)?;
    let out = tokio::process::Command::new(qemu_img)
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&link_name)
        .arg(dest)
        .arg(size.to_string())
        .output()
        .await
        .map_err(fail)?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(fail(std::io::Error::other(format!(
            "{} create failed ({}): {why}",
            qemu_img.display(),
            out.status
        ))));
    }
    Ok(DiskClone::Qcow2Overlay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_template_shares_its_memory_file_and_a_restore_maps_it_privately() {
        let spec = VmSpec {
            vm_id: "vm1".into(),
            vcpus: 1,
            memory_mib: 512,
            kernel: crate::KernelFiles::either("/k"),
            boot_args: String::new(),
            root_disk: "/r".into(),
            work_disk: "/w".into(),
            tap: "t".into(),
            mac: "06:00:00:00:00:01".into(),
            vsock_cid: 3,
            run_dir: "/run/x".into(),
            console_log: "/c".into(),
            vmm_log: "/v".into(),
        };
        let strings = |mode: &StartMode| -> Vec<String> {
            mode_args(&spec, mode)
                .unwrap()
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect()
        };
        assert_eq!(
            strings(&StartMode::Boot),
            [
                "-machine",
                "memory-backend=banger-mem",
                "-object",
                "memory-backend-ram,id=banger-mem,size=512M"
            ]
        );
        let template = StartMode::BootTemplate {
            memory: PathBuf::from("/t,1/memory"),
        };
        assert_eq!(
            strings(&template),
            [
                "-machine",
                "memory-backend=banger-mem",
                "-object",
                "memory-backend-file,id=banger-mem,size=512M,mem-path=/t,,1/memory,share=on"
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let memory = dir.path().join("memory");
        std::fs::write(&memory, b"").unwrap();
        let restore = |state: &str, memory: &Path| {
            StartMode::Restore(Restore {
                snapshot: SnapshotFiles {
                    state: state.into(),
                    memory: memory.to_path_buf(),
                },
                grown: vec![],
            })
        };
        let args = strings(&restore("/t/vmstate", &memory));
        let file = format!(
            "memory-backend-file,id=banger-mem,size=512M,mem-path={},share=off",
            memory.display()
        );
        assert!(args.contains(&file), "{args:?}");
        assert_eq!(&args[args.len() - 2..], ["-incoming", "defer"]);
        // A snapshot without a memory file (a fork's) carries it in its state.
        let args = strings(&restore("/t/vmstate", &dir.path().join("none")));
        assert!(args.contains(&"memory-backend-ram,id=banger-mem,size=512M".into()));
        assert_eq!(&args[args.len() - 2..], ["-incoming", "defer"]);
        let err = mode_args(&spec, &restore("/t/it's", &memory)).unwrap_err();
        assert!(err.to_string().contains("single quote"), "{err}");
    }

    #[test]
    fn the_driver_follows_the_file_s_magic() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, b"\0\0\0\0rest").unwrap();
        let qcow = dir.path().join("qcow");
        std::fs::write(&qcow, b"QFI\xfb\0\0\0\x03").unwrap();
        assert_eq!(disk_driver(&raw), "raw");
        assert_eq!(disk_driver(&qcow), "qcow2");
        assert_eq!(disk_driver(&dir.path().join("missing")), "raw");
    }
}
