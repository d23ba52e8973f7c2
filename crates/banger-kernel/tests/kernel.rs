//! Imports the host's real kernel (Debian's `linux-image-*` package) from `/` into a
//! temporary store, and checks failure cleanup on a fixture tree.

#![allow(
    clippy::print_stderr,
    reason = "a skip says why; the real import reports its timing"
)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use banger_kernel::{Choice, KernelError, find_kernel, import, kernel_dir, list, read_manifest};

fn host_kernel_installed() -> bool {
    fs::read_dir("/boot").is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
    })
}

#[test]
fn imports_the_host_kernel_from_root() {
    if !host_kernel_installed() {
        eprintln!("skipped: no kernel package installed (apt-get install linux-image-cloud-amd64)");
        return;
    }
    let found = find_kernel(Path::new("/"), None).expect("find the host kernel");
    eprintln!(
        "found {} ({:?}, candidates {:?}) vmlinuz={:?} initrd={:?} modules={:?}",
        found.version, found.choice, found.candidates, found.vmlinuz, found.initrd, found.modules
    );
    let vmlinuz = found.vmlinuz.clone().expect("a vmlinuz under /boot");
    assert!(
        vmlinuz.starts_with("/boot"),
        "{vmlinuz:?} should be the /boot file"
    );
    assert!(
        vmlinuz
            .to_string_lossy()
            .ends_with(&format!("vmlinuz-{}", found.version))
    );
    if found.candidates.len() > 1 {
        assert_eq!(found.choice, Choice::Highest);
        assert!(found.choice_note().is_some());
    }
    let initrd = found.initrd.clone().expect("an initrd for the host kernel");
    let modules = found.modules.clone().expect("modules for the host kernel");

    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("kernels");
    let started = Instant::now();
    let manifest = import(&found, "host", &store, "import from /", false).expect("import");
    let elapsed = started.elapsed();
    eprintln!("imported {} in {elapsed:.2?}", found.version);

    let dir = kernel_dir(&store, "host");
    let paths = manifest.paths(&dir);
    let vmlinux = fs::read(&paths.vmlinux).unwrap();
    assert!(vmlinux.starts_with(b"\x7fELF"), "vmlinux is an ELF");
    assert!(
        vmlinux.len() > 10 << 20,
        "vmlinux is {} bytes, implausibly small",
        vmlinux.len()
    );
    if let Ok(out) = Command::new("file").arg("-b").arg(&paths.vmlinux).output() {
        let desc = String::from_utf8_lossy(&out.stdout);
        eprintln!("file: {}", desc.trim());
        assert!(desc.starts_with("ELF 64-bit LSB executable"), "{desc}");
    }
    assert_eq!(
        fs::read(paths.vmlinuz.as_ref().unwrap()).unwrap(),
        fs::read(&vmlinuz).unwrap(),
        "vmlinuz kept as shipped"
    );
    assert_eq!(
        fs::metadata(paths.initrd.as_ref().unwrap()).unwrap().len(),
        fs::metadata(&initrd).unwrap().len()
    );
    let stored_modules = paths.modules.as_ref().unwrap();
    assert!(stored_modules.join("modules.dep").is_file());
    assert_eq!(
        fs::read(stored_modules.join("modules.dep")).unwrap(),
        fs::read(modules.join("modules.dep")).unwrap()
    );
    assert!(stored_modules.join("kernel").is_dir());
    assert_eq!(
        stored_modules.file_name().unwrap().to_string_lossy(),
        found.version
    );

    assert_eq!(manifest.name, "host");
    assert_eq!(manifest.version, found.version);
    assert_eq!(manifest.source, "import from /");
    assert_eq!(manifest.sha256.len(), 64);
    if let Ok(out) = Command::new("sha256sum").arg(&paths.vmlinux).output() {
        let line = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            line.split_whitespace().next(),
            Some(manifest.sha256.as_str())
        );
    }
    assert_eq!(read_manifest(&store, "host").unwrap(), manifest);
    let on_disk: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(on_disk["files"]["vmlinux"], "vmlinux");
    assert_eq!(on_disk["version"], found.version.as_str());

    // Re-import: refused without force, accepted with it.
    let err = import(&found, "host", &store, "again", false).unwrap_err();
    assert!(matches!(err, KernelError::AlreadyExists { .. }), "{err:?}");
    assert!(err.to_string().contains("force"), "{err}");
    let again = import(&found, "host", &store, "again", true).expect("forced re-import");
    assert_eq!(again.sha256, manifest.sha256);
    assert_eq!(again.source, "again");
    let names: Vec<String> = fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["host"]);
    assert_eq!(list(&store).unwrap().len(), 1);
}

#[test]
fn a_failed_import_leaves_no_staging_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir_all(root.join("boot")).unwrap();
    fs::create_dir_all(root.join("lib/modules/6.1.0-1/kernel")).unwrap();
    fs::write(root.join("boot/vmlinux-6.1.0-1"), b"\x7fELF fake").unwrap();
    fs::write(root.join("boot/initrd.img-6.1.0-1"), b"initrd").unwrap();
    fs::write(root.join("lib/modules/6.1.0-1/modules.dep"), b"").unwrap();
    let found = find_kernel(&root, None).unwrap();
    assert!(found.initrd.is_some());

    // The initrd becomes a dangling link between find and import: the kernel is staged, the
    // copy of the initrd fails.
    fs::remove_file(root.join("boot/initrd.img-6.1.0-1")).unwrap();
    std::os::unix::fs::symlink("gone", root.join("boot/initrd.img-6.1.0-1")).unwrap();
    let store = tmp.path().join("kernels");
    let err = import(&found, "k", &store, "fixture", false).unwrap_err();
    assert!(matches!(err, KernelError::Copy { .. }), "{err:?}");
    assert!(err.to_string().contains("initrd.img-6.1.0-1"), "{err}");
    let left: Vec<String> = fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "store should be empty, has {left:?}");
}
