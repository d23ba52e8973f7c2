//! The config file: `config.toml` in the config dir. Every key is optional; see
//! `docs/config.md` for each key and its default.
//!
//! Unknown keys are reported back as warnings (a typo must not silently do nothing); a value
//! of the wrong type or out of range is an error that names the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::size::{ByteSize, parse_size};
use crate::vmm_kind::VmmChoice;

/// Log levels the daemon accepts.
pub const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// banger's configuration, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Daemon log level: trace, debug, info, warn or error. `BANGER_LOG` overrides it.
    pub log_level: String,
    /// VMM backend for new VMs: `auto` (Firecracker when its binary is found, else QEMU),
    /// `firecracker` or `qemu`. `BANGER_VMM` overrides it.
    pub vmm: VmmChoice,
    /// The Firecracker binary; else `BANGER_FIRECRACKER_BIN`, else `firecracker` on PATH.
    pub firecracker_bin: Option<PathBuf>,
    /// The QEMU binary; else `BANGER_QEMU_BIN`, else `qemu-system-x86_64` on PATH.
    pub qemu_bin: Option<PathBuf>,
    /// The host bridge VMs attach to.
    pub bridge_name: String,
    /// The bridge's IPv4 subnet; the host takes the first address, VMs the others.
    pub bridge_subnet: String,
    /// Image used when `vm create`/`vm run` get no `--image`.
    pub default_image: String,
    /// Seconds `vm stop` waits for the guest to shut down before forcing it off.
    pub stop_grace_secs: u64,
    /// Seconds `vm create`/`vm start` wait for the guest agent to answer.
    pub agent_wait_secs: u64,
    /// Seconds `vm run`/`vm ssh` wait for the guest's sshd.
    pub ssh_wait_secs: u64,
    /// Nameservers written into guests; empty means the host's non-loopback nameservers.
    pub guest_dns: Vec<std::net::Ipv4Addr>,
    /// Most disk one VM log (console or VMM) takes with its rotated `.1` part. A size as the
    /// size rules read it (`64M`, `1G`, a bare number is MiB), at least [`MIN_LOG_SIZE`].
    #[serde(deserialize_with = "size_value")]
    pub max_log_size: ByteSize,
    /// More host files copied into every VM's work disk on each start (see [`FileSync`]).
    pub file_sync: Vec<FileSync>,
    /// Whether the daemon serves DNS for the `.vm` zone.
    pub dns: bool,
    /// Where the `.vm` DNS server listens, UDP and TCP (port 0: any free port).
    pub dns_listen: std::net::SocketAddr,
    /// The npm registry `image bootstrap` fetches the prebuilt `mise` from (an `http://` or
    /// `https://` base URL).
    pub npm_registry: String,
    /// Whether the daemon writes the managed `Host *.vm` block into the owner's
    /// `~/.ssh/config` when it starts.
    pub ssh_config: bool,
    /// The root helper's socket, asked for host network operations when the daemon is not
    /// root. `BANGER_HELPER_SOCKET` overrides it.
    pub helper_socket: PathBuf,
    /// Idle TAP devices the daemon keeps ready on the bridge for the next boots (0 to
    /// [`MAX_TAP_POOL`]).
    pub tap_pool_size: u32,
    /// Whether a `vm create` for an image and shape without a warm-start template makes one
    /// in the background (the next creates restore from it instead of booting).
    pub warm_start: bool,
    /// Whether the daemon serves the local web UI.
    pub web: bool,
    /// Where the web UI listens (TCP; port 0: any free port). A non-loopback address is
    /// refused unless [`Config::web_allow_remote`].
    pub web_listen: std::net::SocketAddr,
    /// Whether `web_listen` may be an address other hosts reach (the UI stays token-gated).
    pub web_allow_remote: bool,
    /// More names the web UI answers to in the `Host` header, besides `127.0.0.1`,
    /// `localhost`, `[::1]` and the listen address (DNS names).
    pub web_hostnames: Vec<String>,
    /// `[mcp]`: the guard rails of `banger mcp` (see [`McpConfig`]).
    pub mcp: McpConfig,
    /// More image and kernel catalogs (JSON documents), searched in this order before the
    /// one embedded in banger: absolute paths or `http://`/`https://` URLs.
    pub catalogs: Vec<String>,
    /// Registries (`host[:port]`) `image pull` reaches over plain HTTP; loopback ones always
    /// are, every other one is HTTPS.
    pub insecure_registries: Vec<String>,
    /// The largest image accepted from outside: a download, an unpacked rootfs, the layers
    /// of an OCI pull and its `--size` (a decompression bomb's guard). A size as the size
    /// rules read it.
    #[serde(deserialize_with = "size_value")]
    pub max_image_size: ByteSize,
}

/// `[mcp]`: what `banger mcp` lets a coding agent do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct McpConfig {
    /// Most VMs made through MCP that may exist at once (0 to [`MAX_MCP_VMS`]).
    pub max_vms: u32,
    /// Images an agent may create VMs from, by name; empty means any image.
    pub allowed_images: Vec<String>,
    /// Whether `vm_delete` may delete VMs not made through MCP.
    pub delete_any: bool,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            max_vms: 8,
            allowed_images: Vec::new(),
            delete_any: false,
        }
    }
}

/// The largest `mcp.max_vms`.
pub const MAX_MCP_VMS: u32 = 1024;

/// Where the web UI listens by default.
pub const DEFAULT_WEB_LISTEN: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 7777),
);

/// The largest `tap_pool_size`.
pub const MAX_TAP_POOL: u32 = 64;

/// Where the `.vm` DNS server listens unless config says otherwise.
pub const DEFAULT_DNS_LISTEN: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 42069),
);

/// One `[[file_sync]]` entry: a file of the owner's home copied into the guest on every VM
/// start.
///
/// `host` is `~/REL`, a path relative to the home, or an absolute path inside the home;
/// once resolved (`..` taken lexically, then symlinks) it must stay inside the home.
/// `guest` is an absolute path under `/root` (the VM's work disk), without `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSync {
    pub host: String,
    pub guest: String,
}

/// A `file_sync` entry that cannot be used; the entry is always named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("file_sync entry {host:?} -> {guest:?}: {why}")]
pub struct FileSyncError {
    pub host: String,
    pub guest: String,
    pub why: String,
}

/// The guest directory the work disk is mounted at.
pub const GUEST_WORK_ROOT: &str = "/root";

/// Work-disk files banger writes itself, which a `file_sync` entry may not replace: the
/// managed SSH key's `authorized_keys` and the git identity's `.gitconfig`.
pub const MANAGED_GUEST_FILES: &[&str] = &["/.ssh/authorized_keys", "/.gitconfig"];

impl FileSync {
    fn error(&self, why: impl Into<String>) -> FileSyncError {
        FileSyncError {
            host: self.host.clone(),
            guest: self.guest.clone(),
            why: why.into(),
        }
    }

    /// The checks that need no home: a non-empty host path, and a guest path under `/root`.
    pub fn check(&self) -> Result<(), FileSyncError> {
        if self.host.trim().is_empty() {
            return Err(self.error("the host path is empty"));
        }
        if self.host.contains('\0') {
            return Err(self.error("the host path contains a NUL byte"));
        }
        self.work_disk_path().map(|_| ())
    }

    /// The guest path as a path inside the work disk (`/root/.npmrc` is `/.npmrc`).
    pub fn work_disk_path(&self) -> Result<String, FileSyncError> {
        let g = &self.guest;
        if g.contains(['\n', '\r', '\0']) {
            return Err(self.error("the guest path contains a newline or NUL byte"));
        }
        let rest = g
            .strip_prefix(GUEST_WORK_ROOT)
            .filter(|r| r.starts_with('/'))
            .ok_or_else(|| {
                self.error(format!(
                    "the guest path must be under {GUEST_WORK_ROOT}/ (the VM's work disk)"
                ))
            })?;
        let mut out = String::new();
        for part in rest.split('/').filter(|p| !p.is_empty()) {
            if part == "." || part == ".." {
                return Err(self.error("the guest path must not contain . or .. components"));
            }
            out.push('/');
            out.push_str(part);
        }
        if out.is_empty() {
            return Err(self.error(format!(
                "the guest path must name a file under {GUEST_WORK_ROOT}/, not {GUEST_WORK_ROOT} itself"
            )));
        }
        Ok(out)
    }

    /// The host path resolved against `home` without touching the disk: `~/x` and `x` are
    /// `home/x`, `..` components are taken lexically; the result must be inside `home` (and
    /// not `home` itself). Symlinks are the caller's to resolve ([`FileSync::resolve`]).
    pub fn host_in(&self, home: &Path) -> Result<PathBuf, FileSyncError> {
        self.check()?;
        let raw = self.host.as_str();
        let joined = if raw == "~" {
            home.to_path_buf()
        } else if let Some(rest) = raw.strip_prefix("~/") {
            home.join(rest)
        } else if raw.starts_with('~') {
            return Err(self.error("only ~/ (the owner's home) is understood, not ~user"));
        } else {
            home.join(raw)
        };
        let lexical = normalize(&joined);
        let home = normalize(home);
        if lexical == home || !lexical.starts_with(&home) {
            return Err(self.error(format!(
                "{} is outside the owner's home {}",
                lexical.display(),
                home.display()
            )));
        }
        Ok(lexical)
    }

    /// [`FileSync::host_in`], then symlinks resolved: `Ok(None)` when the file does not
    /// exist, else its real path, which must still be inside the (real) home.
    pub fn resolve(&self, home: &Path) -> Result<Option<PathBuf>, FileSyncError> {
        let lexical = self.host_in(home)?;
        let real = match std::fs::canonicalize(&lexical) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error(format!("cannot resolve {}: {e}", lexical.display()))),
        };
        let real_home = std::fs::canonicalize(home)
            .map_err(|e| self.error(format!("cannot resolve the home {}: {e}", home.display())))?;
        if !real.starts_with(&real_home) || real == real_home {
            return Err(self.error(format!(
                "{} resolves to {}, outside the owner's home {}",
                lexical.display(),
                real.display(),
                real_home.display()
            )));
        }
        Ok(Some(real))
    }
}

/// `path` with `.` dropped and `..` taken lexically (never above `/`).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The smallest `max_log_size`: below it rotation would churn on a normal boot's output.
pub const MIN_LOG_SIZE: ByteSize = ByteSize::mib(1);

/// A size written as a string (`"64MiB"`) or a bare number (MiB), read by [`parse_size`].
fn size_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(u64),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Text(t) => t,
        Raw::Number(n) => n.to_string(),
    };
    parse_size(&text).map_err(serde::de::Error::custom)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log_level: "info".to_string(),
            vmm: VmmChoice::Auto,
            firecracker_bin: None,
            qemu_bin: None,
            bridge_name: "banger0".to_string(),
            bridge_subnet: "172.30.0.0/24".to_string(),
            default_image: "debian-bookworm".to_string(),
            stop_grace_secs: 15,
            agent_wait_secs: 60,
            ssh_wait_secs: 90,
            guest_dns: Vec::new(),
            max_log_size: ByteSize::mib(64),
            file_sync: Vec::new(),
            dns: true,
            dns_listen: DEFAULT_DNS_LISTEN,
            npm_registry: DEFAULT_NPM_REGISTRY.to_string(),
            ssh_config: true,
            helper_socket: PathBuf::from(crate::layout::SYSTEM_HELPER_SOCKET),
            tap_pool_size: 4,
            warm_start: true,
            web: true,
            web_listen: DEFAULT_WEB_LISTEN,
            web_allow_remote: false,
            web_hostnames: Vec::new(),
            mcp: McpConfig::default(),
            catalogs: Vec::new(),
            insecure_registries: Vec::new(),
            max_image_size: DEFAULT_MAX_IMAGE_SIZE,
        }
    }
}

/// The default `max_image_size`: 64 GiB.
pub const DEFAULT_MAX_IMAGE_SIZE: ByteSize = ByteSize::gib(64);

/// The public npm registry.
pub const DEFAULT_NPM_REGISTRY: &str = "https://registry.npmjs.org";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}")]
    FileSync {
        path: PathBuf,
        #[source]
        source: FileSyncError,
    },
    #[error("config file {path}: {key} = {value:?} is invalid: {why}")]
    Value {
        path: PathBuf,
        key: &'static str,
        value: String,
        why: String,
    },
}

/// A loaded config and the warnings found while reading it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads `path`; a missing file means all defaults.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Loaded::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses config text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Loaded, ConfigError> {
        let mut warnings = Vec::new();
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let config: Config = serde_ignored::deserialize(de, |ignored| {
            warnings.push(format!(
                "config file {}: unknown key '{ignored}' ignored",
                path.display()
            ));
        })
        .map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(path)?;
        Ok(Loaded { config, warnings })
    }

    /// The `file_sync` checks that need the owner's home (each host path inside it,
    /// lexically); `path` is the config file, for messages. The daemon runs them at start.
    pub fn check_home(&self, path: &Path, home: &Path) -> Result<(), ConfigError> {
        for entry in &self.file_sync {
            entry
                .host_in(home)
                .map_err(|source| ConfigError::FileSync {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        Ok(())
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &'static str, value: String, why: String| ConfigError::Value {
            path: path.to_path_buf(),
            key,
            value,
            why,
        };
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            return Err(bad(
                "log_level",
                self.log_level.clone(),
                format!("expected one of {}", LOG_LEVELS.join(", ")),
            ));
        }
        let name = &self.bridge_name;
        if name.is_empty()
            || name.len() > 15
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(bad(
                "bridge_name",
                name.clone(),
                "an interface name: 1-15 of letters, digits, '-', '_', '.'".into(),
            ));
        }
        if crate::names::validate_image_name(&self.default_image).is_err() {
            return Err(bad(
                "default_image",
                self.default_image.clone(),
                "not a valid image name".into(),
            ));
        }
        for (key, v) in [
            ("stop_grace_secs", self.stop_grace_secs),
            ("agent_wait_secs", self.agent_wait_secs),
            ("ssh_wait_secs", self.ssh_wait_secs),
        ] {
            if v == 0 || v > 3600 {
                return Err(bad(key, v.to_string(), "must be 1 to 3600 seconds".into()));
            }
        }
        let registry = &self.npm_registry;
        let host = registry
            .strip_prefix("https://")
            .or_else(|| registry.strip_prefix("http://"))
            .unwrap_or("");
        if host.trim_end_matches('/').is_empty()
            || registry
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad(
                "npm_registry",
                registry.clone(),
                "an http:// or https:// URL".into(),
            ));
        }
        if let Some(c) = self.catalogs.iter().find(|c| {
            let web = ["http://", "https://"]
                .iter()
                .any(|p| c.strip_prefix(p).is_some_and(|rest| !rest.is_empty()));
            !(web || Path::new(c).is_absolute()) || c.chars().any(|ch| ch.is_control())
        }) {
            return Err(bad(
                "catalogs",
                c.clone(),
                "each entry must be an absolute path or an http:// or https:// URL".into(),
            ));
        }
        if self.tap_pool_size > MAX_TAP_POOL {
            return Err(bad(
                "tap_pool_size",
                self.tap_pool_size.to_string(),
                format!("must be 0 to {MAX_TAP_POOL}"),
            ));
        }
        if let Some(name) = self
            .web_hostnames
            .iter()
            .find(|n| !crate::names::is_dns_name(n))
        {
            return Err(bad(
                "web_hostnames",
                name.clone(),
                "each entry must be a DNS name (letters, digits, '-' and '.')".into(),
            ));
        }
        for r in &self.insecure_registries {
            if r.is_empty()
                || r.contains("://")
                || r.contains('/')
                || r.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(bad(
                    "insecure_registries",
                    r.clone(),
                    "a registry as host[:port], without a scheme or path".into(),
                ));
            }
        }
        if self.max_image_size < ByteSize::mib(1) {
            return Err(bad(
                "max_image_size",
                self.max_image_size.to_string(),
                "at least 1 MiB".into(),
            ));
        }
        if self.max_log_size < MIN_LOG_SIZE {
            return Err(bad(
                "max_log_size",
                self.max_log_size.to_string(),
                format!("must be at least {MIN_LOG_SIZE}"),
            ));
        }
        let helper = &self.helper_socket;
        if !helper.is_absolute() || helper.as_os_str().len() > crate::layout::MAX_SOCKET_PATH {
            return Err(bad(
                "helper_socket",
                helper.display().to_string(),
                format!(
                    "an absolute socket path of at most {} bytes",
                    crate::layout::MAX_SOCKET_PATH
                ),
            ));
        }
        if self.mcp.max_vms > MAX_MCP_VMS {
            return Err(bad(
                "mcp.max_vms",
                self.mcp.max_vms.to_string(),
                format!("must be 0 to {MAX_MCP_VMS}"),
            ));
        }
        for image in &self.mcp.allowed_images {
            if crate::names::validate_image_name(image).is_err() {
                return Err(bad(
                    "mcp.allowed_images",
                    image.clone(),
                    "not a valid image name".into(),
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for entry in &self.file_sync {
            let fail = |source| ConfigError::FileSync {
                path: path.to_path_buf(),
                source,
            };
            entry.check().map_err(fail)?;
            let guest = entry.work_disk_path().map_err(fail)?;
            if MANAGED_GUEST_FILES.contains(&guest.as_str()) {
                return Err(fail(entry.error(format!(
                    "{GUEST_WORK_ROOT}{guest} is written by banger itself"
                ))));
            }
            if !seen.insert(guest.clone()) {
                return Err(fail(entry.error(format!(
                    "another file_sync entry already writes {GUEST_WORK_ROOT}{guest}"
                ))));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Loaded, ConfigError> {
        Config::parse(Path::new("/c/config.toml"), text)
    }

    #[test]
    fn the_mcp_table_has_defaults_and_checked_values() {
        let d = parse("").unwrap().config.mcp;
        assert_eq!(
            (d.max_vms, d.allowed_images.len(), d.delete_any),
            (8, 0, false)
        );
        let l = parse(
            "[mcp]\nmax_vms = 2\nallowed_images = [\"debian-bookworm\"]\ndelete_any = true\n",
        )
        .unwrap();
        assert_eq!(
            l.config.mcp,
            McpConfig {
                max_vms: 2,
                allowed_images: vec!["debian-bookworm".into()],
                delete_any: true
            }
        );
        assert!(l.warnings.is_empty());
        let err = parse("[mcp]\nmax_vms = 5000\n").unwrap_err().to_string();
        assert!(err.contains("mcp.max_vms = \"5000\" is invalid"), "{err}");
        let err = parse("[mcp]\nallowed_images = [\"a b\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mcp.allowed_images"), "{err}");
        let l = parse("[mcp]\nmax_vm = 3\n").unwrap();
        assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
        assert!(l.warnings[0].contains("mcp.max_vm"), "{:?}", l.warnings);
    }

    #[test]
    fn empty_is_defaults() {
        assert_eq!(parse("").unwrap(), Loaded::default());
        assert_eq!(
            Config::load(Path::new("/nonexistent/banger/config.toml")).unwrap(),
            Loaded::default()
        );
    }

    #[test]
    fn reads_keys() {
        let l = parse("log_level = \"debug\"\n").unwrap();
        assert_eq!(l.config.log_level, "debug");
        assert!(l.warnings.is_empty());
    }

    #[test]
    fn unknown_keys_warn() {
        let l = parse("log_levle = \"debug\"\n[extra]\nx = 1\n").unwrap();
        assert_eq!(l.config, Config::default());
        assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
        assert!(
            l.warnings.iter().any(|w| w.contains("'log_levle'")),
            "{:?}",
            l.warnings
        );
    }

    #[test]
    fn registry_keys_are_checked() {
        let c = Config::default();
        assert_eq!(c.max_image_size, ByteSize::gib(64));
        assert!(c.insecure_registries.is_empty());
        let l = Config::parse(
            Path::new("c.toml"),
            "insecure_registries = [\"reg.lan:5000\"]\nmax_image_size = \"2G\"",
        )
        .unwrap();
        assert_eq!(l.config.insecure_registries, ["reg.lan:5000"]);
        assert_eq!(l.config.max_image_size, ByteSize::gib(2));
        for bad in [
            "insecure_registries = [\"http://reg.lan\"]",
            "insecure_registries = [\"reg.lan/x\"]",
            "max_image_size = \"1K\"",
        ] {
            let e = Config::parse(Path::new("c.toml"), bad).unwrap_err();
            assert!(e.to_string().contains("c.toml"), "{bad}: {e}");
        }
    }

    #[test]
    fn max_log_size_follows_the_size_rules() {
        assert_eq!(Config::default().max_log_size, ByteSize::mib(64));
        for (text, want) in [
            ("max_log_size = \"128M\"", ByteSize::mib(128)),
            ("max_log_size = \"1GiB\"", ByteSize::gib(1)),
            ("max_log_size = \"1.5M\"", ByteSize(3 << 19)),
            ("max_log_size = 16", ByteSize::mib(16)),
        ] {
            assert_eq!(parse(text).unwrap().config.max_log_size, want, "{text}");
        }
        let e = parse("max_log_size = \"12 parsecs\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("12 parsecs") && e.contains("max_log_size"),
            "{e}"
        );
        let e = parse("max_log_size = \"512K\"\n").unwrap_err().to_string();
        assert!(
            e.contains("max_log_size") && e.contains("at least 1 MiB"),
            "{e}"
        );
        assert!(parse("max_log_size = -1\n").is_err());
    }

    #[test]
    fn vmm_is_a_typed_choice() {
        use crate::vmm_kind::VmmKind;
        assert_eq!(Config::default().vmm, VmmChoice::Auto);
        let l = parse("vmm = \"qemu\"\n").unwrap();
        assert_eq!(l.config.vmm, VmmChoice::Kind(VmmKind::Qemu));
    }

    #[test]
    fn bad_values_error() {
        let e = parse("log_level = 3\n").unwrap_err().to_string();
        assert!(e.contains("/c/config.toml"), "{e}");
        let e = parse("vmm = \"kvmtool\"\n").unwrap_err().to_string();
        assert!(
            e.contains("vmm") && e.contains("auto, firecracker, qemu"),
            "{e}"
        );
        let e = parse("log_level = \"loud\"\n").unwrap_err().to_string();
        assert!(e.contains("log_level") && e.contains("loud"), "{e}");
        assert!(parse("log_level = \n").is_err());
    }

    #[test]
    fn npm_registry_is_an_http_url() {
        assert_eq!(
            parse("").unwrap().config.npm_registry,
            "https://registry.npmjs.org"
        );
        let l = parse("npm_registry = \"http://127.0.0.1:4873/\"\n").unwrap();
        assert_eq!(l.config.npm_registry, "http://127.0.0.1:4873/");
        for bad in ["registry.npmjs.org", "ftp://x", "https://", "https://a b"] {
            let e = parse(&format!("npm_registry = {bad:?}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("npm_registry") && e.contains("http:// or https:// URL"),
                "{e}"
            );
        }
    }

    #[test]
    fn helper_socket_is_an_absolute_socket_path() {
        assert_eq!(
            parse("").unwrap().config.helper_socket,
            Path::new("/run/banger/helper.sock")
        );
        let l = parse("helper_socket = \"/tmp/h.sock\"\n").unwrap();
        assert_eq!(l.config.helper_socket, Path::new("/tmp/h.sock"));
        let long = format!("/{}", "x".repeat(120));
        for bad in ["helper.sock", long.as_str()] {
            let e = parse(&format!("helper_socket = {bad:?}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("helper_socket") && e.contains("absolute socket path"),
                "{e}"
            );
        }
    }

    fn entry(host: &str, guest: &str) -> FileSync {
        FileSync {
            host: host.into(),
            guest: guest.into(),
        }
    }

    #[test]
    fn warm_start_is_on_unless_turned_off() {
        assert!(parse("").unwrap().config.warm_start);
        assert!(!parse("warm_start = false\n").unwrap().config.warm_start);
    }

    #[test]
    fn the_ssh_config_block_is_on_unless_turned_off() {
        assert!(parse("").unwrap().config.ssh_config);
        assert!(!parse("ssh_config = false\n").unwrap().config.ssh_config);
        let e = crate::error::chain(&parse("ssh_config = \"no\"\n").unwrap_err());
        assert!(e.contains("ssh_config"), "{e}");
    }

    #[test]
    fn dns_listen_is_an_address_and_port() {
        assert_eq!(
            parse("").unwrap().config.dns_listen.to_string(),
            "127.0.0.1:42069"
        );
        let l = parse("dns = false\ndns_listen = \"127.0.0.1:0\"\n").unwrap();
        assert!(!l.config.dns);
        assert_eq!(l.config.dns_listen.port(), 0);
        for bad in ["\"localhost:53\"", "\"127.0.0.1\"", "53"] {
            let e = crate::error::chain(&parse(&format!("dns_listen = {bad}\n")).unwrap_err());
            assert!(e.contains("dns_listen"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_web_ui_is_on_at_loopback_7777_and_its_extra_names_are_dns_names() {
        let c = parse("").unwrap().config;
        assert!(c.web && !c.web_allow_remote && c.web_hostnames.is_empty());
        assert_eq!(c.web_listen.to_string(), "127.0.0.1:7777");
        let c = parse("web = false\nweb_listen = \"0.0.0.0:8080\"\nweb_allow_remote = true\nweb_hostnames = [\"box.lan\"]\n")
            .unwrap()
            .config;
        assert!(!c.web && c.web_allow_remote);
        assert_eq!(
            (c.web_listen.port(), c.web_hostnames),
            (8080, vec!["box.lan".to_string()])
        );
        for bad in [
            "web_listen = \"localhost\"",
            "web_hostnames = [\"evil.com/x\"]",
            "web = 1",
        ] {
            let e = crate::error::chain(&parse(&format!("{bad}\n")).unwrap_err());
            assert!(e.contains("web"), "{bad}: {e}");
        }
    }

    #[test]
    fn tap_pool_size_defaults_to_four_and_is_bounded() {
        assert_eq!(parse("").unwrap().config.tap_pool_size, 4);
        assert_eq!(
            parse("tap_pool_size = 0\n").unwrap().config.tap_pool_size,
            0
        );
        for bad in ["65", "-1", "\"4\""] {
            let e = crate::error::chain(&parse(&format!("tap_pool_size = {bad}\n")).unwrap_err());
            assert!(e.contains("tap_pool_size"), "{bad}: {e}");
        }
    }

    #[test]
    fn file_sync_is_read_and_guest_paths_checked_at_load() {
        let l = parse(
            "[[file_sync]]\nhost = \"~/.npmrc\"\nguest = \"/root/.npmrc\"\n\
             [[file_sync]]\nhost = \"notes/a.txt\"\nguest = \"/root//docs/./a.txt\"\n",
        );
        // `.` in a guest path is refused, like `..`.
        let e = crate::error::chain(&l.unwrap_err());
        assert!(e.contains("notes/a.txt") && e.contains(". or .."), "{e}");
        let l = parse("[[file_sync]]\nhost = \"~/.npmrc\"\nguest = \"/root/.npmrc\"\n").unwrap();
        assert_eq!(l.config.file_sync, vec![entry("~/.npmrc", "/root/.npmrc")]);
        for (text, needle) in [
            ("host = \"~/x\"\nguest = \"/etc/x\"", "under /root/"),
            ("host = \"~/x\"\nguest = \"/rootx/y\"", "under /root/"),
            ("host = \"~/x\"\nguest = \"/root/\"", "not /root itself"),
            ("host = \"~/x\"\nguest = \"/root/a/../b\"", ". or .."),
            ("host = \"\"\nguest = \"/root/b\"", "host path is empty"),
        ] {
            let e = crate::error::chain(&parse(&format!("[[file_sync]]\n{text}\n")).unwrap_err());
            assert!(
                e.contains(needle) && e.contains("file_sync entry"),
                "{text}: {e}"
            );
            assert!(e.contains("/c/config.toml"), "{e}");
        }
        assert!(parse("[[file_sync]]\nhost = \"~/x\"\n").is_err());
        for guest in ["/root/.gitconfig", "/root/.ssh//authorized_keys"] {
            let e = crate::error::chain(
                &parse(&format!(
                    "[[file_sync]]\nhost = \"~/x\"\nguest = \"{guest}\"\n"
                ))
                .unwrap_err(),
            );
            assert!(e.contains("written by banger itself"), "{e}");
        }
        let e = crate::error::chain(
            &parse(
                "[[file_sync]]\nhost = \"~/a\"\nguest = \"/root/f\"\n\
                 [[file_sync]]\nhost = \"~/b\"\nguest = \"/root//f\"\n",
            )
            .unwrap_err(),
        );
        assert!(
            e.contains("\"~/b\"") && e.contains("already writes /root/f"),
            "{e}"
        );
        assert!(parse("[[file_sync]]\nhost = \"~/x\"\nguest = \"/root/x\"\nmode = 1\n").is_err());
    }

    #[test]
    fn file_sync_host_paths_stay_in_the_home() {
        let home = Path::new("/home/u");
        let ok = |host: &str| entry(host, "/root/f").host_in(home).unwrap();
        assert_eq!(ok("~/.npmrc"), Path::new("/home/u/.npmrc"));
        assert_eq!(ok(".npmrc"), Path::new("/home/u/.npmrc"));
        assert_eq!(ok("/home/u/a/b"), Path::new("/home/u/a/b"));
        assert_eq!(ok("~/a/../b"), Path::new("/home/u/b"));
        for host in [
            "/etc/passwd",
            "../x",
            "~/../x",
            "~/a/../../etc",
            "/home/user2/x",
            "~",
            "~other/x",
            "/home/u",
        ] {
            let e = entry(host, "/root/f").host_in(home).unwrap_err();
            assert_eq!(e.host, host);
            let text = e.to_string();
            assert!(text.contains(&format!("{host:?}")), "{text}");
        }
        assert!(
            entry("/etc/passwd", "/root/f")
                .host_in(home)
                .unwrap_err()
                .to_string()
                .contains("outside the owner's home")
        );
        let c = Config {
            file_sync: vec![entry("~/ok", "/root/ok"), entry("/etc/passwd", "/root/p")],
            ..Config::default()
        };
        let e = crate::error::chain(&c.check_home(Path::new("/c/config.toml"), home).unwrap_err());
        assert!(
            e.contains("/etc/passwd") && e.contains("/c/config.toml"),
            "{e}"
        );
    }

    #[test]
    fn file_sync_symlinks_are_resolved_inside_the_home() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join("real")).unwrap();
        std::fs::write(home.join("real/f"), b"x").unwrap();
        std::os::unix::fs::symlink(home.join("real"), home.join("inside")).unwrap();
        std::os::unix::fs::symlink("/etc", home.join("etc")).unwrap();
        let real_home = std::fs::canonicalize(&home).unwrap();
        assert_eq!(
            entry("~/inside/f", "/root/f").resolve(&home).unwrap(),
            Some(real_home.join("real/f"))
        );
        assert_eq!(entry("~/missing", "/root/f").resolve(&home).unwrap(), None);
        let e = entry("~/etc/passwd", "/root/p")
            .resolve(&home)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("resolves to /etc/passwd") && e.contains("~/etc/passwd"),
            "{e}"
        );
    }
}
