//! The adversarial corpus for files handed to `image register` and `image import`: each
//! bad `--rootfs`, `--kernel`, `--initrd` or bundle is refused at once as a bad request
//! naming the file, and leaves no image row, no image directory and no temporary file;
//! the files it pointed at are unchanged. Also: the daemon's scratch directory.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::Home;

fn mkfs(tree: &Path, image: &Path, features: &[&str]) {
    let mut c = crate::common::host_tool("mkfs.ext4");
    c.args(["-q", "-F"])
        .args(features)
        .arg("-d")
        .arg(tree)
        .arg(image)
        .arg("32M");
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Replaces the only occurrence of `from` in `file` by `to` (same length).
fn patch(file: &Path, from: &[u8], to: &[u8]) {
    let mut bytes = std::fs::read(file).unwrap();
    let hits: Vec<usize> = bytes
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "{from:?}");
    bytes[hits[0]..hits[0] + to.len()].copy_from_slice(to);
    std::fs::write(file, bytes).unwrap();
}

/// The inputs of the cases: a good rootfs and kernel, and bad ones.
struct Inputs {
    dir: PathBuf,
}

impl Inputs {
    fn new(home: &Home) -> Self {
        let dir = home.path().join("inputs");
        std::fs::create_dir_all(dir.join("tree/root")).unwrap();
        std::fs::write(dir.join("tree/root/.bashrc"), "# ok\n").unwrap();
        mkfs(&dir.join("tree"), &dir.join("good.ext4"), &[]);
        std::fs::write(dir.join("vmlinux"), b"\x7fELF fake kernel").unwrap();
        let random: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(dir.join("random.bin"), random).unwrap();
        std::fs::write(dir.join("empty"), b"").unwrap();
        symlink(dir.join("good.ext4"), dir.join("link.ext4")).unwrap();
        symlink(dir.join("vmlinux"), dir.join("link-vmlinux")).unwrap();
        let fifo = dir.join("fifo");
        let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(st.success());
        // /root holds an entry named ../../ES: e2fsck refuses the image.
        std::fs::create_dir_all(dir.join("evil/root")).unwrap();
        std::fs::write(dir.join("evil/root/XQZPAT01"), b"escaped\n").unwrap();
        let evil = dir.join("evil.ext4");
        mkfs(
            &dir.join("evil"),
            &evil,
            &["-O", "^metadata_csum,^dir_index"],
        );
        patch(&evil, b"XQZPAT01", b"../../ES");
        Inputs { dir }
    }

    fn p(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Every input file's bytes (symlinks by target), to check nothing changed.
    fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let meta = std::fs::symlink_metadata(&p).unwrap();
                let data = if meta.file_type().is_symlink() {
                    std::fs::read_link(&p)
                        .unwrap()
                        .display()
                        .to_string()
                        .into_bytes()
                } else if meta.is_file() {
                    std::fs::read(&p).unwrap()
                } else {
                    Vec::new()
                };
                (p.display().to_string(), data)
            })
            .collect();
        out.sort();
        out
    }
}

/// No image row, nothing under `state/images` (no image or staging directory) and
/// nothing in the scratch directory; `case` names the case in a failure.
fn nothing_left(home: &Home, case: &str) {
    assert_eq!(home.ok(&["image", "list", "--json"]).trim(), "[]", "{case}");
    let images: Vec<_> = std::fs::read_dir(home.path().join("state/images"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(images.is_empty(), "{case}: left {images:?}");
    let tmp: Vec<_> = std::fs::read_dir(home.path().join("state/tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(tmp.is_empty(), "{case}: scratch left {tmp:?}");
}

/// `banger ARGS` fails as a bad request whose message contains `expected`, and nothing
/// is left: no image, no image directory, nothing in the scratch directory.
fn refused(home: &Home, inputs: &Inputs, args: &[&str], expected: &str) {
    let before = inputs.snapshot();
    let out = home.run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    // (A note about a replaced daemon may come first.)
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("banger: bad request: ")),
        "{args:?}: not a bad request: {stderr}"
    );
    assert!(
        stderr.contains(expected),
        "{args:?}: expected {expected:?} in {stderr}"
    );
    nothing_left(home, &format!("{args:?}"));
    assert_eq!(inputs.snapshot(), before, "{args:?}: an input changed");
}

fn register<'a>(rootfs: &'a str, kernel: &'a str) -> Vec<&'a str> {
    vec![
        "image", "register", "--name", "bad", "--rootfs", rootfs, "--kernel", kernel,
    ]
}

#[test]
fn adversarial_bad_rootfs_inputs_are_refused() {
    let home = Home::new();
    let i = Inputs::new(&home);
    let k = i.p("vmlinux");
    for (rootfs, expected) in [
        (i.p("random.bin"), "is not a clean ext4 filesystem"),
        (i.p("empty"), "is empty"),
        (
            "/proc/self/environ".to_string(),
            "is a file of /proc or /sys",
        ),
        ("/proc/kcore".to_string(), "/proc/kcore"),
        (i.p("link.ext4"), "is a symlink"),
        (i.dir.display().to_string(), "is a directory"),
        ("/dev/null".to_string(), "is a device"),
        (i.p("fifo"), "is a fifo"),
        (i.p("evil.ext4"), "has illegal characters in its name"),
        (i.p("missing.ext4"), "No such file or directory"),
    ] {
        refused(&home, &i, &register(&rootfs, &k), expected);
    }
}

#[test]
fn adversarial_bad_kernel_and_initrd_inputs_are_refused() {
    let home = Home::new();
    let i = Inputs::new(&home);
    let r = i.p("good.ext4");
    for (kernel, expected) in [
        (
            i.p("random.bin"),
            "is neither an ELF vmlinux nor a bzImage kernel",
        ),
        (i.p("empty"), "is empty"),
        (
            "/proc/self/environ".to_string(),
            "is a file of /proc or /sys",
        ),
        (i.p("link-vmlinux"), "is a symlink"),
        (i.dir.display().to_string(), "is a directory"),
        ("/dev/zero".to_string(), "is a device"),
    ] {
        refused(&home, &i, &register(&r, &kernel), expected);
    }
    let k = i.p("vmlinux");
    let mut args = register(&r, &k);
    args.extend(["--initrd", "/proc/self/environ"]);
    refused(
        &home,
        &i,
        &args,
        "initrd /proc/self/environ: is a file of /proc or /sys",
    );
    // The good inputs do register: the refusals above were about the bad file.
    home.ok(&register(&r, &k));
}

/// Writes a bundle (`manifest.json` then `rootfs.ext4`, zstd) holding `rootfs`.
fn bundle_of(dir: &Path, name: &str, rootfs: &Path) -> PathBuf {
    let stage = dir.join(format!("{name}.stage"));
    std::fs::create_dir_all(&stage).unwrap();
    std::fs::write(
        stage.join("manifest.json"),
        br#"{"name":"imported","distro":"debian","arch":"x86_64","kernel_ref":"k","description":"d"}"#,
    )
    .unwrap();
    std::fs::copy(rootfs, stage.join("rootfs.ext4")).unwrap();
    let out = dir.join(format!("{name}.tar.zst"));
    let st = Command::new("tar")
        .arg("--zstd")
        .arg("-C")
        .arg(&stage)
        .arg("-cf")
        .arg(&out)
        .args(["manifest.json", "rootfs.ext4"])
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::remove_dir_all(&stage).unwrap();
    out
}

#[test]
fn adversarial_bad_bundles_are_refused() {
    let home = Home::new();
    let i = Inputs::new(&home);
    let random = bundle_of(&i.dir, "random", &i.dir.join("random.bin"));
    let evil = bundle_of(&i.dir, "evil", &i.dir.join("evil.ext4"));
    symlink(&random, i.dir.join("link.tar.zst")).unwrap();
    for (bundle, expected) in [
        (
            random.display().to_string(),
            "is not a clean ext4 filesystem",
        ),
        (
            evil.display().to_string(),
            "has illegal characters in its name",
        ),
        (
            "/proc/self/environ".to_string(),
            "is a file of /proc or /sys",
        ),
        (i.p("link.tar.zst"), "is a symlink"),
        (i.p("empty"), "is empty"),
    ] {
        refused(&home, &i, &["image", "import", &bundle], expected);
    }
}

/// A bundle whose members are `members` (name in the archive, file in `dir`), packed by
/// tar with `-P` so names climbing out with `..` or absolute ones are kept as written.
fn crafted_bundle(dir: &Path, name: &str, members: &[(&str, &str)]) -> PathBuf {
    let out = dir.join(format!("{name}.tar.zst"));
    let mut c = Command::new("tar");
    c.args(["-P", "--zstd", "-C"]).arg(dir).arg("-cf").arg(&out);
    for (inside, file) in members {
        c.arg(format!("--transform=s,^{file}$,{inside},"));
    }
    c.args(members.iter().map(|(_, file)| *file));
    let st = c.status().unwrap();
    assert!(st.success());
    out
}

#[test]
fn adversarial_crafted_bundles_are_refused_through_the_daemon() {
    // The member names never choose a host path: each bundle is refused, the canary
    // beside the images directory and every input are unchanged, and nothing is left
    // (row, image directory, staging directory, scratch file).
    let home = Home::new();
    let i = Inputs::new(&home);
    let canary = home.path().join("state/canary");
    std::fs::create_dir_all(home.path().join("state")).unwrap();
    std::fs::write(&canary, b"canary\n").unwrap();
    std::fs::write(
        i.dir.join("manifest.json"),
        br#"{"name":"imported","distro":"debian","arch":"x86_64","kernel_ref":"k","description":"d"}"#,
    )
    .unwrap();
    std::fs::write(
        i.dir.join("bad-name.json"),
        br#"{"name":"../x","distro":"debian","arch":"x86_64","kernel_ref":"k","description":"d"}"#,
    )
    .unwrap();
    let abs = canary.display().to_string();
    let cases: Vec<(PathBuf, String)> = vec![
        (
            crafted_bundle(
                &i.dir,
                "dotdot",
                &[
                    ("manifest.json", "manifest.json"),
                    ("../../canary", "good.ext4"),
                ],
            ),
            "unexpected member \"../../canary\"".to_string(),
        ),
        (
            crafted_bundle(
                &i.dir,
                "absolute",
                &[("manifest.json", "manifest.json"), (&abs, "good.ext4")],
            ),
            format!("unexpected member {abs:?}"),
        ),
        (
            crafted_bundle(
                &i.dir,
                "symlink",
                &[
                    ("manifest.json", "manifest.json"),
                    ("rootfs.ext4", "link.ext4"),
                ],
            ),
            "member \"rootfs.ext4\" is a Symlink entry".to_string(),
        ),
        (
            crafted_bundle(&i.dir, "missing", &[("manifest.json", "manifest.json")]),
            "no rootfs.ext4".to_string(),
        ),
        (
            crafted_bundle(
                &i.dir,
                "extra",
                &[
                    ("manifest.json", "manifest.json"),
                    ("rootfs.ext4", "good.ext4"),
                    ("extra", "vmlinux"),
                ],
            ),
            "unexpected member \"extra\"".to_string(),
        ),
        (
            crafted_bundle(
                &i.dir,
                "badname",
                &[
                    ("manifest.json", "bad-name.json"),
                    ("rootfs.ext4", "good.ext4"),
                ],
            ),
            "image name \"../x\"".to_string(),
        ),
    ];
    for (bundle, expected) in cases {
        let args = ["image", "import", bundle.to_str().unwrap()];
        let before = i.snapshot();
        let out = home.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{expected}: {stderr}");
        assert!(
            stderr.contains(&expected),
            "expected {expected:?} in {stderr}"
        );
        assert_eq!(std::fs::read(&canary).unwrap(), b"canary\n", "{expected}");
        nothing_left(&home, &expected);
        assert_eq!(i.snapshot(), before, "{expected}: an input changed");
    }
    // The same members, plainly named, import (with the kernel the manifest names).
    let kpkg = home.path().join("kpkg");
    std::fs::create_dir_all(kpkg.join("boot")).unwrap();
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(4096, 0);
    std::fs::write(kpkg.join("boot/vmlinux-6.9.1-test"), &elf).unwrap();
    home.ok(&["kernel", "import", "k", "--from", kpkg.to_str().unwrap()]);
    let good = crafted_bundle(
        &i.dir,
        "good",
        &[
            ("manifest.json", "manifest.json"),
            ("rootfs.ext4", "good.ext4"),
        ],
    );
    home.ok(&["image", "import", good.to_str().unwrap()]);
    assert_eq!(std::fs::read(&canary).unwrap(), b"canary\n");
    assert!(home.ok(&["image", "list"]).contains("imported"));
}

#[test]
fn scratch_dir_is_private_and_emptied_at_start() {
    let home = Home::new();
    home.ok(&["daemon", "status"]);
    let tmp = home.path().join("state/tmp");
    let mode = std::fs::metadata(&tmp).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    home.ok(&["daemon", "stop"]);
    // What a SIGKILLed daemon would leave.
    std::fs::create_dir(tmp.join("banger-debugfs-left")).unwrap();
    std::fs::write(tmp.join("banger-debugfs-left/commands"), "stat \"/\"\n").unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    home.ok(&["daemon", "status"]);
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    let mode = std::fs::metadata(&tmp).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}
