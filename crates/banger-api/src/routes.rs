//! The API's routes, defined once: the path templates the daemon's router mounts (axum's
//! `{param}` syntax) and the [`Route`]s the client asks, built from the same templates with
//! their parameters percent-encoded. Every path is relative to [`API_PREFIX`](crate::API_PREFIX).

/// The path templates, as the daemon's router mounts them.
pub mod templates {
    pub const STATUS: &str = "/status";
    pub const SHUTDOWN: &str = "/shutdown";
    pub const SSH: &str = "/ssh";
    /// `GET` the managed ssh config block, `POST` writes it, `DELETE` removes it.
    pub const SSH_CONFIG: &str = "/ssh/config";
    /// `GET` lists VMs (`?all=true` for stopped ones too), `POST` creates one (streamed).
    pub const VMS: &str = "/vms";
    pub const VM_ACTIONS: &str = "/vms/actions";
    pub const VM: &str = "/vms/{reference}";
    pub const VM_HEALTH: &str = "/vms/{reference}/health";
    pub const VM_PING: &str = "/vms/{reference}/ping";
    pub const VM_PORTS: &str = "/vms/{reference}/ports";
    pub const VM_STATS: &str = "/vms/{reference}/stats";
    /// `POST` with `Upgrade: banger-exec/1`: an exec session relayed to the VM's agent.
    pub const VM_EXEC: &str = "/vms/{reference}/exec";
    /// `POST` prepares the VM's workspace (streamed stages, then the result).
    pub const VM_WORKSPACE: &str = "/vms/{reference}/workspace";
    /// `POST`: the workspace's work since its base, as a patch.
    pub const VM_WORKSPACE_EXPORT: &str = "/vms/{reference}/workspace/export";
    pub const KERNELS: &str = "/kernels";
    pub const KERNEL: &str = "/kernels/{name}";
    pub const IMAGES: &str = "/images";
    pub const IMAGES_BOOTSTRAP: &str = "/images/bootstrap";
    pub const IMAGES_IMPORT: &str = "/images/import";
    /// `POST`: pull an image from an OCI registry (streamed stages, then the image).
    pub const IMAGES_PULL: &str = "/images/pull";
    /// `POST`: remove the cached layers no image needs.
    pub const IMAGES_CACHE_PRUNE: &str = "/images/cache/prune";
    pub const IMAGE: &str = "/images/{reference}";
    /// `POST`: write the image's bundle and its one-entry catalog into a directory (streamed).
    pub const IMAGE_EXPORT: &str = "/images/{reference}/export";
    pub const IMAGE_PUSH: &str = "/images/{reference}/push";
    /// `GET`: what the catalogs list, and whether each is pulled.
    pub const CATALOG: &str = "/catalog";
    /// `POST`: pull a kernel from the kernel catalogs (streamed).
    pub const KERNELS_PULL: &str = "/kernels/pull";
    /// `POST`: make (or remake) a warm-start template of the image (streamed).
    pub const IMAGE_WARM: &str = "/images/{reference}/warm";
    /// `POST`: fork the running VM into a new one (streamed stages, then the new VM).
    pub const VM_FORK: &str = "/vms/{reference}/fork";
    /// `GET`: the API's OpenAPI 3.1 document.
    pub const OPENAPI: &str = "/openapi.json";
    /// `POST`: read a guest file through the VM's agent.
    pub const VM_FILES_READ: &str = "/vms/{reference}/files/read";
    /// `POST`: write a guest file through the VM's agent.
    pub const VM_FILES_WRITE: &str = "/vms/{reference}/files/write";
    /// `POST`: list a guest directory through the VM's agent.
    pub const VM_FILES_LIST: &str = "/vms/{reference}/files/list";
}

/// One route with its parameters, as the client asks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Status,
    Shutdown,
    Ssh,
    SshConfig,
    /// `GET /vms?all=...`.
    VmList {
        all: bool,
    },
    /// `POST /vms`.
    VmCreate,
    VmActions,
    Vm(&'a str),
    VmHealth(&'a str),
    VmPing(&'a str),
    VmPorts(&'a str),
    VmStats(&'a str),
    VmExec(&'a str),
    VmWorkspace(&'a str),
    VmWorkspaceExport(&'a str),
    Kernels,
    Kernel(&'a str),
    Images,
    ImagesBootstrap,
    ImagesImport,
    ImagesPull,
    ImagesCachePrune,
    Image(&'a str),
    ImageExport(&'a str),
    ImagePush(&'a str),
    Catalog,
    KernelsPull,
    /// `POST /images/{reference}/warm`.
    ImageWarm(&'a str),
    /// `POST /vms/{reference}/fork`.
    VmFork(&'a str),
    VmFilesRead(&'a str),
    VmFilesWrite(&'a str),
    VmFilesList(&'a str),
}

impl Route<'_> {
    /// The template this route is mounted at.
    pub fn template(&self) -> &'static str {
        use templates as t;
        match self {
            Self::Status => t::STATUS,
            Self::Shutdown => t::SHUTDOWN,
            Self::Ssh => t::SSH,
            Self::SshConfig => t::SSH_CONFIG,
            Self::VmList { .. } | Self::VmCreate => t::VMS,
            Self::VmActions => t::VM_ACTIONS,
            Self::Vm(_) => t::VM,
            Self::VmHealth(_) => t::VM_HEALTH,
            Self::VmPing(_) => t::VM_PING,
            Self::VmPorts(_) => t::VM_PORTS,
            Self::VmStats(_) => t::VM_STATS,
            Self::VmExec(_) => t::VM_EXEC,
            Self::VmWorkspace(_) => t::VM_WORKSPACE,
            Self::VmWorkspaceExport(_) => t::VM_WORKSPACE_EXPORT,
            Self::Kernels => t::KERNELS,
            Self::Kernel(_) => t::KERNEL,
            Self::Images => t::IMAGES,
            Self::ImagesBootstrap => t::IMAGES_BOOTSTRAP,
            Self::ImagesImport => t::IMAGES_IMPORT,
            Self::ImagesPull => t::IMAGES_PULL,
            Self::ImagesCachePrune => t::IMAGES_CACHE_PRUNE,
            Self::Image(_) => t::IMAGE,
            Self::ImageExport(_) => t::IMAGE_EXPORT,
            Self::ImagePush(_) => t::IMAGE_PUSH,
            Self::Catalog => t::CATALOG,
            Self::KernelsPull => t::KERNELS_PULL,
            Self::ImageWarm(_) => t::IMAGE_WARM,
            Self::VmFork(_) => t::VM_FORK,
            Self::VmFilesRead(_) => t::VM_FILES_READ,
            Self::VmFilesWrite(_) => t::VM_FILES_WRITE,
            Self::VmFilesList(_) => t::VM_FILES_LIST,
        }
    }

    /// The path to ask: the template with its parameter percent-encoded, and the query.
    pub fn path(&self) -> String {
        let template = self.template();
        match *self {
            Self::Vm(r)
            | Self::VmHealth(r)
            | Self::VmPing(r)
            | Self::VmPorts(r)
            | Self::VmStats(r)
            | Self::VmExec(r)
            | Self::VmWorkspace(r)
            | Self::VmWorkspaceExport(r)
            | Self::Image(r)
            | Self::ImageExport(r)
            | Self::ImagePush(r)
            | Self::ImageWarm(r)
            | Self::VmFork(r)
            | Self::VmFilesRead(r)
            | Self::VmFilesWrite(r)
            | Self::VmFilesList(r) => template.replace("{reference}", &encode(r)),
            Self::Kernel(name) => template.replace("{name}", &encode(name)),
            Self::VmList { all } => format!("{template}?all={all}"),
            Self::Status
            | Self::Shutdown
            | Self::Ssh
            | Self::SshConfig
            | Self::VmCreate
            | Self::VmActions
            | Self::Kernels
            | Self::Images
            | Self::ImagesBootstrap
            | Self::ImagesImport
            | Self::Catalog
            | Self::KernelsPull
            | Self::ImagesPull
            | Self::ImagesCachePrune => template.to_string(),
        }
    }
}

/// `s` with every byte outside `A-Z a-z 0-9 - _ .` percent-encoded, so a reference cannot
/// add path segments (`/`), a query (`?`) or a fragment (`#`).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fill_their_templates_percent_encoded() {
        assert_eq!(Route::Status.path(), "/status");
        assert_eq!(Route::VmList { all: true }.path(), "/vms?all=true");
        assert_eq!(Route::VmCreate.path(), "/vms");
        assert_eq!(Route::VmHealth("web").path(), "/vms/web/health");
        assert_eq!(Route::Vm("a/b?c#d").path(), "/vms/a%2Fb%3Fc%23d");
        assert_eq!(Route::Kernel("6.1 x").path(), "/kernels/6.1%20x");
        assert_eq!(encode("ä"), "%C3%A4");
    }

    #[test]
    fn every_parameter_of_a_template_is_filled() {
        for r in [
            Route::Vm("x"),
            Route::VmHealth("x"),
            Route::VmPing("x"),
            Route::VmPorts("x"),
            Route::VmStats("x"),
            Route::VmExec("x"),
            Route::VmWorkspace("x"),
            Route::VmWorkspaceExport("x"),
            Route::Kernel("x"),
            Route::Image("x"),
            Route::VmFilesRead("x"),
            Route::VmFilesWrite("x"),
            Route::VmFilesList("x"),
            Route::VmFork("x"),
        ] {
            let p = r.path();
            assert!(
                !p.contains('{') && p.ends_with("/x") || p.contains("/x/"),
                "{p}"
            );
            assert_ne!(p, r.template());
        }
    }
}
