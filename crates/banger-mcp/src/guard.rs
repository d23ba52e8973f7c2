//! The guard rails between a coding agent and the owner's machine (config `[mcp]`): host paths
//! only inside the owner's home, VMs only from allowed images and only up to `max_vms` at once,
//! and deletes only of the VMs made through MCP unless `delete_any` says otherwise. Each
//! refusal is a [`Refusal`] whose message tells the agent what to do instead.

use std::path::{Path, PathBuf};

use banger_api::types::{Vm, VmOrigin};
use banger_core::config::McpConfig;

/// Why a guard rail refused a request.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{} does not exist on the host", path.display())]
    PathMissing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot resolve the owner's home {}", home.display())]
    Home {
        home: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} resolves to {}, outside the owner's home {}: banger mcp only ships repositories from inside the home",
        given.display(), real.display(), home.display()
    )]
    OutsideHome {
        given: PathBuf,
        real: PathBuf,
        home: PathBuf,
    },
    #[error(
        "image {image:?} is not allowed through MCP (config mcp.allowed_images lists: {allowed})"
    )]
    ImageNotAllowed { image: String, allowed: String },
    #[error(
        "{count} VMs made through MCP exist, the most config mcp.max_vms allows is {max}: delete one first (vm_delete)"
    )]
    TooManyVms { count: usize, max: u32 },
    #[error(
        "VM {vm:?} was not made through MCP (its origin is {origin}): banger mcp deletes only its own VMs (config mcp.delete_any = true allows any)"
    )]
    NotOurs { vm: String, origin: VmOrigin },
}

/// `path` (relative ones against `cwd`) with `..` and symlinks resolved, when that is inside
/// the (resolved) `home` or is the home itself.
pub fn inside_home(path: &Path, cwd: &Path, home: &Path) -> Result<PathBuf, Refusal> {
    let given = cwd.join(path);
    let real = std::fs::canonicalize(&given).map_err(|source| Refusal::PathMissing {
        path: given.clone(),
        source,
    })?;
    let real_home = std::fs::canonicalize(home).map_err(|source| Refusal::Home {
        home: home.to_path_buf(),
        source,
    })?;
    if real.starts_with(&real_home) {
        Ok(real)
    } else {
        Err(Refusal::OutsideHome {
            given,
            real,
            home: real_home,
        })
    }
}

/// Whether VMs may be made from the image named `name` (its name, not a reference).
pub fn image_allowed(config: &McpConfig, name: &str) -> Result<(), Refusal> {
    if config.allowed_images.is_empty() || config.allowed_images.iter().any(|i| i == name) {
        Ok(())
    } else {
        Err(Refusal::ImageNotAllowed {
            image: name.to_string(),
            allowed: config.allowed_images.join(", "),
        })
    }
}

/// Whether one more VM may be made through MCP, given every VM there is.
pub fn room_for_one(config: &McpConfig, vms: &[Vm]) -> Result<(), Refusal> {
    let count = vms.iter().filter(|v| v.origin == VmOrigin::Mcp).count();
    if count < config.max_vms as usize {
        Ok(())
    } else {
        Err(Refusal::TooManyVms {
            count,
            max: config.max_vms,
        })
    }
}

/// Whether `vm` may be deleted through MCP.
pub fn may_delete(config: &McpConfig, vm: &Vm) -> Result<(), Refusal> {
    if config.delete_any || vm.origin == VmOrigin::Mcp {
        Ok(())
    } else {
        Err(Refusal::NotOurs {
            vm: vm.name.clone(),
            origin: vm.origin,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn vm(name: &str, origin: VmOrigin) -> Vm {
        serde_json::from_value(serde_json::json!({
            "id": format!("{name:0>32}"), "name": name, "state": "running", "image": "img",
            "image_id": "i1", "vmm": "firecracker", "cpus": 1, "memory_mib": 256,
            "disk_bytes": 1, "work_disk_bytes": 1, "nat": false, "ip": null, "mac": null,
            "tap": null, "vsock_cid": null, "pid": null, "created_at": "t", "started_at": null,
            "dir": "/d", "console_log": "/d/c", "vmm_log": "/d/v", "error": null,
            "workspace": null, "origin": origin,
        }))
        .unwrap()
    }

    #[test]
    fn paths_must_resolve_inside_the_home() {
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("home");
        let repo = home.join("src/repo");
        std::fs::create_dir_all(&repo).unwrap();
        let outside = root.path().join("elsewhere");
        std::fs::create_dir_all(&outside).unwrap();
        let real = |p: &Path| std::fs::canonicalize(p).unwrap();

        assert_eq!(
            inside_home(&repo, Path::new("/"), &home).unwrap(),
            real(&repo)
        );
        // Relative to the cwd, and the home itself.
        assert_eq!(
            inside_home(Path::new("repo"), &home.join("src"), &home).unwrap(),
            real(&repo)
        );
        assert_eq!(
            inside_home(&home, Path::new("/"), &home).unwrap(),
            real(&home)
        );
        // `..` out of the home.
        let err = inside_home(Path::new("../../../elsewhere"), &repo, &home).unwrap_err();
        assert!(matches!(err, Refusal::OutsideHome { .. }), "{err}");
        assert!(
            err.to_string().contains("outside the owner's home"),
            "{err}"
        );
        // A symlink inside the home that leads out of it.
        std::os::unix::fs::symlink(&outside, home.join("link")).unwrap();
        let err = inside_home(&home.join("link"), Path::new("/"), &home).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("resolves to {}", real(&outside).display())),
            "{err}"
        );
        // A path that does not exist.
        let err = inside_home(&home.join("nope"), Path::new("/"), &home).unwrap_err();
        assert!(matches!(err, Refusal::PathMissing { .. }), "{err}");
        // A home reached through a symlink still contains its own paths.
        std::os::unix::fs::symlink(&home, root.path().join("home-link")).unwrap();
        assert_eq!(
            inside_home(&repo, Path::new("/"), &root.path().join("home-link")).unwrap(),
            real(&repo)
        );
    }

    #[test]
    fn images_are_checked_against_the_list_when_there_is_one() {
        let mut c = McpConfig::default();
        assert!(image_allowed(&c, "anything").is_ok());
        c.allowed_images = vec!["debian-bookworm".into(), "alpine".into()];
        assert!(image_allowed(&c, "alpine").is_ok());
        let err = image_allowed(&c, "big").unwrap_err().to_string();
        assert_eq!(
            err,
            "image \"big\" is not allowed through MCP (config mcp.allowed_images lists: debian-bookworm, alpine)"
        );
    }

    #[test]
    fn only_mcp_vms_count_against_max_vms() {
        let c = McpConfig {
            max_vms: 2,
            ..McpConfig::default()
        };
        let mut vms = vec![
            vm("a", VmOrigin::Api),
            vm("b", VmOrigin::Api),
            vm("m1", VmOrigin::Mcp),
        ];
        assert!(room_for_one(&c, &vms).is_ok());
        vms.push(vm("m2", VmOrigin::Mcp));
        let err = room_for_one(&c, &vms).unwrap_err().to_string();
        assert!(err.starts_with("2 VMs made through MCP exist"), "{err}");
        let none = McpConfig {
            max_vms: 0,
            ..McpConfig::default()
        };
        assert!(room_for_one(&none, &[]).is_err());
    }

    #[test]
    fn only_mcp_vms_may_be_deleted_unless_config_allows_any() {
        let mut c = McpConfig::default();
        assert!(may_delete(&c, &vm("m", VmOrigin::Mcp)).is_ok());
        let err = may_delete(&c, &vm("web", VmOrigin::Api))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("VM \"web\" was not made through MCP (its origin is api)"),
            "{err}"
        );
        c.delete_any = true;
        assert!(may_delete(&c, &vm("web", VmOrigin::Api)).is_ok());
    }
}
