//! Integration tests with the real tools (`mkfs.ext4`, `debugfs`, `e2fsck`, `sha256sum`):
//! bundles built from hand-made tars, read back with debugfs, unpacked again; failures
//! injected through a runner that fails one program. `make_bundle_as_non_root` re-runs
//! itself as `nobody` when started as root. `real_mmdebstrap_bundle` bootstraps a real
//! Debian (`--variant=essential`) only with `BANGER_TEST_MMDEBSTRAP=1`.

use std::fs::{self, File};
use std::io::{Cursor, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Instant;

use banger_core::runner::{CommandOutput, CommandRunner, SpawnError, SystemRunner};
use banger_disk::{FileKind, Inode, exists, read_file, stat};
use banger_image::bundle::{MANIFEST_FILE, ROOTFS_FILE, sha256_file};
use banger_image::guest::{AGENT_PATH, ENABLE_LINKS, MODULES_LOAD_PATH, NETWORK_UP_PATH};
use banger_image::{
    BundleInfo, DebianBootstrap, ImageError, MakeBundle, Manifest, TarInput, Variant,
    debian_rootfs_tar, make_bundle, read_bundle,
};
use tar::EntryType;

const MIB: u64 = 1 << 20;

/// Prints a line of the test report: why a test was skipped, or timings.
macro_rules! note {
    ($($arg:tt)*) => {{
        #[allow(clippy::print_stderr, reason = "skips and timings are part of the test report")]
        {
            eprintln!($($arg)*);
        }
    }};
}

fn runner() -> SystemRunner {
    SystemRunner::new()
}

/// The scratch directory handed to `read_file` by tests.
fn scratch() -> &'static Path {
    static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().unwrap());
    DIR.path()
}

fn run(program: &str, args: &[&str]) -> CommandOutput {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    runner().run(program, &args).unwrap()
}

/// One tar entry.
struct E<'a> {
    name: &'a str,
    kind: EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    data: &'a [u8],
    link: &'a str,
    dev: (u32, u32),
}

fn e(name: &str, kind: EntryType, mode: u32) -> E<'_> {
    E {
        name,
        kind,
        mode,
        uid: 0,
        gid: 0,
        data: b"",
        link: "",
        dev: (0, 0),
    }
}

fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for en in entries {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..en.name.len()].copy_from_slice(en.name.as_bytes());
            gnu.linkname[..en.link.len()].copy_from_slice(en.link.as_bytes());
        }
        h.set_entry_type(en.kind);
        h.set_mode(en.mode);
        h.set_uid(en.uid);
        h.set_gid(en.gid);
        h.set_mtime(1_700_000_000);
        h.set_size(en.data.len() as u64);
        h.set_device_major(en.dev.0).unwrap();
        h.set_device_minor(en.dev.1).unwrap();
        h.set_cksum();
        b.append(&h, en.data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A small rootfs, as two layers (the second gzip-compressed) written to `dir`.
fn rootfs_layers(dir: &Path) -> Vec<PathBuf> {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let layer1 = tar_of(&[
        e("./", EntryType::Directory, 0o755),
        e("etc/", EntryType::Directory, 0o755),
        E {
            data: b"root:x:0:0:root:/root:/bin/bash\n",
            ..e("etc/passwd", EntryType::Regular, 0o644)
        },
        E {
            data: b"key",
            ..e("etc/ssh/ssh_host_rsa_key", EntryType::Regular, 0o600)
        },
        e("usr/", EntryType::Directory, 0o755),
        e("usr/bin/", EntryType::Directory, 0o755),
        e("usr/lib/", EntryType::Directory, 0o755),
        E {
            data: b"\x7fELF passwd",
            ..e("usr/bin/passwd", EntryType::Regular, 0o4755)
        },
        E {
            data: b"\x7fELF wall",
            gid: 5,
            ..e("usr/bin/wall", EntryType::Regular, 0o2755)
        },
        E {
            link: "usr/bin/passwd",
            ..e("usr/bin/passwd-again", EntryType::Link, 0)
        },
        E {
            link: "usr/bin",
            ..e("bin", EntryType::Symlink, 0o777)
        },
        E {
            link: "usr/lib",
            ..e("lib", EntryType::Symlink, 0o777)
        },
        E {
            uid: 1000,
            gid: 1000,
            ..e("home/dev/", EntryType::Directory, 0o750)
        },
        E {
            uid: 1000,
            gid: 1000,
            data: b"mine",
            ..e("home/dev/notes", EntryType::Regular, 0o600)
        },
        E {
            data: &big,
            ..e("usr/lib/big.bin", EntryType::Regular, 0o644)
        },
        e("tmp/", EntryType::Directory, 0o1777),
        E {
            dev: (1, 3),
            ..e("dev/null", EntryType::Char, 0o666)
        },
        E {
            dev: (8, 0),
            gid: 6,
            ..e("dev/sda", EntryType::Block, 0o660)
        },
        e("run/initctl", EntryType::Fifo, 0o600),
        e("old/", EntryType::Directory, 0o755),
        E {
            data: b"old",
            ..e("old/file", EntryType::Regular, 0o644)
        },
        e(".dockerenv", EntryType::Regular, 0o644),
    ]);
    let layer2 = tar_of(&[
        e("old/.wh.file", EntryType::Regular, 0o644),
        E {
            data: b"new",
            ..e("old/new", EntryType::Regular, 0o644)
        },
        e("run/.containerenv", EntryType::Regular, 0o644),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer2).unwrap();
    let layer2 = gz.finish().unwrap();
    let p1 = dir.join("layer1.tar");
    let p2 = dir.join("layer2.tar.gz");
    fs::write(&p1, layer1).unwrap();
    fs::write(&p2, layer2).unwrap();
    vec![p1, p2]
}

fn agent(dir: &Path) -> PathBuf {
    let path = dir.join("banger-agent");
    fs::write(&path, b"\x7fELF the agent").unwrap();
    path
}

fn modules(dir: &Path) -> PathBuf {
    let m = dir.join("modules/6.1.0-test");
    fs::create_dir_all(m.join("kernel/drivers/net")).unwrap();
    fs::write(m.join("kernel/drivers/net/virtio_net.ko"), b"ko").unwrap();
    fs::write(
        m.join("modules.builtin"),
        "kernel/drivers/block/virtio_blk.ko\n",
    )
    .unwrap();
    m
}

fn request(dir: &Path, tars: Vec<PathBuf>, size: Option<u64>) -> MakeBundle {
    let work = dir.join("work");
    fs::create_dir_all(&work).unwrap();
    MakeBundle {
        rootfs_tars: tars.into_iter().map(TarInput::Path).collect(),
        name: "test-image".to_string(),
        distro: "debian".to_string(),
        arch: "x86_64".to_string(),
        kernel_ref: "test-kernel".to_string(),
        description: "a test image".to_string(),
        size,
        agent_bin: agent(dir),
        modules_dir: Some(modules(dir)),
        init: None,
        out_dir: dir.join("out"),
        work_dir: work,
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn inode(image: &Path, path: &str) -> Inode {
    stat(&runner(), image, path)
        .unwrap()
        .unwrap_or_else(|| panic!("{path} missing from {}", image.display()))
}

fn raw_stat(image: &Path, path: &str) -> String {
    let out = run(
        "debugfs",
        &["-R", &format!("stat \"{path}\""), &image.to_string_lossy()],
    );
    out.stdout
}

/// The names and types of a bundle's members, in order.
fn members(bundle: &Path) -> Vec<(String, EntryType)> {
    let decoder = zstd::Decoder::new(File::open(bundle).unwrap()).unwrap();
    let mut archive = tar::Archive::new(decoder);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.header().entry_type(),
            )
        })
        .collect()
}

/// Checks the image built from [`rootfs_layers`].
fn check_image(image: &Path) {
    let i = inode(image, "/usr/bin/passwd");
    assert_eq!(
        (i.kind, i.mode, i.uid, i.gid),
        (FileKind::Regular, 0o4755, 0, 0)
    );
    let i = inode(image, "/usr/bin/wall");
    assert_eq!((i.mode, i.uid, i.gid), (0o2755, 0, 5));
    let i = inode(image, "/usr/bin/passwd-again");
    assert_eq!((i.mode, i.size), (0o4755, 11));
    assert!(raw_stat(image, "/usr/bin/passwd-again").contains("Links: 2"));
    let i = inode(image, "/home/dev");
    assert_eq!(
        (i.kind, i.mode, i.uid, i.gid),
        (FileKind::Directory, 0o750, 1000, 1000)
    );
    let i = inode(image, "/home/dev/notes");
    assert_eq!((i.mode, i.uid, i.gid), (0o600, 1000, 1000));
    assert_eq!(
        read_file(&runner(), image, "/home/dev/notes", scratch()).unwrap(),
        b"mine"
    );
    let i = inode(image, "/tmp");
    assert_eq!(i.mode, 0o1777);
    let i = inode(image, "/dev/null");
    assert_eq!((i.kind, i.mode, i.uid), (FileKind::CharDevice, 0o666, 0));
    assert!(raw_stat(image, "/dev/null").contains("Device major/minor number: 01:03"));
    let i = inode(image, "/dev/sda");
    assert_eq!((i.kind, i.mode, i.gid), (FileKind::BlockDevice, 0o660, 6));
    assert!(raw_stat(image, "/dev/sda").contains("Device major/minor number: 08:00"));
    let i = inode(image, "/run/initctl");
    assert_eq!((i.kind, i.mode), (FileKind::Fifo, 0o600));
    assert_eq!(inode(image, "/bin").kind, FileKind::Symlink);
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        read_file(&runner(), image, "/usr/lib/big.bin", scratch()).unwrap(),
        big
    );
    // Whiteouts, runtime markers, host keys.
    assert!(!exists(&runner(), image, "/old/file").unwrap());
    assert!(exists(&runner(), image, "/old/new").unwrap());
    assert!(!exists(&runner(), image, "/.dockerenv").unwrap());
    assert!(!exists(&runner(), image, "/run/.containerenv").unwrap());
    assert!(!exists(&runner(), image, "/etc/ssh/ssh_host_rsa_key").unwrap());
    // The guest payload.
    let i = inode(image, AGENT_PATH);
    assert_eq!(
        (i.kind, i.mode, i.uid, i.gid),
        (FileKind::Regular, 0o755, 0, 0)
    );
    assert_eq!(
        read_file(&runner(), image, AGENT_PATH, scratch()).unwrap(),
        b"\x7fELF the agent"
    );
    assert_eq!(inode(image, NETWORK_UP_PATH).mode, 0o755);
    for unit in [
        "banger-network.service",
        "banger-agent.service",
        "banger-firstboot.service",
    ] {
        let i = inode(image, &format!("/etc/systemd/system/{unit}"));
        assert_eq!((i.kind, i.mode, i.uid), (FileKind::Regular, 0o644, 0));
    }
    for (link, unit) in ENABLE_LINKS {
        assert_eq!(inode(image, link).kind, FileKind::Symlink);
        let text = raw_stat(image, link);
        assert!(
            text.contains(&format!("Fast link dest: \"/etc/systemd/system/{unit}\"")),
            "{text}"
        );
    }
    // Modules went through the /lib -> usr/lib symlink.
    let i = inode(
        image,
        "/usr/lib/modules/6.1.0-test/kernel/drivers/net/virtio_net.ko",
    );
    assert_eq!((i.mode, i.uid), (0o644, 0));
    let conf =
        String::from_utf8(read_file(&runner(), image, MODULES_LOAD_PATH, scratch()).unwrap())
            .unwrap();
    let listed: Vec<&str> = conf.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(listed, ["virtio_net", "virtio_blk"]);
    let root = inode(image, "/");
    assert_eq!((root.mode, root.uid), (0o755, 0));
    let fsck = run("e2fsck", &["-fn", &image.to_string_lossy()]);
    assert_eq!(fsck.code, Some(0), "{}\n{}", fsck.stdout, fsck.stderr);
}

/// Builds the bundle and checks everything; shared by the root and non-root runs.
fn bundle_round_trip(dir: &Path) -> BundleInfo {
    let tars = rootfs_layers(dir);
    let req = request(dir, tars, Some(64 * MIB));
    let work = req.work_dir.clone();
    let mut lines = Vec::new();
    let info = make_bundle(&runner(), req, &mut |l| lines.push(l.to_string())).unwrap();
    assert_eq!(info.path, dir.join("out/test-image.tar.zst"));
    assert_eq!(
        info.manifest,
        Manifest {
            name: "test-image".into(),
            distro: "debian".into(),
            arch: "x86_64".into(),
            kernel_ref: "test-kernel".into(),
            description: "a test image".into(),
            // The test tree has no systemd.
            init: banger_core::guest_init::GuestInit::Banger,
        }
    );
    assert_eq!(listing(&dir.join("out")), ["test-image.tar.zst"]);
    assert_eq!(listing(&work), Vec::<String>::new(), "staging left behind");
    assert_eq!(info.size_bytes, fs::metadata(&info.path).unwrap().len());
    let sum = run("sha256sum", &[&info.path.to_string_lossy()]);
    assert_eq!(sum.stdout.split_whitespace().next().unwrap(), info.sha256);
    assert_eq!(
        members(&info.path),
        [
            (MANIFEST_FILE.to_string(), EntryType::Regular),
            (ROOTFS_FILE.to_string(), EntryType::Regular)
        ]
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("applying owners and modes")),
        "{lines:?}"
    );

    let dest = dir.join("unpacked/test-image");
    fs::create_dir_all(dir.join("unpacked")).unwrap();
    let manifest = read_bundle(&info.path, &dest, Some(&info.sha256.to_uppercase())).unwrap();
    assert_eq!(manifest, info.manifest);
    assert_eq!(listing(&dir.join("unpacked")), ["test-image"]);
    assert_eq!(listing(&dest), [MANIFEST_FILE, ROOTFS_FILE]);
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(dest.join(MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(json["name"], "test-image");
    assert_eq!(json["kernel_ref"], "test-kernel");
    let image = dest.join(ROOTFS_FILE);
    let meta = fs::metadata(&image).unwrap();
    assert_eq!(meta.len(), 64 * MIB);
    assert!(
        meta.blocks() * 512 < meta.len() / 4,
        "not sparse: {} of {} bytes allocated",
        meta.blocks() * 512,
        meta.len()
    );
    check_image(&image);
    info
}

#[test]
fn make_bundle_then_read_bundle() {
    let dir = tempfile::tempdir().unwrap();
    bundle_round_trip(dir.path());
}

#[test]
fn default_size_is_one_gib_and_stays_cheap() {
    let dir = tempfile::tempdir().unwrap();
    let tars = rootfs_layers(dir.path());
    let req = request(dir.path(), tars, None);
    let started = Instant::now();
    let info = make_bundle(&runner(), req, &mut |l| {
        note!("{:6.2} s {l}", started.elapsed().as_secs_f64())
    })
    .unwrap();
    let took = started.elapsed();
    // 1 GiB of mostly holes compresses to almost nothing.
    assert!(info.size_bytes < 8 * MIB, "{} bytes", info.size_bytes);
    let dest = dir.path().join("img");
    let started = Instant::now();
    read_bundle(&info.path, &dest, None).unwrap();
    note!("read_bundle: {:.2} s", started.elapsed().as_secs_f64());
    let meta = fs::metadata(dest.join(ROOTFS_FILE)).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    assert!(
        meta.blocks() * 512 < 64 * MIB,
        "{} allocated",
        meta.blocks() * 512
    );
    note!(
        "1 GiB image: bundle of {} KiB in {:.1} s",
        info.size_bytes >> 10,
        took.as_secs_f64()
    );
}

/// Runs real commands, except that `program` (when its first argument is `first_arg`,
/// if given) fails.
#[derive(Debug)]
struct FailingRunner {
    program: &'static str,
    first_arg: Option<&'static str>,
}

impl CommandRunner for FailingRunner {
    fn run(&self, program: &str, args: &[String]) -> Result<CommandOutput, SpawnError> {
        let hit = program == self.program
            && self
                .first_arg
                .is_none_or(|a| args.first().map(String::as_str) == Some(a));
        if hit {
            return Ok(CommandOutput {
                command: format!("{program} {}", args.join(" ")),
                code: Some(1),
                stdout: String::new(),
                stderr: format!("{program}: injected failure\n"),
            });
        }
        runner().run(program, args)
    }
}

#[test]
fn a_failure_leaves_no_output() {
    for (program, first_arg, needle) in [
        ("mkfs.ext4", None, "building the ext4 image"),
        // The special files' debugfs run and the metadata batch both start with -w.
        ("debugfs", Some("-w"), "injected failure"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let tars = rootfs_layers(dir.path());
        let req = request(dir.path(), tars, Some(64 * MIB));
        let work = req.work_dir.clone();
        let failing = FailingRunner { program, first_arg };
        let err = make_bundle(&failing, req, &mut |_| {}).unwrap_err();
        let text = banger_core::error::chain(&err);
        assert!(text.contains(needle), "{text}");
        assert!(text.contains("injected failure"), "{text}");
        assert!(!dir.path().join("out").exists(), "{program}: output left");
        assert_eq!(
            listing(&work),
            Vec::<String>::new(),
            "{program}: staging left"
        );
    }
    // A refused tar entry: nothing either.
    let dir = tempfile::tempdir().unwrap();
    let evil = dir.path().join("evil.tar");
    fs::write(
        &evil,
        tar_of(&[E {
            data: b"x",
            ..e("../../escape", EntryType::Regular, 0o644)
        }]),
    )
    .unwrap();
    let req = request(dir.path(), vec![evil], Some(64 * MIB));
    let work = req.work_dir.clone();
    let err = make_bundle(&runner(), req, &mut |_| {}).unwrap_err();
    assert!(matches!(err, ImageError::Entry { .. }), "{err}");
    assert!(!dir.path().join("out").exists());
    assert_eq!(listing(&work), Vec::<String>::new());
    assert!(!dir.path().join("escape").exists());
}

#[test]
fn make_bundle_refuses_a_bad_name_before_doing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(dir.path(), vec![dir.path().join("none.tar")], None);
    req.name = "../evil".to_string();
    let err = make_bundle(&runner(), req, &mut |_| {}).unwrap_err();
    assert!(matches!(err, ImageError::Name(_)), "{err}");
    assert_eq!(listing(&dir.path().join("work")), Vec::<String>::new());
}

fn valid_manifest_json() -> Vec<u8> {
    br#"{"name":"img","distro":"debian","arch":"x86_64","kernel_ref":"k","description":"d"}"#
        .to_vec()
}

/// A bundle member: name, type, data, link target.
type Member<'a> = (&'a str, EntryType, &'a [u8], &'a str);

/// Writes a hand-made bundle with `entries`.
fn handmade(path: &Path, entries: &[Member<'_>]) {
    let encoder = zstd::Encoder::new(File::create(path).unwrap(), 3).unwrap();
    let mut b = tar::Builder::new(encoder);
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap();
}

#[test]
fn read_bundle_refuses_anything_but_the_two_files() {
    let manifest = valid_manifest_json();
    let image = vec![0u8; 8192];
    let bad_name =
        br#"{"name":"../x","distro":"debian","arch":"x86_64","kernel_ref":"k","description":""}"#;
    let cases: Vec<(Vec<Member<'_>>, &str)> = vec![
        (
            vec![
                ("manifest.json", EntryType::Regular, &manifest, ""),
                ("rootfs.ext4", EntryType::Regular, &image, ""),
                ("extra.txt", EntryType::Regular, b"x", ""),
            ],
            "unexpected member \"extra.txt\"",
        ),
        (
            vec![
                ("manifest.json", EntryType::Regular, &manifest, ""),
                ("../rootfs.ext4", EntryType::Regular, &image, ""),
            ],
            "unexpected member \"../rootfs.ext4\"",
        ),
        (
            vec![
                ("manifest.json", EntryType::Regular, &manifest, ""),
                ("rootfs.ext4", EntryType::Symlink, b"", "/etc/shadow"),
            ],
            "is a Symlink entry",
        ),
        (
            vec![
                ("manifest.json", EntryType::Regular, &manifest, ""),
                ("rootfs.ext4", EntryType::Link, b"", "manifest.json"),
            ],
            "is a Link entry",
        ),
        (
            vec![("rootfs.ext4", EntryType::Regular, &image, "")],
            "no manifest.json",
        ),
        (
            vec![("manifest.json", EntryType::Regular, &manifest, "")],
            "no rootfs.ext4",
        ),
        (
            vec![
                ("manifest.json", EntryType::Regular, bad_name, ""),
                ("rootfs.ext4", EntryType::Regular, &image, ""),
            ],
            "image name \"../x\"",
        ),
        (
            vec![
                ("manifest.json", EntryType::Regular, b"{not json", ""),
                ("rootfs.ext4", EntryType::Regular, &image, ""),
            ],
            "manifest of",
        ),
    ];
    for (entries, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("b.tar.zst");
        handmade(&bundle, &entries);
        let dest = dir.path().join("dest");
        let err = read_bundle(&bundle, &dest, None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(needle), "{needle}: {text}");
        assert_eq!(listing(dir.path()), ["b.tar.zst"], "{needle}: left behind");
    }
    // "./" prefixes are fine, in any order.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("b.tar.zst");
    handmade(
        &bundle,
        &[
            ("./rootfs.ext4", EntryType::Regular, &image, ""),
            ("./manifest.json", EntryType::Regular, &manifest, ""),
        ],
    );
    let m = read_bundle(&bundle, &dir.path().join("ok"), None).unwrap();
    assert_eq!(m.name, "img");
    assert_eq!(fs::read(dir.path().join("ok/rootfs.ext4")).unwrap(), image);
    // An existing destination is refused.
    let err = read_bundle(&bundle, &dir.path().join("ok"), None).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[test]
fn read_bundle_checks_the_sha256_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("b.tar.zst");
    let image: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
    handmade(
        &bundle,
        &[
            (
                "manifest.json",
                EntryType::Regular,
                &valid_manifest_json(),
                "",
            ),
            ("rootfs.ext4", EntryType::Regular, &image, ""),
        ],
    );
    let good = sha256_file(&bundle).unwrap();
    let wrong = "0".repeat(64);
    let dest = dir.path().join("dest");
    let err = read_bundle(&bundle, &dest, Some(&wrong)).unwrap_err();
    match &err {
        ImageError::Sha256Mismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &good);
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(listing(dir.path()), ["b.tar.zst"]);
    assert!(matches!(
        read_bundle(&bundle, &dest, Some("abc")),
        Err(ImageError::Invalid { .. })
    ));

    // A truncated download: the digest explains the broken stream.
    let mut bytes = Vec::new();
    File::open(&bundle)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    let cut = dir.path().join("cut.tar.zst");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = read_bundle(&cut, &dest, Some(&good)).unwrap_err();
    assert!(matches!(err, ImageError::Sha256Mismatch { .. }), "{err}");
    let err = read_bundle(&cut, &dest, None).unwrap_err();
    assert!(matches!(err, ImageError::Bundle { .. }), "{err}");
    assert_eq!(listing(dir.path()), ["b.tar.zst", "cut.tar.zst"]);

    read_bundle(&bundle, &dest, Some(&good)).unwrap();
    assert_eq!(fs::read(dest.join(ROOTFS_FILE)).unwrap(), image);
}

#[test]
fn make_bundle_reads_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let tars = rootfs_layers(dir.path());
    let mut req = request(dir.path(), Vec::new(), Some(64 * MIB));
    req.modules_dir = None;
    req.rootfs_tars = vec![
        TarInput::Reader {
            name: "stdin".into(),
            reader: Box::new(Cursor::new(fs::read(&tars[0]).unwrap())),
        },
        TarInput::Path(tars[1].clone()),
    ];
    let info = make_bundle(&runner(), req, &mut |_| {}).unwrap();
    let dest = dir.path().join("img");
    read_bundle(&info.path, &dest, Some(&info.sha256)).unwrap();
    let image = dest.join(ROOTFS_FILE);
    assert_eq!(inode(&image, "/usr/bin/passwd").mode, 0o4755);
    assert!(!exists(&runner(), &image, MODULES_LOAD_PATH).unwrap());
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Set in the environment of the copy of this test that runs as `nobody`.
const AS_USER_DIR: &str = "BANGER_IMAGE_TEST_AS_USER_DIR";

/// Owners, setuid bits and device nodes must survive a build by an ordinary user: when
/// started as root, this test runs itself again as `nobody` (setpriv) in a directory that
/// user can write; otherwise it runs directly.
#[test]
fn make_bundle_as_non_root() {
    if let Some(dir) = std::env::var_os(AS_USER_DIR) {
        assert!(!is_root(), "the copy must not run as root");
        let info = bundle_round_trip(Path::new(&dir));
        // The bundle belongs to the user who built it.
        assert_eq!(
            fs::metadata(&info.path).unwrap().uid(),
            // SAFETY: getuid has no preconditions and cannot fail.
            unsafe { libc::getuid() }
        );
        return;
    }
    if !is_root() {
        let dir = tempfile::tempdir().unwrap();
        bundle_round_trip(dir.path());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args([
            "--exact",
            "make_bundle_as_non_root",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(AS_USER_DIR, dir.path())
        .env("TMPDIR", dir.path())
        .output()
        .expect("setpriv runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "as nobody: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}

/// A real Debian (`--variant=essential`, the fastest) bootstrapped with mmdebstrap and
/// bundled; needs network access to a Debian mirror, so only with
/// `BANGER_TEST_MMDEBSTRAP=1` (`BANGER_DEBIAN_MIRROR` picks the mirror).
#[test]
fn real_mmdebstrap_bundle() {
    if std::env::var("BANGER_TEST_MMDEBSTRAP").as_deref() != Ok("1") {
        note!("skipped: set BANGER_TEST_MMDEBSTRAP=1");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("debian.tar");
    let spec = DebianBootstrap {
        variant: Variant::Essential,
        packages: Vec::new(),
        mirror: std::env::var("BANGER_DEBIAN_MIRROR").ok(),
        ..DebianBootstrap::new("bookworm")
    };
    let started = Instant::now();
    let mut log = |l: &str| note!("  {:6.1} s {l}", started.elapsed().as_secs_f64());
    debian_rootfs_tar(&runner(), &spec, &tar, &mut log).unwrap();
    let bootstrap = started.elapsed();
    assert_eq!(listing(dir.path()), ["debian.tar"]);

    let mut req = request(dir.path(), vec![tar], None);
    req.modules_dir = None;
    let started = Instant::now();
    let info = make_bundle(&runner(), req, &mut log).unwrap();
    let bundling = started.elapsed();
    let dest = dir.path().join("img");
    read_bundle(&info.path, &dest, Some(&info.sha256)).unwrap();
    let image = dest.join(ROOTFS_FILE);
    let hostname = read_file(&runner(), &image, "/etc/hostname", scratch()).unwrap();
    assert_eq!(hostname, b"localhost\n");
    assert!(!exists(&runner(), &image, "/etc/resolv.conf").unwrap());
    let su = inode(&image, "/usr/bin/su");
    assert_eq!((su.mode, su.uid), (0o4755, 0));
    assert_eq!(inode(&image, AGENT_PATH).mode, 0o755);
    let fsck = run("e2fsck", &["-fn", &image.to_string_lossy()]);
    assert_eq!(fsck.code, Some(0), "{}\n{}", fsck.stdout, fsck.stderr);
    note!(
        "mmdebstrap: {:.1} s, tar {} MiB; make_bundle: {:.1} s, bundle {} MiB",
        bootstrap.as_secs_f64(),
        fs::metadata(dir.path().join("debian.tar"))
            .map(|m| m.len() >> 20)
            .unwrap_or(0),
        bundling.as_secs_f64(),
        info.size_bytes >> 20
    );
}

/// The adversarial corpus for rootfs tars: names crafted to turn a debugfs command line
/// into a shell command (`!` after a line split, lines starting with `!` or `#`). Every
/// case asserts that no shell command ran (its canary file is absent), that nothing is
/// left (no image, nothing in the work directory) when the build is refused, and that
/// the error names the entry.
mod adversarial_tar {
    use super::*;
    use banger_image::bundle::{RootfsOptions, build_rootfs};

    /// A tar of `(path, type, link target)` entries with GNU long names.
    fn long_tar(entries: &[(&str, EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(0);
            if kind.is_symlink() {
                b.append_link(&mut h, path, link).unwrap();
            } else {
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    /// The file a `!touch` payload of these cases would create (relative: in the
    /// directory debugfs runs in, the test's).
    fn canary_name() -> String {
        format!("banger-pwned-{}", std::process::id())
    }

    fn canary_absent(dir: &Path) {
        let name = canary_name();
        for place in [std::env::current_dir().unwrap(), dir.to_path_buf()] {
            assert!(
                !place.join(&name).exists(),
                "a shell command ran in {}",
                place.display()
            );
        }
    }

    /// `n` double quotes split into directory components of at most 250 bytes.
    fn quotes_path(n: usize) -> String {
        let mut parts = Vec::new();
        let mut left = n;
        while left > 0 {
            let k = left.min(250);
            parts.push("\"".repeat(k));
            left -= k;
        }
        parts.join("/")
    }

    /// Builds a 64 MiB rootfs from `tar` in a fresh directory; returns the result, the
    /// directory, and the image path.
    fn build(
        tar: Vec<u8>,
    ) -> (
        Result<banger_image::bundle::RootfsReport, ImageError>,
        tempfile::TempDir,
        PathBuf,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        fs::create_dir(&work).unwrap();
        let opts = RootfsOptions {
            size: Some(64 * MIB),
            agent_bin: agent(dir.path()),
            modules_dir: None,
            init: None,
            max_tree_bytes: None,
        };
        let image = dir.path().join("rootfs.ext4");
        let result = build_rootfs(
            &runner(),
            vec![TarInput::Reader {
                name: "crafted.tar".into(),
                reader: Box::new(Cursor::new(tar)),
            }],
            &opts,
            &work,
            &image,
            &mut |_| {},
        );
        (result, dir, image)
    }

    fn refused(tar: Vec<u8>, expected: &[&str]) {
        let (result, dir, image) = build(tar);
        let err = result.expect_err("the build must be refused");
        let text = banger_core::error::chain(&err);
        for fragment in expected {
            assert!(text.contains(fragment), "expected {fragment:?} in: {text}");
        }
        assert!(!image.exists(), "an image was left");
        assert_eq!(
            listing(&dir.path().join("work")),
            Vec::<String>::new(),
            "work dir left"
        );
        canary_absent(dir.path());
    }

    #[test]
    fn adversarial_tar_long_path_of_quotes_with_a_bang() {
        // 3400 quotes double to 6800 bytes on a debugfs line; the last component is a
        // shell command that would run if a line were ever split just before it.
        let dirs = quotes_path(3400);
        let file = format!("{dirs}/!touch {}", canary_name());
        let tar = long_tar(&[(&file, EntryType::Regular, "")]);
        // Refused at its first directory already, which the error names.
        refused(
            tar,
            &[
                "re-applying owners and modes: invalid guest path \"/\\\"",
                "its quoted form is 3509 bytes, more than the 3072",
            ],
        );
    }

    #[test]
    fn adversarial_tar_long_path_of_quotes_for_a_special_file() {
        // The fifo goes through banger-image's own mknod script (`cd DIR`).
        let dirs = quotes_path(3200);
        let fifo = format!("{dirs}/fifo");
        let tar = long_tar(&[(&fifo, EntryType::Fifo, "")]);
        refused(
            tar,
            &[
                "making special files: invalid directory \"/\\\"",
                "bytes, more than the 3072",
            ],
        );
    }

    #[test]
    fn adversarial_tar_names_with_newlines_are_skipped() {
        let evil = format!("x\n!touch {}", canary_name());
        let tar = long_tar(&[
            (&evil, EntryType::Regular, ""),
            ("dir\n#/", EntryType::Directory, ""),
            ("ok", EntryType::Regular, ""),
        ]);
        let (result, dir, image) = build(tar);
        let report = result.unwrap();
        assert_eq!(
            report
                .skipped
                .get("name contains a newline or a carriage return"),
            Some(&2),
            "{:?}",
            report.skipped
        );
        assert!(exists(&runner(), &image, "/ok").unwrap());
        assert!(!exists(&runner(), &image, "/x").unwrap());
        canary_absent(dir.path());
    }

    #[test]
    fn adversarial_tar_names_starting_with_bang_and_hash_are_kept_verbatim() {
        let bang = format!("!touch {}", canary_name());
        let tar = long_tar(&[
            (&bang, EntryType::Regular, ""),
            ("#comment", EntryType::Regular, ""),
            ("#dir/", EntryType::Directory, ""),
            ("#dir/!x", EntryType::Fifo, ""),
            ("\"!quoted\"", EntryType::Regular, ""),
            ("!link", EntryType::Symlink, "!target"),
        ]);
        let (result, dir, image) = build(tar);
        result.unwrap();
        for path in [
            format!("/{bang}"),
            "/#comment".to_string(),
            "/#dir".to_string(),
            "/\"!quoted\"".to_string(),
        ] {
            assert!(exists(&runner(), &image, &path).unwrap(), "{path} missing");
        }
        assert_eq!(inode(&image, "/#dir/!x").kind, FileKind::Fifo);
        assert_eq!(inode(&image, "/!link").kind, FileKind::Symlink);
        canary_absent(dir.path());
    }
}

/// The adversarial corpus for bundles (`image import`): members that try to escape the
/// unpack directory (`..`, absolute paths, GNU long names, pax paths), links, extra,
/// missing and repeated members, and manifests with names that would become paths. The
/// member names never choose a host path (the two files are written to fixed names), so
/// every case asserts that the canary next to the destination and the decoy tree are
/// unchanged, that no destination or staging directory is left, and that the error
/// names what is wrong.
mod adversarial_bundle {
    use super::*;

    const CANARY: &[u8] = b"canary: must never change\n";

    /// A test directory holding a canary file and a decoy tree beside the destination.
    struct Scene {
        dir: tempfile::TempDir,
    }

    impl Scene {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join("canary"), CANARY).unwrap();
            fs::create_dir_all(dir.path().join("decoy/etc")).unwrap();
            fs::write(dir.path().join("decoy/etc/shadow"), b"root:*:1::::::\n").unwrap();
            fs::write(dir.path().join("decoy/rootfs.ext4"), b"decoy image").unwrap();
            Scene { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Every file under the test directory with its contents (symlinks by target).
        fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
            fn walk(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
                for e in fs::read_dir(dir).unwrap() {
                    let p = e.unwrap().path();
                    let m = fs::symlink_metadata(&p).unwrap();
                    if m.file_type().is_symlink() {
                        let t = fs::read_link(&p).unwrap();
                        out.push((
                            p.display().to_string(),
                            t.as_os_str().as_encoded_bytes().to_vec(),
                        ));
                    } else if m.is_dir() {
                        out.push((p.display().to_string(), Vec::new()));
                        walk(&p, out);
                    } else {
                        out.push((p.display().to_string(), fs::read(&p).unwrap()));
                    }
                }
            }
            let mut out = Vec::new();
            walk(self.dir.path(), &mut out);
            out.sort();
            out
        }

        /// Writes the bundle `entries`, reads it into `dest` and expects a refusal
        /// containing `expected`; then checks that nothing changed and nothing is left.
        fn refused(&self, entries: &[Member<'_>], expected: &str) {
            let bundle = self.path("b.tar.zst");
            handmade(&bundle, entries);
            let before = self.snapshot();
            let dest = self.path("dest");
            let err = read_bundle(&bundle, &dest, None).expect_err(expected);
            let text = err.to_string();
            assert!(
                matches!(err, ImageError::Bundle { .. } | ImageError::Manifest { .. }),
                "{expected}: {text}"
            );
            assert!(text.contains(expected), "expected {expected:?} in: {text}");
            assert!(text.contains("b.tar.zst"), "the bundle is named: {text}");
            assert_eq!(
                self.snapshot(),
                before,
                "{expected}: something changed or was left"
            );
            assert_eq!(fs::read(self.path("canary")).unwrap(), CANARY);
            assert!(!dest.exists(), "{expected}: destination left");
            fs::remove_file(&bundle).unwrap();
        }
    }

    fn manifest_named(name: &str) -> Vec<u8> {
        format!(
            r#"{{"name":{},"distro":"debian","arch":"x86_64","kernel_ref":"k","description":"d"}}"#,
            serde_json::to_string(name).unwrap()
        )
        .into_bytes()
    }

    const IMAGE: &[u8] = &[0x55; 8192];

    #[test]
    fn adversarial_bundle_member_climbing_out_with_dot_dot() {
        let s = Scene::new();
        let m = valid_manifest_json();
        for name in [
            "../canary",
            "./../canary",
            "rootfs.ext4/../../canary",
            "decoy/../../canary",
        ] {
            s.refused(
                &[
                    ("manifest.json", EntryType::Regular, &m, ""),
                    (name, EntryType::Regular, b"overwritten\n", ""),
                    ("rootfs.ext4", EntryType::Regular, IMAGE, ""),
                ],
                &format!("unexpected member {name:?}"),
            );
        }
    }

    #[test]
    fn adversarial_bundle_member_with_an_absolute_path() {
        let s = Scene::new();
        let m = valid_manifest_json();
        let target = s.path("canary").display().to_string();
        s.refused(
            &[
                ("manifest.json", EntryType::Regular, &m, ""),
                (&target, EntryType::Regular, b"overwritten\n", ""),
            ],
            &format!("unexpected member {target:?}"),
        );
        s.refused(
            &[
                ("manifest.json", EntryType::Regular, &m, ""),
                ("/rootfs.ext4", EntryType::Regular, IMAGE, ""),
            ],
            "unexpected member \"/rootfs.ext4\"",
        );
    }

    #[test]
    fn adversarial_bundle_long_name_and_pax_path_climbing_out() {
        let s = Scene::new();
        let m = valid_manifest_json();
        // A GNU long name (longer than the 100-byte header field) replaces the header's
        // innocent-looking name.
        let long = format!("{}canary\0", "../".repeat(40));
        s.refused(
            &[
                ("manifest.json", EntryType::Regular, &m, ""),
                ("././@LongLink", EntryType::GNULongName, long.as_bytes(), ""),
                ("rootfs.ext4", EntryType::Regular, b"overwritten\n", ""),
            ],
            "unexpected member \"../../../",
        );
        // A pax `path` record does the same.
        let record = "path=../canary\n";
        let pax = format!("{} {record}", record.len() + 3);
        s.refused(
            &[
                ("manifest.json", EntryType::Regular, &m, ""),
                ("PaxHeader", EntryType::XHeader, pax.as_bytes(), ""),
                ("rootfs.ext4", EntryType::Regular, b"overwritten\n", ""),
            ],
            "unexpected member \"../canary\"",
        );
    }

    #[test]
    fn adversarial_bundle_symlink_then_same_named_file() {
        // The classic: a symlink named like a member, pointing at the canary, then the
        // member itself, which a naive extractor would write through the symlink.
        let s = Scene::new();
        let target = s.path("canary").display().to_string();
        for (first, second) in [
            ("rootfs.ext4", "rootfs.ext4"),
            ("manifest.json", "manifest.json"),
        ] {
            s.refused(
                &[
                    (first, EntryType::Symlink, b"", &target),
                    (second, EntryType::Regular, b"overwritten\n", ""),
                ],
                &format!("member {first:?} is a Symlink entry"),
            );
        }
        // A symlinked directory member then a file below it.
        s.refused(
            &[
                (
                    "d",
                    EntryType::Symlink,
                    b"",
                    &s.dir.path().display().to_string(),
                ),
                ("d/canary", EntryType::Regular, b"overwritten\n", ""),
            ],
            "member \"d\" is a Symlink entry",
        );
    }

    #[test]
    fn adversarial_bundle_hard_link_device_fifo_and_directory_members() {
        let s = Scene::new();
        let m = valid_manifest_json();
        let target = s.path("canary").display().to_string();
        for (kind, shown) in [
            (EntryType::Link, "Link"),
            (EntryType::Char, "Char"),
            (EntryType::Block, "Block"),
            (EntryType::Fifo, "Fifo"),
            (EntryType::Directory, "Directory"),
        ] {
            s.refused(
                &[
                    ("manifest.json", EntryType::Regular, &m, ""),
                    ("rootfs.ext4", kind, b"", &target),
                ],
                &format!("member \"rootfs.ext4\" is a {shown} entry"),
            );
        }
    }

    #[test]
    fn adversarial_bundle_extra_missing_and_repeated_members() {
        let s = Scene::new();
        let m = valid_manifest_json();
        let cases: Vec<(Vec<Member<'_>>, &str)> = vec![
            (
                vec![
                    ("manifest.json", EntryType::Regular, &m, ""),
                    ("rootfs.ext4", EntryType::Regular, IMAGE, ""),
                    ("canary", EntryType::Regular, b"overwritten\n", ""),
                ],
                "unexpected member \"canary\"",
            ),
            (
                vec![("rootfs.ext4", EntryType::Regular, IMAGE, "")],
                "no manifest.json",
            ),
            (
                vec![("manifest.json", EntryType::Regular, &m, "")],
                "no rootfs.ext4",
            ),
            (vec![], "no manifest.json"),
            (
                vec![
                    ("manifest.json", EntryType::Regular, &m, ""),
                    ("rootfs.ext4", EntryType::Regular, IMAGE, ""),
                    ("./rootfs.ext4", EntryType::Regular, b"second", ""),
                ],
                "rootfs.ext4 appears twice",
            ),
            (
                vec![
                    ("manifest.json", EntryType::Regular, &m, ""),
                    ("manifest.json", EntryType::Regular, &m, ""),
                    ("rootfs.ext4", EntryType::Regular, IMAGE, ""),
                ],
                "manifest.json appears twice",
            ),
        ];
        for (entries, expected) in cases {
            s.refused(&entries, expected);
        }
    }

    #[test]
    fn adversarial_bundle_manifest_names_that_would_be_paths() {
        let s = Scene::new();
        for (name, expected) in [
            ("../x", "image name \"../x\""),
            ("../../canary", "image name \"../../canary\""),
            ("a/b", "image name \"a/b\""),
            (".hidden", "image name \".hidden\""),
            ("..", "image name \"..\""),
            ("", "image name must not be empty"),
            ("x\n!id", "image name \"x\\n!id\""),
            ("\u{1b}[2Jx", "image name \"\\u{1b}[2Jx\""),
        ] {
            let m = manifest_named(name);
            s.refused(
                &[
                    ("manifest.json", EntryType::Regular, &m, ""),
                    ("rootfs.ext4", EntryType::Regular, IMAGE, ""),
                ],
                expected,
            );
        }
        // Not a manifest at all, and one too large to be read.
        let huge = vec![b' '; (1 << 20) + 1];
        s.refused(
            &[
                ("manifest.json", EntryType::Regular, b"[1,2]", ""),
                ("rootfs.ext4", EntryType::Regular, IMAGE, ""),
            ],
            "manifest of",
        );
        s.refused(
            &[
                ("manifest.json", EntryType::Regular, &huge, ""),
                ("rootfs.ext4", EntryType::Regular, IMAGE, ""),
            ],
            "the limit is 1048576",
        );
    }

    #[test]
    fn adversarial_bundle_control_a_good_bundle_is_read() {
        // The cases above fail for their crafted part: the same scene with plain
        // members works, and still touches nothing but the destination.
        let s = Scene::new();
        let bundle = s.path("b.tar.zst");
        handmade(
            &bundle,
            &[
                (
                    "manifest.json",
                    EntryType::Regular,
                    &valid_manifest_json(),
                    "",
                ),
                ("rootfs.ext4", EntryType::Regular, IMAGE, ""),
            ],
        );
        read_bundle(&bundle, &s.path("dest"), None).unwrap();
        assert_eq!(fs::read(s.path("dest/rootfs.ext4")).unwrap(), IMAGE);
        assert_eq!(fs::read(s.path("canary")).unwrap(), CANARY);
        assert_eq!(
            listing(s.dir.path()),
            ["b.tar.zst", "canary", "decoy", "dest"]
        );
    }
}
