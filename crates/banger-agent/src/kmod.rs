//! Loading kernel modules without `modprobe`, for the agent as init ([`crate::init`]): the
//! modules the image's `/etc/modules-load.d/banger.conf` lists (written at image build with
//! those the image's modules provide), each after its dependencies from `modules.dep`, by
//! `finit_module(2)`. Built-in modules (`modules.builtin`) and modules already loaded are
//! no error.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The image's module list (the guest contract, see `banger-image`'s `guest` module).
pub const MODULES_LOAD_PATH: &str = "/etc/modules-load.d/banger.conf";

/// A module that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("module {0} is neither in modules.dep nor built in")]
    Unknown(String),
    #[error("cannot load module {}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A module's name as the kernel knows it: the file name without `.ko[.xz|.zst|.gz]`,
/// `-` read as `_`.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// `modules.dep`, by module name: (its path, its dependencies' paths in file order).
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (path, deps) = line.split_once(':')?;
            let path = path.trim().to_string();
            let deps = deps.split_whitespace().map(str::to_string).collect();
            Some((module_name(&path), (path, deps)))
        })
        .collect()
}

/// The module files to load for `wanted`, dependencies first, each once: a module's
/// dependencies are loaded in reverse `modules.dep` order (the last listed is the deepest),
/// as `modprobe` does. Names in `builtin` need nothing.
pub fn load_order(
    deps: &BTreeMap<String, (String, Vec<String>)>,
    builtin: &BTreeSet<String>,
    wanted: &[String],
) -> Result<Vec<String>, KmodError> {
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        let name = name.replace('-', "_");
        if builtin.contains(&name) {
            continue;
        }
        let (path, dep_paths) = deps.get(&name).ok_or(KmodError::Unknown(name.clone()))?;
        for dep in dep_paths.iter().rev().chain(std::iter::once(path)) {
            if seen.insert(dep.clone()) {
                order.push(dep.clone());
            }
        }
    }
    Ok(order)
}

/// The module names listed in a `modules-load.d` file.
pub fn parse_modules_load(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .map(str::to_string)
        .collect()
}

/// Loads `wanted` from the modules directory `dir` (`/lib/modules/<release>`); returns the
/// files loaded. A module already loaded (`EEXIST`) counts as loaded.
pub fn load(dir: &Path, wanted: &[String]) -> Result<Vec<String>, KmodError> {
    let deps =
        parse_modules_dep(&std::fs::read_to_string(dir.join("modules.dep")).unwrap_or_default());
    let builtin: BTreeSet<String> = std::fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(module_name)
        .collect();
    let order = load_order(&deps, &builtin, wanted)?;
    for rel in &order {
        let path = dir.join(rel);
        insert(&path).map_err(|source| KmodError::Load { path, source })?;
    }
    Ok(order)
}

fn insert(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    let name = path.to_string_lossy();
    // MODULE_INIT_COMPRESSED_FILE: the kernel decompresses (CONFIG_MODULE_DECOMPRESS).
    let flags: libc::c_int = if name.ends_with(".ko") { 0 } else { 4 };
    // SAFETY: finit_module reads the open module file and a NUL-terminated (empty) option
    // string; neither outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            c"".as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
        kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
        kernel/net/core/failover.ko:\n\
        kernel/drivers/char/virtio_console.ko.xz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
        kernel/drivers/input/evdev.ko:\n";

    #[test]
    fn dependencies_load_first_deepest_first_and_once() {
        let deps = parse_modules_dep(DEP);
        let builtin = BTreeSet::from(["virtio".to_string(), "virtio_ring".to_string()]);
        let order = load_order(
            &deps,
            &builtin,
            &["virtio_net".into(), "virtio-console".into(), "evdev".into()],
        )
        .unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko",
                "kernel/drivers/char/virtio_console.ko.xz",
                "kernel/drivers/input/evdev.ko",
            ]
        );
    }

    #[test]
    fn a_built_in_module_needs_nothing_and_an_unknown_one_is_named() {
        let deps = parse_modules_dep(DEP);
        let builtin = BTreeSet::from(["vsock".to_string()]);
        assert!(
            load_order(&deps, &builtin, &["vsock".into()])
                .unwrap()
                .is_empty()
        );
        let e = load_order(&deps, &builtin, &["nope".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "module nope is neither in modules.dep nor built in"
        );
    }

    #[test]
    fn names_drop_the_directory_and_the_compression_suffix() {
        assert_eq!(
            module_name("kernel/a/vmw_vsock_virtio_transport.ko.zst"),
            "vmw_vsock_virtio_transport"
        );
        assert_eq!(module_name("kernel/a/snd-hda.ko"), "snd_hda");
        assert_eq!(
            parse_modules_load("# banger\nvirtio_console\n\n vsock \n"),
            ["virtio_console", "vsock"]
        );
    }
}
