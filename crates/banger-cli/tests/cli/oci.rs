//! `image pull` of OCI images and `image cache prune`, against Debian's `docker-registry` on
//! loopback (a private config, a free port, temporary storage), filled with `skopeo copy`
//! from OCI layouts the tests write themselves; and against a misbehaving registry the
//! tests run in a thread, for the hardening corpus. The pulled ext4 is read back with
//! `debugfs`. Pulls inject the static guest agent: without `BANGER_AGENT_BIN`, or without
//! the registry tools, a test skips visibly.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::common::Home;

fn skip(why: &str) {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("skipped: {why}");
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A home with `config` (TOML), a fake kernel imported and the static agent, or `None`
/// (skipped).
fn pull_home(tools: &[&str], config: &str) -> Option<Home> {
    let Some(agent) = std::env::var_os("BANGER_AGENT_BIN") else {
        skip("BANGER_AGENT_BIN (a static banger-agent) is not set");
        return None;
    };
    for t in tools {
        if !have(t) {
            skip(&format!("{t} is not installed (scripts/setup)"));
            return None;
        }
    }
    let mut home = Home::new();
    home.set_env("BANGER_AGENT_BIN", agent);
    std::fs::create_dir_all(home.path().join("config")).unwrap();
    std::fs::write(
        home.path().join("config/config.toml"),
        crate::common::test_config(config),
    )
    .unwrap();
    let tree = home.path().join("kpkg");
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(4096, 0);
    std::fs::write(tree.join("boot/vmlinux-6.9.1-test"), &elf).unwrap();
    home.ok(&["kernel", "import", "k1", "--from", tree.to_str().unwrap()]);
    Some(home)
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One entry of a test layer.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    /// A file with its mode and owner.
    Owned(&'a str, &'a [u8], u32, u64),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    Fifo(&'a str),
}

/// A tar of `entries` (names written raw, unchecked), gzip-compressed.
fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let (name, data, kind, mode, link): (&str, &[u8], tar::EntryType, u32, &str) = match e {
            E::Dir(n) => (n, b"", tar::EntryType::Directory, 0o755, ""),
            E::File(n, d) => (n, d, tar::EntryType::Regular, 0o644, ""),
            E::Owned(n, d, m, u) => {
                h.set_uid(*u);
                (n, d, tar::EntryType::Regular, *m, "")
            }
            E::Symlink(n, t) => (n, b"", tar::EntryType::Symlink, 0o777, t),
            E::HardLink(n, t) => (n, b"", tar::EntryType::Link, 0o644, t),
            E::Fifo(n) => (n, b"", tar::EntryType::Fifo, 0o644, ""),
        };
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        {
            let raw = h.as_old_mut();
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
            raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    gzip(&b.into_inner().unwrap())
}

/// `tar` gzip-compressed: a layer blob.
pub(crate) fn gzip(tar: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(tar).unwrap();
    gz.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// A descriptor: media type, digest, size.
#[derive(Clone, Debug)]
pub(crate) struct Desc {
    media_type: &'static str,
    digest: String,
    size: usize,
}

impl Desc {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// The blobs of one or more images, as an OCI layout writes them and a registry serves them.
#[derive(Default, Clone)]
pub(crate) struct Blobs {
    all: Vec<(String, Vec<u8>)>,
}

impl Blobs {
    fn add(&mut self, media_type: &'static str, bytes: Vec<u8>) -> Desc {
        let digest = format!("sha256:{}", sha(&bytes));
        let d = Desc {
            media_type,
            digest: digest.clone(),
            size: bytes.len(),
        };
        if !self.all.iter().any(|(k, _)| *k == digest) {
            self.all.push((digest, bytes));
        }
        d
    }

    fn get(&self, digest: &str) -> Option<&[u8]> {
        self.all
            .iter()
            .find(|(k, _)| k == digest)
            .map(|(_, v)| v.as_slice())
    }

    /// An image manifest over `layers` (gzip tars) for `arch`.
    pub(crate) fn image(&mut self, layers: &[Vec<u8>], arch: &str) -> Desc {
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| format!("sha256:{}", sha(&gunzip(l))))
            .collect();
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = self.add(CONFIG, serde_json::to_vec(&config).unwrap());
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| self.add(LAYER_GZIP, l.clone()).json())
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": config.json(), "layers": layers,
        });
        self.add(MANIFEST, serde_json::to_vec(&manifest).unwrap())
    }

    /// An index of `(manifest, os, arch)`.
    fn index(&mut self, entries: &[(Desc, &str, &str)]) -> Desc {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(d, os, arch)| {
                let mut j = d.json();
                j["platform"] = serde_json::json!({"os": os, "architecture": arch});
                j
            })
            .collect();
        let index =
            serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests});
        self.add(INDEX, serde_json::to_vec(&index).unwrap())
    }

    /// Writes an OCI layout at `dir` whose `tag` is `top`.
    fn layout(&self, dir: &Path, top: &Desc, tag: &str) {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        for (digest, bytes) in &self.all {
            std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes).unwrap();
        }
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
        let mut entry = top.json();
        entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [entry]});
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's `docker-registry` on a free loopback port with temporary storage, optionally
/// behind htpasswd (basic) auth, in the host's or a test's network namespace; stopped when
/// dropped.
pub(crate) struct LocalRegistry {
    child: Child,
    pub(crate) addr: String,
    netns: Option<String>,
    dir: tempfile::TempDir,
    creds: Option<(String, String)>,
}

impl LocalRegistry {
    fn start(auth: Option<(&str, &str)>) -> Self {
        Self::start_in(None, auth)
    }

    /// `program`, run in the registry's network namespace.
    fn command(netns: Option<&str>, program: &str) -> Command {
        match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// A registry on the loopback of network namespace `netns` (the host's if `None`):
    /// where a guest test's daemon reaches it.
    pub(crate) fn start_in(netns: Option<&str>, auth: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("storage").display()
        );
        if let Some((user, pass)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .unwrap();
            assert!(out.status.success());
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: banger-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Self::command(netns, "docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let listening = || match netns {
            None => TcpStream::connect(&addr).is_ok(),
            Some(_) => Self::command(netns, "bash")
                .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        };
        while !listening() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        LocalRegistry {
            child,
            addr,
            netns: netns.map(str::to_string),
            dir,
            creds: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        }
    }

    /// Pushes the layout `blobs`/`top` as `repo:tag` with skopeo (all platforms).
    pub(crate) fn push(&self, blobs: &Blobs, top: &Desc, repo_tag: &str) {
        let layout = tempfile::tempdir_in(self.dir.path()).unwrap();
        blobs.layout(layout.path(), top, "t");
        let mut c = Self::command(self.netns.as_deref(), "skopeo");
        c.args(["copy", "--all", "--quiet", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.creds {
            c.arg(format!("--dest-creds={u}:{p}"));
        }
        c.arg(format!("oci:{}:t", layout.path().display()))
            .arg(format!("docker://{}/{repo_tag}", self.addr));
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `debugfs -R REQUEST IMAGE`'s stdout.
fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn image_json(home: &Home, name: &str) -> serde_json::Value {
    serde_json::from_str(&home.ok(&["image", "show", name, "--json"])).unwrap()
}

fn rootfs(home: &Home, name: &str) -> PathBuf {
    PathBuf::from(image_json(home, name)["rootfs"].as_str().unwrap())
}

/// The files in the layer cache (none partial).
fn cached_layers(home: &Home) -> Vec<String> {
    let dir = home.path().join("state/cache/layers/sha256");
    let mut all: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    all.sort();
    all
}

/// What `state/images` holds (image directories, staging leftovers).
fn image_dirs(home: &Home) -> Vec<String> {
    std::fs::read_dir(home.path().join("state/images"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn image_names(home: &Home) -> Vec<String> {
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&home.ok(&["image", "list", "--json"])).unwrap();
    list.iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

/// Three layers exercising whiteouts, an opaque directory, a setuid root file and a
/// container marker.
fn three_layers() -> Vec<Vec<u8>> {
    vec![
        layer(&[
            E::Dir("etc"),
            E::Dir("usr"),
            E::Dir("usr/bin"),
            E::Dir("opt"),
            E::Dir("opt/gone"),
            E::Dir("keep"),
            E::File("etc/os-release", b"ID=test1\n"),
            E::Owned("usr/bin/su", b"#!/bin/sh\n", 0o4755, 0),
            E::Owned("usr/bin/mine", b"x", 0o750, 1000),
            E::File("opt/gone/a", b"a"),
            E::File("keep/old", b"old"),
            E::File("etc/removed", b"r"),
            E::File(".dockerenv", b""),
        ]),
        layer(&[
            E::File("etc/.wh.removed", b""),
            E::File("opt/.wh.gone", b""),
            E::File("keep/.wh..wh..opq", b""),
            E::File("keep/new", b"new"),
            E::File("etc/l2", b"2"),
        ]),
        layer(&[
            E::File("etc/.wh.l2", b""),
            E::File("etc/l3", b"3"),
            E::File("etc/os-release", b"ID=test3\n"),
        ]),
    ]
}

#[test]
fn pull_by_tag_and_digest_applies_whiteouts_and_setuid_and_shares_the_layer_cache() {
    let Some(home) = pull_home(&["docker-registry", "skopeo", "debugfs"], "") else {
        return;
    };
    let reg = LocalRegistry::start(None);
    let mut blobs = Blobs::default();
    let manifest = blobs.image(&three_layers(), "amd64");
    reg.push(&blobs, &manifest, "team/base:v1");
    let reference = format!("{}/team/base:v1", reg.addr);

    let out = home.run(&["image", "pull", &reference, "--size", "64M"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "pulled image base-v1 (64 MiB)\n"
    );
    for stage in [
        "resolve:",
        "layer: 1/3",
        "layer: 3/3",
        "flatten:",
        "payload:",
        "ext4:",
    ] {
        assert!(stderr.contains(stage), "{stage} missing: {stderr}");
    }
    assert!(stderr.contains("downloaded"), "{stderr}");
    // Not a terminal: no redrawn download ticks.
    assert!(!stderr.contains('\r'), "{stderr}");
    let img = image_json(&home, "base-v1");
    assert_eq!(img["kernel_ref"], "k1");
    // No systemd in these layers: its guests boot banger's init.
    assert_eq!(img["init"], "banger", "{img}");
    assert!(
        img["description"]
            .as_str()
            .unwrap()
            .contains(&manifest.digest),
        "{img}"
    );

    let ext4 = rootfs(&home, "base-v1");
    let su = debugfs(&ext4, "stat /usr/bin/su");
    assert!(su.contains("Mode:  04755"), "{su}");
    assert!(su.contains("User:     0"), "{su}");
    let mine = debugfs(&ext4, "stat /usr/bin/mine");
    assert!(mine.contains("Mode:  0750"), "{mine}");
    assert!(mine.contains("User:  1000"), "{mine}");
    assert_eq!(debugfs(&ext4, "cat /etc/os-release"), "ID=test3\n");
    assert_eq!(debugfs(&ext4, "cat /keep/new"), "new");
    assert_eq!(debugfs(&ext4, "cat /etc/l3"), "3");
    for gone in [
        "/etc/removed",
        "/opt/gone",
        "/keep/old",
        "/etc/l2",
        "/.dockerenv",
    ] {
        let s = debugfs(&ext4, &format!("stat {gone}"));
        assert!(s.trim().is_empty(), "{gone} is still there: {s}");
    }
    // The guest payload is in.
    assert!(
        !debugfs(&ext4, "stat /usr/local/bin/banger-agent")
            .trim()
            .is_empty()
    );
    assert_eq!(cached_layers(&home).len(), 3);

    // The same name again: refused, nothing new.
    let dirs = image_dirs(&home);
    let again = home.run(&["image", "pull", &reference]);
    assert_eq!(again.status.code(), Some(1));
    let e = String::from_utf8_lossy(&again.stderr);
    assert!(
        e.contains("an image named \"base-v1\" already exists"),
        "{e}"
    );
    assert_eq!(image_dirs(&home), dirs);

    // By digest, under another name: every layer from the cache. `--init systemd` on an
    // image without it: systemd is installed on a first boot with a network.
    let pinned = format!("{}/team/base@{}", reg.addr, manifest.digest);
    let out = home.run(&[
        "image", "pull", &pinned, "--name", "pinned", "--size", "64M", "--init", "systemd",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("(cached)").count(), 3, "{stderr}");
    assert!(!stderr.contains("downloaded"), "{stderr}");
    assert_eq!(debugfs(&rootfs(&home, "pinned"), "cat /etc/l3"), "3");
    assert_eq!(image_json(&home, "pinned")["init"], "install-systemd");

    // Prune keeps what an image was pulled from.
    let out = home.ok(&["image", "cache", "prune"]);
    assert_eq!(out, "freed 0 B (0 layers removed, 3 kept)\n");
    home.ok(&["image", "delete", "base-v1"]);
    let out = home.ok(&["image", "cache", "prune"]);
    assert_eq!(out, "freed 0 B (0 layers removed, 3 kept)\n");
    home.ok(&["image", "delete", "pinned"]);
    let out = home.ok(&["image", "cache", "prune"]);
    assert_eq!(out.matches("removed layer sha256:").count(), 3, "{out}");
    assert!(out.ends_with("(3 layers removed, 0 kept)\n"), "{out}");
    assert!(cached_layers(&home).is_empty());
}

#[test]
fn pull_resolves_an_index_to_linux_amd64() {
    let Some(home) = pull_home(&["docker-registry", "skopeo", "debugfs"], "") else {
        return;
    };
    let reg = LocalRegistry::start(None);
    let mut blobs = Blobs::default();
    let arm = blobs.image(&[layer(&[E::File("arch", b"arm64")])], "arm64");
    let amd = blobs.image(&[layer(&[E::File("arch", b"amd64")])], "amd64");
    let ppc = blobs.image(&[layer(&[E::File("arch", b"ppc64le")])], "ppc64le");
    let index = blobs.index(&[
        (arm, "linux", "arm64"),
        (amd.clone(), "linux", "amd64"),
        (ppc.clone(), "linux", "ppc64le"),
    ]);
    reg.push(&blobs, &index, "multi:1");
    let out = home.run(&[
        "image",
        "pull",
        &format!("{}/multi:1", reg.addr),
        "--size",
        "64M",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(debugfs(&rootfs(&home, "multi-1"), "cat /arch"), "amd64");
    assert_eq!(cached_layers(&home).len(), 1);

    // An index without linux/amd64 names what it has, and leaves nothing.
    let only = blobs.index(&[(ppc, "linux", "ppc64le")]);
    reg.push(&blobs, &only, "multi:ppc");
    let out = home.run(&["image", "pull", &format!("{}/multi:ppc", reg.addr)]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("the image index has no linux/amd64 image (it has: linux/ppc64le)"),
        "{e}"
    );
    assert_eq!(image_names(&home), ["multi-1"]);
}

#[test]
fn pull_from_a_registry_with_auth_uses_the_docker_config() {
    let Some(home) = pull_home(&["docker-registry", "skopeo", "debugfs", "htpasswd"], "") else {
        return;
    };
    let reg = LocalRegistry::start(Some(("alice", "s3cret")));
    let mut blobs = Blobs::default();
    let manifest = blobs.image(&[layer(&[E::File("hello", b"private")])], "amd64");
    reg.push(&blobs, &manifest, "private/img:v1");
    let reference = format!("{}/private/img:v1", reg.addr);

    // No credentials: refused by the registry, nothing left.
    let out = home.run(&["image", "pull", &reference]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("fetching the manifest of"), "{e}");
    assert!(e.contains("Not authorized"), "{e}");
    assert!(image_names(&home).is_empty());

    // The daemon reads the owner's ~/.docker/config.json (the test home's).
    let docker = home.path().join("user/.docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let out = home.run(&["image", "pull", &reference, "--size", "64M"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(debugfs(&rootfs(&home, "img-v1"), "cat /hello"), "private");
}

/// How the misbehaving registry lies.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    /// Serves other bytes than the layer's digest says.
    BlobContent,
    /// The manifest declares the layer 10 bytes shorter than it is.
    SizeTooSmall,
    /// The manifest declares the layer 10 bytes longer than it is.
    SizeTooLarge,
    /// Answers 500 for the blob.
    Blob500,
    /// Announces the whole blob, sends half of it, closes.
    CloseMidBlob,
    /// Answers 500 for the manifest.
    Manifest500,
    /// Serves a manifest other than the digest the pull asks for.
    ManifestDigest,
    /// Not a fault: wants a bearer token, which its realm `/token` gives for HTTP basic
    /// `alice:s3cret`.
    BearerToken,
}

/// A registry in a thread serving one image (`evil/img:v1`, one layer) with `fault`.
fn misbehaving_registry(layer_bytes: Vec<u8>, fault: Fault) -> (String, String) {
    let mut blobs = Blobs::default();
    let manifest = blobs.image(std::slice::from_ref(&layer_bytes), "amd64");
    let layer_digest = format!("sha256:{}", sha(&layer_bytes));
    let mut manifest_bytes = blobs.get(&manifest.digest).unwrap().to_vec();
    let delta: i64 = match fault {
        Fault::SizeTooSmall => -10,
        Fault::SizeTooLarge => 10,
        _ => 0,
    };
    if delta != 0 {
        let mut m: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
        m["layers"][0]["size"] = serde_json::json!(layer_bytes.len() as i64 + delta);
        manifest_bytes = serde_json::to_vec(&m).unwrap();
    }
    let asked = match fault {
        // The pull asks for this digest; the registry serves other bytes.
        Fault::ManifestDigest => {
            let honest = format!("sha256:{}", sha(&manifest_bytes));
            let mut m: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
            m["annotations"] = serde_json::json!({"tampered": "yes"});
            manifest_bytes = serde_json::to_vec(&m).unwrap();
            format!("@{honest}")
        }
        _ => ":v1".to_string(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let realm = format!("http://{addr}/token");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            let reply = |s: &mut TcpStream, status: &str, ctype: &str, body: &[u8], len: usize| {
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                );
                let _ = s.write_all(body);
            };
            if fault == Fault::BearerToken {
                let auth = head.lines().find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                        .map(|(_, v)| v.trim().to_string())
                });
                let basic = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
                );
                if path.starts_with("/token?") {
                    if auth.as_deref() == Some(basic.as_str()) && path.contains("scope=repository")
                    {
                        let body = br#"{"token": "tok123"}"#;
                        reply(&mut s, "200 OK", "application/json", body, body.len());
                    } else {
                        reply(&mut s, "401 Unauthorized", "text/plain", b"", 0);
                    }
                    continue;
                }
                if auth.as_deref() != Some("Bearer tok123") {
                    let _ = write!(
                        s,
                        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",service=\"evil\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    continue;
                }
            }
            if path == "/v2/" {
                reply(&mut s, "200 OK", "application/json", b"{}", 2);
            } else if path.starts_with("/v2/evil/img/manifests/") {
                if fault == Fault::Manifest500 {
                    reply(
                        &mut s,
                        "500 Internal Server Error",
                        "text/plain",
                        b"boom",
                        4,
                    );
                } else {
                    reply(
                        &mut s,
                        "200 OK",
                        MANIFEST,
                        &manifest_bytes,
                        manifest_bytes.len(),
                    );
                }
            } else if path == format!("/v2/evil/img/blobs/{layer_digest}") {
                let mut body = layer_bytes.clone();
                match fault {
                    Fault::Blob500 => reply(
                        &mut s,
                        "500 Internal Server Error",
                        "text/plain",
                        b"boom",
                        4,
                    ),
                    Fault::CloseMidBlob => {
                        let half = body.len() / 2;
                        reply(
                            &mut s,
                            "200 OK",
                            "application/octet-stream",
                            &body[..half],
                            body.len(),
                        )
                    }
                    _ => {
                        if fault == Fault::BlobContent {
                            let last = body.len() - 1;
                            body[last] ^= 0xff;
                        }
                        let n = body.len();
                        reply(&mut s, "200 OK", "application/octet-stream", &body, n)
                    }
                }
            } else {
                reply(&mut s, "404 Not Found", "text/plain", b"", 0);
            }
        }
    });
    (addr.clone(), format!("{addr}/evil/img{asked}"))
}

/// Nothing of a failed pull is left: no image, image directory, staging or scratch
/// directory, and no cached layer but verified ones no image needs (prune takes them).
fn assert_nothing_left(home: &Home, case: &str) {
    assert!(image_names(home).is_empty(), "{case}: an image row");
    assert!(
        image_dirs(home).is_empty(),
        "{case}: {:?}",
        image_dirs(home)
    );
    let tmp: Vec<_> = std::fs::read_dir(home.path().join("state/tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "{case}: scratch left: {tmp:?}");
    let cached = cached_layers(home);
    assert!(
        !cached.iter().any(|c| c.starts_with('.')),
        "{case}: a partial download: {cached:?}"
    );
    let pruned = home.ok(&["image", "cache", "prune"]);
    assert!(pruned.ends_with(" 0 kept)\n"), "{case}: {pruned}");
}

#[test]
fn a_lying_registry_or_a_malicious_layer_leaves_nothing_and_says_what_was_wrong() {
    let Some(home) = pull_home(&["debugfs"], "max_image_size = \"2M\"\n") else {
        return;
    };
    let ok_layer = layer(&[E::File("hello", b"hi")]);
    let zeros = vec![0u8; 3 << 20];
    let cases: Vec<(&str, Vec<u8>, Fault, &str)> = vec![
        (
            "blob sha256 mismatch",
            ok_layer.clone(),
            Fault::BlobContent,
            "Invalid digest. Expected sha256:",
        ),
        (
            "declared size too small",
            ok_layer.clone(),
            Fault::SizeTooSmall,
            "larger than the",
        ),
        (
            "declared size too large",
            ok_layer.clone(),
            Fault::SizeTooLarge,
            "ended after",
        ),
        ("blob answers 500", ok_layer.clone(), Fault::Blob500, "500"),
        (
            "closes mid-blob",
            ok_layer.clone(),
            Fault::CloseMidBlob,
            "blob sha256:",
        ),
        (
            "manifest answers 500",
            ok_layer.clone(),
            Fault::Manifest500,
            "500",
        ),
        (
            "manifest digest mismatch",
            ok_layer.clone(),
            Fault::ManifestDigest,
            "fetching the manifest of",
        ),
        (
            "member with ..",
            layer(&[E::File("../x", b"x")]),
            Fault::None,
            "escapes the root",
        ),
        (
            "absolute member",
            layer(&[E::File("/etc/passwd", b"x")]),
            Fault::None,
            "absolute path",
        ),
        (
            "writing through an earlier symlink",
            layer(&[E::Symlink("etc", "/tmp"), E::File("etc/owned", b"x")]),
            Fault::None,
            "refusing entry \"etc/owned\"",
        ),
        (
            "hardlink outside the tree",
            layer(&[E::HardLink("l", "../../etc/passwd")]),
            Fault::None,
            "escapes the root",
        ),
        (
            "decompression bomb",
            layer(&[E::File("zeros", &zeros)]),
            Fault::None,
            "the unpacked files would exceed the limit of 2097152 bytes",
        ),
    ];
    assert!(cases.len() >= 12);
    for (case, bytes, fault, needle) in cases {
        let (_addr, reference) = misbehaving_registry(bytes, fault);
        let out = home.run(&["image", "pull", &reference, "--name", "evil"]);
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: {e}");
        let last = e.lines().last().unwrap_or_default();
        assert!(last.starts_with("banger: "), "{case}: {e}");
        assert!(last.contains(needle), "{case}: wanted {needle:?} in {last}");
        assert_nothing_left(&home, case);
    }
    // `--size` past max_image_size is refused before anything is fetched.
    let (_addr, reference) = misbehaving_registry(ok_layer.clone(), Fault::None);
    let out = home.run(&["image", "pull", &reference, "--size", "64M"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("image size 64 MiB exceeds max_image_size 2 MiB"),
        "{e}"
    );
    assert!(cached_layers(&home).is_empty());

    // Device nodes and fifos are kept, created inside the image (documented in
    // banger-image's flatten); the host gets none.
    let (_addr, reference) = misbehaving_registry(layer(&[E::Fifo("pipe")]), Fault::None);
    let out = home.run(&["image", "pull", &reference, "--name", "fifo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stat = debugfs(&rootfs(&home, "fifo"), "stat /pipe");
    assert!(stat.contains("Type: FIFO"), "{stat}");
}

#[test]
fn pull_with_a_bearer_token_from_the_registry_realm() {
    let Some(home) = pull_home(&["debugfs"], "") else {
        return;
    };
    let (addr, reference) =
        misbehaving_registry(layer(&[E::File("hello", b"token")]), Fault::BearerToken);
    // Anonymous: the realm refuses a token, the pull says so and leaves nothing.
    let out = home.run(&["image", "pull", &reference, "--name", "tok"]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("fetching the manifest of"), "{e}");
    assert_nothing_left(&home, "anonymous");

    let docker = home.path().join("user/.docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths": {{"{addr}": {{"username": "alice", "password": "s3cret"}}}}}}"#),
    )
    .unwrap();
    let out = home.run(&["image", "pull", &reference, "--name", "tok"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(debugfs(&rootfs(&home, "tok"), "cat /hello"), "token");
}

fn file_sha(path: &Path) -> String {
    sha(&std::fs::read(path).unwrap())
}

#[test]
fn push_stores_a_bundle_artifact_that_pulls_back_as_the_same_image() {
    let Some(home) = pull_home(&["docker-registry", "skopeo", "debugfs"], "") else {
        return;
    };
    let reg = LocalRegistry::start(None);
    let mut blobs = Blobs::default();
    let manifest = blobs.image(&[layer(&[E::File("hello", b"golden")])], "amd64");
    reg.push(&blobs, &manifest, "src/img:v1");
    home.ok(&[
        "image",
        "pull",
        &format!("{}/src/img:v1", reg.addr),
        "--name",
        "golden",
        "--size",
        "64M",
    ]);

    let target = format!("{}/team/golden:v1", reg.addr);
    let out = home.run(&["image", "push", "golden", &target]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&target), "{stdout}");
    for stage in ["pack:", "push:"] {
        assert!(stderr.contains(stage), "{stage} missing: {stderr}");
    }

    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{target}"))
        .output()
        .unwrap();
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(
        m["artifactType"], "application/vnd.banger.image.config.v1+json",
        "{m}"
    );
    assert_eq!(
        m["config"]["mediaType"], "application/vnd.banger.image.config.v1+json",
        "{m}"
    );
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{m}");
    assert_eq!(
        layers[0]["mediaType"], "application/vnd.banger.image.bundle.v1.tar+zstd",
        "{m}"
    );

    // Pulled back: the bundle path (no flatten), the same rootfs and kernel.
    let out = home.run(&["image", "pull", &target, "--name", "copy"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("flatten:"), "{stderr}");
    assert_eq!(
        file_sha(&rootfs(&home, "copy")),
        file_sha(&rootfs(&home, "golden"))
    );
    assert_eq!(debugfs(&rootfs(&home, "copy"), "cat /hello"), "golden");
    assert_eq!(image_json(&home, "copy")["kernel_ref"], "k1");

    // A bundle is finished: flags that would rebuild it are refused, nothing registered.
    let out = home.run(&["image", "pull", &target, "--name", "other", "--size", "1G"]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("--size"), "{e}");
    assert!(!image_names(&home).contains(&"other".to_string()));
    let tmp: Vec<_> = std::fs::read_dir(home.path().join("state/tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "scratch left: {tmp:?}");
}

#[test]
fn push_to_a_registry_needing_auth_without_credentials_fails_and_leaves_nothing() {
    let Some(home) = pull_home(&["docker-registry", "skopeo", "debugfs", "htpasswd"], "") else {
        return;
    };
    let open = LocalRegistry::start(None);
    let mut blobs = Blobs::default();
    let manifest = blobs.image(&[layer(&[E::File("hello", b"x")])], "amd64");
    open.push(&blobs, &manifest, "src/img:v1");
    home.ok(&[
        "image",
        "pull",
        &format!("{}/src/img:v1", open.addr),
        "--name",
        "golden",
        "--size",
        "64M",
    ]);
    let private = LocalRegistry::start(Some(("alice", "s3cret")));
    let target = format!("{}/private/golden:v1", private.addr);
    let out = home.run(&["image", "push", "golden", &target]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains(&format!("pushing {target}")), "{e}");
    let tmp: Vec<_> = std::fs::read_dir(home.path().join("state/tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "scratch left: {tmp:?}");
    let inspect = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds=alice:s3cret",
        ])
        .arg(format!("docker://{target}"))
        .output()
        .unwrap();
    assert!(!inspect.status.success(), "a manifest was stored");
    assert_eq!(image_names(&home), vec!["golden".to_string()]);
}
