//! Integration tests with the real tools (`mkfs.ext4`, `debugfs`, `e2fsck`, `resize2fs`,
//! `dumpe2fs`): images are small (64 MiB) plain files in temporary directories, nothing is
//! mounted. `work_seed_as_non_root` re-runs itself as `nobody` when started as root, so the
//! unprivileged path is exercised here too.

use std::fs::{self, File};
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use banger_core::runner::{CommandRunner, SystemRunner};
use banger_disk::guest::FSTAB_LINE;
use banger_disk::{
    CloneKind, Debugfs, DiskError, FileKind, GuestConfig, OwnedFile, authorize_ssh_key, clone_file,
    clone_work_disk, exists, grow, list_dir, make_work_seed, mkfs_from_dir, read_file,
    read_optional_file, stat, write_guest_config, write_private_files,
};

const MIB: u64 = 1 << 20;

fn runner() -> SystemRunner {
    SystemRunner::new()
}

/// The scratch directory handed to the library by tests that do not check it.
fn scratch() -> &'static Path {
    static DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().unwrap());
    DIR.path()
}

/// Builds a 64 MiB ext4 image `name` in `dir` from `tree`.
fn image_from(dir: &Path, name: &str, tree: &Path) -> PathBuf {
    let image = dir.join(name);
    mkfs_from_dir(&runner(), tree, &image, 64 * MIB, "test").unwrap();
    image
}

/// Builds a 64 MiB ext4 image from an empty tree.
fn empty_image(dir: &Path, name: &str) -> PathBuf {
    let tree = dir.join(format!("{name}.tree"));
    fs::create_dir(&tree).unwrap();
    image_from(dir, name, &tree)
}

fn run(program: &str, args: &[&str]) -> banger_core::runner::CommandOutput {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    runner().run(program, &args).unwrap()
}

fn read_text(image: &Path, path: &str) -> String {
    String::from_utf8(read_file(&runner(), image, path, scratch()).unwrap()).unwrap()
}

/// `e2fsck -fn` exits 0 on a clean filesystem.
fn assert_fsck_clean(image: &Path) {
    let out = run("e2fsck", &["-fn", &image.to_string_lossy()]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
}

/// Filesystem size in bytes from `dumpe2fs -h`.
fn fs_bytes(image: &Path) -> u64 {
    let out = run("dumpe2fs", &["-h", &image.to_string_lossy()]);
    assert!(out.success(), "{}", out.stderr);
    let field = |name: &str| -> u64 {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in dumpe2fs output"))
            .trim()
            .parse()
            .unwrap()
    };
    field("Block count:") * field("Block size:")
}

fn same_contents(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

#[test]
fn clone_file_copies_a_sparse_gib_without_zero_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let dst = dir.path().join("dst.img");
    let len = 1 << 30;
    let f = File::create(&src).unwrap();
    f.set_len(len).unwrap();
    f.write_all_at(&[0xab; 4096], 0).unwrap();
    let pattern: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8 + 1).collect();
    f.write_all_at(&pattern, 300 * MIB).unwrap();
    // Zeros written as data: allocated in the source, never written to the copy.
    f.write_all_at(&vec![0u8; MIB as usize], 500 * MIB).unwrap();
    f.write_all_at(&[0x5a; 4096], len - 4096).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert!(
        fs::metadata(&src).unwrap().blocks() * 512 >= MIB,
        "zeros are allocated in the source"
    );

    let kind = clone_file(&src, &dst).unwrap();
    assert!(same_contents(&src, &dst), "copy differs");
    let meta = fs::metadata(&dst).unwrap();
    assert_eq!(meta.len(), len);
    assert!(!dir.path().join("dst.img.tmp").exists());
    match kind {
        CloneKind::Sparse => {
            // Data: 4 KiB + 100 KiB + 4 KiB; allow a few blocks of extent metadata.
            let needed = (4 + 100 + 4) * 1024;
            let allocated = meta.blocks() * 512;
            assert!(
                allocated <= needed + 16 * 1024,
                "allocated {allocated} bytes, data needs {needed}"
            );
        }
        // A shared extent is accounted to both files: nothing to measure.
        CloneKind::Reflink => {
            #[allow(clippy::print_stderr, reason = "says why a check was skipped")]
            {
                eprintln!("reflink supported here; allocation not checked");
            }
        }
    }

    // Replacing an existing destination works, and a missing source leaves it alone.
    fs::write(&dst, b"old").unwrap();
    clone_file(&src, &dst).unwrap();
    assert_eq!(fs::metadata(&dst).unwrap().len(), len);
    let err = clone_file(&dir.path().join("missing"), &dst).unwrap_err();
    assert!(matches!(err, DiskError::Io { op: "open", .. }), "{err}");
    assert_eq!(fs::metadata(&dst).unwrap().len(), len);
    assert!(!dir.path().join("dst.img.tmp").exists());
}

#[test]
fn mkfs_from_dir_keeps_files_dirs_symlinks_and_setuid() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    fs::write(tree.join("hello.txt"), b"hello world\n").unwrap();
    fs::write(tree.join("sub/deeper/data.bin"), [0u8, 1, 2, 255, 0, 10]).unwrap();
    symlink("hello.txt", tree.join("link")).unwrap();
    fs::write(tree.join("suid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(tree.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    let image = image_from(dir.path(), "rootfs.ext4", &tree);
    let r = runner();

    assert_eq!(fs::metadata(&image).unwrap().len(), 64 * MIB);
    assert_eq!(read_text(&image, "/hello.txt"), "hello world\n");
    assert_eq!(
        read_file(&r, &image, "/sub/deeper/data.bin", scratch()).unwrap(),
        [0u8, 1, 2, 255, 0, 10]
    );
    let sub = stat(&r, &image, "/sub").unwrap().unwrap();
    assert_eq!(sub.kind, FileKind::Directory);
    let link = stat(&r, &image, "/link").unwrap().unwrap();
    assert_eq!(
        (link.kind, link.size),
        (FileKind::Symlink, "hello.txt".len() as u64)
    );
    let suid = stat(&r, &image, "/suid").unwrap().unwrap();
    assert_eq!((suid.kind, suid.mode), (FileKind::Regular, 0o4755));
    // Cross-check with debugfs's own words.
    let raw = run("debugfs", &["-R", "stat /suid", &image.to_string_lossy()]);
    assert!(
        raw.stdout.contains("Type: regular    Mode:  04755"),
        "{}",
        raw.stdout
    );
    let root = stat(&r, &image, "/").unwrap().unwrap();
    assert_eq!((root.uid, root.gid), (0, 0));

    let names: Vec<String> = list_dir(&r, &image, "/")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    for name in ["hello.txt", "sub", "link", "suid", "lost+found"] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }

    // Missing and wrong-type paths are errors, not empty output.
    assert!(!exists(&r, &image, "/nope").unwrap());
    assert!(exists(&r, &image, "/sub/deeper").unwrap());
    assert!(matches!(
        read_file(&r, &image, "/nope", scratch()),
        Err(DiskError::NotFound { .. })
    ));
    assert!(matches!(
        read_file(&r, &image, "/sub", scratch()),
        Err(DiskError::WrongType {
            found: FileKind::Directory,
            ..
        })
    ));
    assert_fsck_clean(&image);
}

#[test]
fn mkfs_failure_is_reported_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("big"), vec![1u8; 4 * MIB as usize]).unwrap();
    let image = dir.path().join("small.ext4");
    let err = mkfs_from_dir(&runner(), &tree, &image, 2 * MIB, "small").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DiskError::Command { .. }), "{text}");
    assert!(text.contains("mkfs.ext4 -q -F -L small -d"), "{text}");
    assert!(!image.exists());
}

#[test]
fn debugfs_batch_overwrites_sets_owner_and_mode() -> Result<(), DiskError> {
    let dir = tempfile::tempdir().unwrap();
    let image = empty_image(dir.path(), "img.ext4");
    let r = runner();
    let host = dir.path().join("tool");
    fs::write(&host, b"#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(&host, fs::Permissions::from_mode(0o755)).unwrap();

    let mut batch = Debugfs::new(scratch());
    batch
        .mkdir("/usr/local/bin")?
        .mkdir("/etc")?
        .write(&host, "/usr/local/bin/tool")?
        .set_owner("/usr/local/bin/tool", 1000, 1001)?
        .set_mode("/usr/local/bin/tool", 0o104755)?
        .write_bytes(b"first\n", "/etc/motd")?
        .write_bytes(b"with space\n", "/etc/a file \"quoted\"")?
        .symlink("/etc/motd.link", "motd")?;
    batch.run(&r, &image).unwrap();

    assert_eq!(
        read_text(&image, "/usr/local/bin/tool"),
        "#!/bin/sh\necho tool\n"
    );
    let tool = stat(&r, &image, "/usr/local/bin/tool").unwrap().unwrap();
    assert_eq!((tool.uid, tool.gid, tool.mode), (1000, 1001, 0o4755));
    let raw = run(
        "debugfs",
        &["-R", "stat /usr/local/bin/tool", &image.to_string_lossy()],
    );
    assert!(raw.stdout.contains("Mode:  04755"), "{}", raw.stdout);
    assert!(
        raw.stdout.contains("User:  1000   Group:  1001"),
        "{}",
        raw.stdout
    );
    let motd = stat(&r, &image, "/etc/motd").unwrap().unwrap();
    assert_eq!((motd.uid, motd.gid, motd.mode), (0, 0, 0o644));
    assert_eq!(read_text(&image, "/etc/a file \"quoted\""), "with space\n");
    assert_eq!(
        stat(&r, &image, "/etc/motd.link").unwrap().unwrap().kind,
        FileKind::Symlink
    );

    // A second batch replaces existing files and symlinks, and mkdir of existing dirs is fine.
    let mut again = Debugfs::new(scratch());
    again
        .mkdir("/usr/local/bin")?
        .write_bytes(b"second, longer than the first\n", "/etc/motd")?
        .symlink("/etc/motd.link", "/etc/motd")?;
    again.run(&r, &image).unwrap();
    assert_eq!(
        read_text(&image, "/etc/motd"),
        "second, longer than the first\n"
    );
    assert_eq!(
        stat(&r, &image, "/etc/motd.link").unwrap().unwrap().size,
        "/etc/motd".len() as u64
    );
    assert_fsck_clean(&image);
    Ok(())
}

#[test]
fn a_failing_debugfs_command_fails_the_batch_with_its_message() -> Result<(), DiskError> {
    let dir = tempfile::tempdir().unwrap();
    let image = empty_image(dir.path(), "img.ext4");
    let r = runner();

    let mut batch = Debugfs::new(scratch());
    batch
        .write_bytes(b"ok\n", "/before")?
        .write_bytes(b"x\n", "/no/such/dir/file")?
        .write_bytes(b"after\n", "/after")?;
    let err = batch.run(&r, &image).unwrap_err();
    match &err {
        DiskError::Debugfs {
            image: img,
            command,
            message,
        } => {
            assert_eq!(img, &image);
            assert!(
                command.contains("write ") && command.contains("\"/no/such/dir/file\""),
                "{command}"
            );
            assert!(
                message.contains("File not found by ext2_lookup"),
                "{message}"
            );
            assert!(
                !message.contains("trying to resolve filename"),
                "tolerated rm error leaked: {message}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // debugfs cannot stop mid-batch: the other operations were applied.
    assert_eq!(read_text(&image, "/before"), "ok\n");
    assert_eq!(read_text(&image, "/after"), "after\n");

    let mut sif = Debugfs::new(scratch());
    sif.set_owner("/missing", 1, 1)?;
    let err = sif.run(&r, &image).unwrap_err().to_string();
    assert!(err.contains("sif \"/missing\" uid 1"), "{err}");
    assert!(
        err.contains("/missing: File not found by ext2_lookup"),
        "{err}"
    );

    let mut over_file = Debugfs::new(scratch());
    over_file.mkdir("/before/sub")?;
    let err = over_file.run(&r, &image).unwrap_err();
    assert!(
        matches!(&err, DiskError::WrongType { path, found: FileKind::Regular, .. } if path == "/before"),
        "{err}"
    );

    // Not an ext4 image at all.
    let junk = dir.path().join("junk");
    fs::write(&junk, b"not a filesystem").unwrap();
    let mut write = Debugfs::new(scratch());
    write.write_bytes(b"x", "/x")?;
    let err = write.run(&r, &junk).unwrap_err().to_string();
    assert!(err.contains("`open the image` failed"), "{err}");
    assert!(err.contains("while trying to open"), "{err}");
    // With a mkdir, the lookup of existing directories fails first.
    let mut mkdir = Debugfs::new(scratch());
    mkdir.mkdir("/x")?;
    let err = mkdir.run(&r, &junk).unwrap_err().to_string();
    assert!(err.contains("while trying to open"), "{err}");
    Ok(())
}

#[test]
fn grow_resizes_the_filesystem_and_refuses_to_shrink() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("keep"), b"kept\n").unwrap();
    let image = image_from(dir.path(), "img.ext4", &tree);
    let r = runner();
    assert_eq!(fs_bytes(&image), 64 * MIB);

    grow(&r, &image, 128 * MIB).unwrap();
    assert_eq!(fs::metadata(&image).unwrap().len(), 128 * MIB);
    assert_eq!(fs_bytes(&image), 128 * MIB);
    let stats = run("debugfs", &["-R", "stats", &image.to_string_lossy()]);
    let blocks: u64 = stats
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Block count:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let block_size: u64 = stats
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(blocks * block_size, 128 * MIB);
    assert_fsck_clean(&image);
    assert_eq!(read_text(&image, "/keep"), "kept\n");

    let before = fs::read(&image).unwrap();
    let err = grow(&r, &image, 64 * MIB).unwrap_err();
    assert!(
        matches!(err, DiskError::Shrink { current, requested, .. } if current == 128 * MIB && requested == 64 * MIB),
        "{err}"
    );
    assert!(err.to_string().contains("refusing to shrink"), "{err}");
    assert_eq!(fs::read(&image).unwrap(), before, "image changed");

    // Not a filesystem: the check fails and the length is restored.
    let junk = dir.path().join("junk");
    fs::write(&junk, vec![7u8; 4096]).unwrap();
    let err = grow(&r, &junk, 8 * MIB).unwrap_err().to_string();
    assert!(err.contains("e2fsck -fy"), "{err}");
    assert_eq!(fs::metadata(&junk).unwrap().len(), 4096);
}

fn guest_config() -> GuestConfig {
    GuestConfig {
        hostname: "dev-box".to_string(),
        ip: Ipv4Addr::new(172, 30, 0, 5),
        prefix: 24,
        gateway: Ipv4Addr::new(172, 30, 0, 1),
        dns: vec![Ipv4Addr::new(172, 30, 0, 1), Ipv4Addr::new(9, 9, 9, 9)],
        search: vec!["vm".to_string()],
        mac: "02:fc:ac:1e:00:05".to_string(),
    }
}

#[test]
fn guest_config_is_written_and_rewritten_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    let user_line = "UUID=1234 / ext4 errors=remount-ro 0 1";
    fs::write(
        tree.join("etc/fstab"),
        format!("# user fstab\n{user_line}\n"),
    )
    .unwrap();
    // Like Debian images: resolv.conf is a symlink to be replaced by a file.
    symlink(
        "../run/systemd/resolve/stub-resolv.conf",
        tree.join("etc/resolv.conf"),
    )
    .unwrap();
    let image = image_from(dir.path(), "rootfs.ext4", &tree);
    let r = runner();

    write_guest_config(&r, &image, &guest_config(), scratch()).unwrap();
    write_guest_config(&r, &image, &guest_config(), scratch()).unwrap();

    assert_eq!(read_text(&image, "/etc/hostname"), "dev-box\n");
    assert_eq!(
        read_text(&image, "/etc/hosts"),
        "127.0.0.1 localhost\n127.0.1.1 dev-box\n::1 localhost\n"
    );
    assert_eq!(
        read_text(&image, "/etc/resolv.conf"),
        "# Written by banger.\nnameserver 172.30.0.1\nnameserver 9.9.9.9\nsearch vm\n"
    );
    assert_eq!(
        read_text(&image, "/etc/banger/network.env"),
        "# Written by banger: the static network configuration of this VM.\n\
         BANGER_IP=172.30.0.5\nBANGER_PREFIX=24\nBANGER_GATEWAY=172.30.0.1\n\
         BANGER_DNS=\"172.30.0.1 9.9.9.9\"\nBANGER_MAC=02:fc:ac:1e:00:05\n"
    );
    assert_eq!(
        read_text(&image, "/etc/systemd/network/10-banger.network"),
        "# Written by banger.\n[Match]\nMACAddress=02:fc:ac:1e:00:05\n\n[Network]\n\
         Address=172.30.0.5/24\nGateway=172.30.0.1\nDNS=172.30.0.1\nDNS=9.9.9.9\nDomains=vm\n"
    );
    let fstab = read_text(&image, "/etc/fstab");
    assert_eq!(fstab, format!("# user fstab\n{user_line}\n{FSTAB_LINE}\n"));
    assert_eq!(fstab.matches("/dev/vdb").count(), 1);
    for path in ["/etc/hostname", "/etc/banger/network.env", "/etc/fstab"] {
        let inode = stat(&r, &image, path).unwrap().unwrap();
        assert_eq!((inode.uid, inode.gid, inode.mode), (0, 0, 0o644), "{path}");
    }
    assert_fsck_clean(&image);

    // An image without /etc/fstab gets one with just our line.
    let bare = empty_image(dir.path(), "bare.ext4");
    write_guest_config(&r, &bare, &guest_config(), scratch()).unwrap();
    assert_eq!(read_text(&bare, "/etc/fstab"), format!("{FSTAB_LINE}\n"));
}

#[test]
fn private_files_are_written_root_owned_with_their_mode_and_replaced() -> Result<(), DiskError> {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join(".claude")).unwrap();
    fs::write(tree.join(".claude/.credentials.json"), b"old").unwrap();
    let image = image_from(dir.path(), "work.ext4", &tree);
    let r = runner();
    let file = |path: &str, contents: &[u8], mode| OwnedFile {
        path: path.into(),
        contents: contents.to_vec(),
        mode,
    };
    write_private_files(
        &r,
        &image,
        &[
            file("/.claude/.credentials.json", b"{\"new\":1}", 0o600),
            file("/.local/share/opencode/auth.json", b"\0binary\xff", 0o600),
            file("/bin/tool", b"#!/bin/sh\n", 0o755),
        ],
        scratch(),
    )?;
    for (path, contents, mode) in [
        ("/.claude/.credentials.json", &b"{\"new\":1}"[..], 0o600),
        ("/.local/share/opencode/auth.json", b"\0binary\xff", 0o600),
        ("/bin/tool", b"#!/bin/sh\n", 0o755),
    ] {
        assert_eq!(read_file(&r, &image, path, scratch())?, contents, "{path}");
        let inode = stat(&r, &image, path)?.unwrap();
        assert_eq!(
            (inode.kind, inode.uid, inode.gid, inode.mode),
            (FileKind::Regular, 0, 0, mode),
            "{path}"
        );
    }
    let made = stat(&r, &image, "/.local/share")?.unwrap();
    assert_eq!(
        (made.kind, made.uid, made.mode),
        (FileKind::Directory, 0, 0o755)
    );
    assert_eq!(read_optional_file(&r, &image, "/nope", scratch())?, None);
    assert!(matches!(
        read_optional_file(&r, &image, "/.claude", scratch()),
        Err(DiskError::WrongType { .. })
    ));
    assert_fsck_clean(&image);
    Ok(())
}

/// A rootfs whose /root holds a .bashrc, a private directory and a file owned by uid 1000.
fn rootfs_with_home(dir: &Path) -> Result<PathBuf, DiskError> {
    let tree = dir.join("rootfs.tree");
    fs::create_dir_all(tree.join("root/.config/app")).unwrap();
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("root/.bashrc"), b"export PS1='vm$ '\n").unwrap();
    fs::write(tree.join("root/.config/app/settings"), b"k=v\n").unwrap();
    fs::write(tree.join("root/user-file"), b"mine\n").unwrap();
    symlink(".bashrc", tree.join("root/.profile")).unwrap();
    let image = image_from(dir, "rootfs.ext4", &tree);
    let mut fix = Debugfs::new(scratch());
    fix.set_owner("/root", 0, 0)?
        .set_mode("/root", 0o040700)?
        .set_owner("/root/.bashrc", 0, 0)?
        .set_owner("/root/.config", 0, 0)?
        .set_mode("/root/.config", 0o040750)?
        .set_owner("/root/.config/app", 0, 0)?
        .set_owner("/root/.config/app/settings", 0, 0)?
        .set_mode("/root/.config/app/settings", 0o100600)?
        .set_owner("/root/user-file", 1000, 1000)?
        .set_mode("/root/user-file", 0o104750)?
        .set_owner("/root/.profile", 0, 0)?;
    fix.run(&runner(), &image)?;
    Ok(image)
}

/// The seed checks shared by the root and non-root runs.
fn check_seed_and_work_disk(dir: &Path) -> Result<(), DiskError> {
    let r = runner();
    let rootfs = rootfs_with_home(dir)?;
    let seed = dir.join("work-seed.ext4");
    let tmp = dir.join("scratch");
    fs::create_dir(&tmp).unwrap();
    make_work_seed(&r, &rootfs, &seed, 64 * MIB, &tmp)?;

    assert_eq!(read_text(&seed, "/.bashrc"), "export PS1='vm$ '\n");
    assert_eq!(read_text(&seed, "/.config/app/settings"), "k=v\n");
    let top = stat(&r, &seed, "/")?.unwrap();
    assert_eq!((top.uid, top.gid, top.mode), (0, 0, 0o700));
    let bashrc = stat(&r, &seed, "/.bashrc")?.unwrap();
    assert_eq!((bashrc.uid, bashrc.gid), (0, 0));
    let config = stat(&r, &seed, "/.config")?.unwrap();
    assert_eq!((config.uid, config.mode), (0, 0o750));
    let settings = stat(&r, &seed, "/.config/app/settings")?.unwrap();
    assert_eq!((settings.uid, settings.mode), (0, 0o600));
    let user = stat(&r, &seed, "/user-file")?.unwrap();
    assert_eq!((user.uid, user.gid, user.mode), (1000, 1000, 0o4750));
    let profile = stat(&r, &seed, "/.profile")?.unwrap();
    assert_eq!((profile.kind, profile.uid), (FileKind::Symlink, 0));
    assert_eq!(fs_bytes(&seed), 64 * MIB);
    assert_fsck_clean(&seed);
    let leftovers: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .chain(fs::read_dir(&tmp).unwrap())
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("banger-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary directories left: {leftovers:?}"
    );

    // A VM's work disk: a clone of the seed grown to 128 MiB, then its ssh key.
    let work = dir.join("vm-work.ext4");
    clone_work_disk(&r, &seed, &work, 128 * MIB)?;
    assert_eq!(fs::metadata(&work).unwrap().len(), 128 * MIB);
    assert_eq!(fs_bytes(&work), 128 * MIB);
    assert_fsck_clean(&work);
    assert_eq!(read_text(&work, "/.bashrc"), "export PS1='vm$ '\n");
    assert_eq!(fs_bytes(&seed), 64 * MIB, "the seed must not change");

    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBanger banger@host";
    authorize_ssh_key(&r, &work, key, &tmp)?;
    authorize_ssh_key(&r, &work, key, &tmp)?;
    assert_eq!(
        read_text(&work, "/.ssh/authorized_keys"),
        format!("{key}\n")
    );
    let keys = stat(&r, &work, "/.ssh/authorized_keys")?.unwrap();
    assert_eq!((keys.uid, keys.gid, keys.mode), (0, 0, 0o600));
    let ssh = stat(&r, &work, "/.ssh")?.unwrap();
    assert_eq!(
        (ssh.kind, ssh.uid, ssh.gid, ssh.mode),
        (FileKind::Directory, 0, 0, 0o700)
    );
    assert_fsck_clean(&work);
    assert_eq!(
        fs::read_dir(&tmp).unwrap().count(),
        0,
        "scratch left non-empty"
    );
    Ok(())
}

#[test]
fn work_seed_and_work_disk() -> Result<(), DiskError> {
    let dir = tempfile::tempdir().unwrap();
    check_seed_and_work_disk(dir.path())?;

    // An image without /root gives an empty seed (but for lost+found).
    let r = runner();
    let bare = empty_image(dir.path(), "bare.ext4");
    let seed = dir.path().join("empty-seed.ext4");
    make_work_seed(&r, &bare, &seed, 64 * MIB, scratch())?;
    let names: Vec<String> = list_dir(&r, &seed, "/")?
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["lost+found"]);
    let top = stat(&r, &seed, "/")?.unwrap();
    assert_eq!((top.uid, top.gid, top.mode), (0, 0, 0o700));

    // A seed too small for the tree fails and leaves nothing.
    let tree = dir.path().join("big.tree");
    fs::create_dir_all(tree.join("root")).unwrap();
    fs::write(tree.join("root/big"), vec![1u8; 8 * MIB as usize]).unwrap();
    let big = image_from(dir.path(), "big.ext4", &tree);
    let small = dir.path().join("small-seed.ext4");
    assert!(make_work_seed(&r, &big, &small, 4 * MIB, scratch()).is_err());
    assert!(!small.exists());
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Set in the environment of the copy of this test that runs as `nobody`.
const AS_USER_DIR: &str = "BANGER_DISK_TEST_AS_USER_DIR";

/// Everything must work without root: when started as root, this test runs itself again
/// as `nobody` (setpriv) in a directory that user can write; otherwise it runs directly.
#[test]
fn work_seed_as_non_root() -> Result<(), DiskError> {
    if let Some(dir) = std::env::var_os(AS_USER_DIR) {
        assert!(!is_root(), "the copy must not run as root");
        return check_seed_and_work_disk(Path::new(&dir));
    }
    if !is_root() {
        let dir = tempfile::tempdir().unwrap();
        return check_seed_and_work_disk(dir.path());
    }
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args([
            "--exact",
            "work_seed_as_non_root",
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
    Ok(())
}

/// The adversarial corpus for work seeds: crafted ext4 images whose `/root` tries to
/// reach the host through the seed extraction. Every case asserts a clear error, that a
/// decoy tree outside the private directories is unchanged, and that nothing is left:
/// no seed, nothing in the scratch directory.
mod adversarial_seed {
    use super::*;

    /// A byte patch of a crafted image's directory entry named `name`.
    enum Patch {
        /// Rename the entry (same length).
        Name(&'static [u8], &'static [u8]),
        /// Point the entry at another inode, given by the path of its owner in the image.
        Inode(&'static [u8], &'static str),
        /// Change the entry's file type byte.
        FileType(&'static [u8], u8),
    }

    /// The offset of the name of the only directory entry called `name` in `image`: a
    /// match preceded by its length byte, 4-byte aligned header.
    fn find_entry(image: &[u8], name: &[u8]) -> usize {
        let hits: Vec<usize> = image
            .windows(name.len())
            .enumerate()
            .filter(|(i, w)| {
                *w == name
                    && *i >= 8
                    && (*i - 8) % 4 == 0
                    && image[*i - 2] as usize == name.len()
                    && (1..=7).contains(&image[*i - 1])
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(hits.len(), 1, "entry {name:?} found {} times", hits.len());
        hits[0]
    }

    /// The inode number of `path` in `image` (`debugfs -R 'stat PATH'`).
    fn inode_of(image: &Path, path: &str) -> u32 {
        let out = run(
            "debugfs",
            &["-R", &format!("stat {path}"), &image.to_string_lossy()],
        );
        out.stdout
            .split_whitespace()
            .skip_while(|w| *w != "Inode:")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no inode for {path}: {}", out.stdout))
    }

    /// A 64 MiB ext4 image of `tree` without directory checksums or hash trees (so its
    /// directory blocks are plain linear lists), then byte-patched.
    fn crafted(dir: &Path, name: &str, tree: &Path, patches: &[Patch]) -> PathBuf {
        let image = dir.join(name);
        let out = run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-O",
                "^metadata_csum,^dir_index",
                "-d",
                &tree.to_string_lossy(),
                &image.to_string_lossy(),
                "64M",
            ],
        );
        assert!(out.success(), "{}", out.stderr);
        let mut bytes = fs::read(&image).unwrap();
        for patch in patches {
            match patch {
                Patch::Name(from, to) => {
                    assert_eq!(from.len(), to.len());
                    let i = find_entry(&bytes, from);
                    bytes[i..i + to.len()].copy_from_slice(to);
                }
                Patch::Inode(entry, owner) => {
                    let ino = inode_of(&image, owner);
                    let i = find_entry(&bytes, entry);
                    bytes[i - 8..i - 4].copy_from_slice(&ino.to_le_bytes());
                }
                Patch::FileType(entry, ft) => {
                    let i = find_entry(&bytes, entry);
                    bytes[i - 1] = *ft;
                }
            }
        }
        fs::write(&image, bytes).unwrap();
        image
    }

    /// Every path, type, mode, link target and content under `dir`, never following a
    /// symlink.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(p) = stack.pop() {
            let meta = fs::symlink_metadata(&p).unwrap();
            let data = if meta.is_dir() {
                let mut names: Vec<PathBuf> = fs::read_dir(&p)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                names.sort();
                stack.extend(names);
                Vec::new()
            } else if meta.file_type().is_symlink() {
                fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                fs::read(&p).unwrap()
            };
            out.push((p, meta.mode(), data));
        }
        out.sort();
        out
    }

    /// One case's world: a decoy tree (a canary file and a directory) outside every
    /// private directory, a source tree with `/root`, a scratch directory.
    struct Case {
        dir: tempfile::TempDir,
    }

    impl Case {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let decoy = dir.path().join("decoy");
            fs::create_dir_all(decoy.join("dir")).unwrap();
            fs::write(decoy.join("canary"), b"original canary\n").unwrap();
            fs::write(decoy.join("dir/kept"), b"kept\n").unwrap();
            fs::create_dir_all(dir.path().join("tree/root")).unwrap();
            fs::create_dir(dir.path().join("scratch")).unwrap();
            Case { dir }
        }
        fn path(&self) -> &Path {
            self.dir.path()
        }
        fn decoy(&self) -> PathBuf {
            self.path().join("decoy")
        }
        /// `/root` of the source tree.
        fn home(&self) -> PathBuf {
            self.path().join("tree/root")
        }
        fn image(&self, patches: &[Patch]) -> PathBuf {
            crafted(
                self.path(),
                "crafted.ext4",
                &self.path().join("tree"),
                patches,
            )
        }

        /// Making a seed of `image` fails with an error containing every `expected`
        /// fragment, and changes and leaves nothing.
        fn refused(&self, image: &Path, expected: &[&str]) {
            let before = snapshot(&self.decoy());
            let scratch = self.path().join("scratch");
            let seed = self.path().join("seed.ext4");
            let err = make_work_seed(&runner(), image, &seed, 64 * MIB, &scratch).unwrap_err();
            // The whole chain, as the CLI prints it.
            let text = banger_core::error::chain(&err);
            for fragment in expected {
                assert!(text.contains(fragment), "expected {fragment:?} in: {text}");
            }
            assert!(text.contains("crafted.ext4"), "the image is named: {text}");
            assert_eq!(snapshot(&self.decoy()), before, "the decoy changed");
            assert!(!seed.exists(), "a seed was left");
            let left: Vec<_> = fs::read_dir(&scratch).unwrap().collect();
            assert!(left.is_empty(), "scratch left: {left:?}");
            let top: Vec<String> = fs::read_dir(self.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            for name in &top {
                assert!(
                    ["decoy", "tree", "scratch", "crafted.ext4"].contains(&name.as_str()),
                    "unexpected {name} next to the image: {top:?}"
                );
            }
        }
    }

    #[test]
    fn adversarial_seed_name_with_a_slash_climbing_out() {
        let case = Case::new();
        fs::write(case.home().join("XQZPAT01"), b"escaped\n").unwrap();
        let image = case.image(&[Patch::Name(b"XQZPAT01", b"../../ES")]);
        case.refused(
            &image,
            &["cannot read /root", "name contains a path separator"],
        );
        assert!(!case.path().join("ES").exists());
    }

    #[test]
    fn adversarial_seed_extra_dot_dot_entry() {
        let case = Case::new();
        fs::write(case.home().join("Q9"), b"up\n").unwrap();
        let image = case.image(&[Patch::Name(b"Q9", b"..")]);
        case.refused(&image, &["refusing \"/root/..\"", "a duplicate name"]);
    }

    #[test]
    fn adversarial_seed_extra_dot_entry() {
        let case = Case::new();
        fs::create_dir(case.home().join("sub")).unwrap();
        fs::write(case.home().join("sub/Q"), b"here\n").unwrap();
        let image = case.image(&[Patch::Name(b"Q", b".")]);
        case.refused(&image, &["refusing \"/root/sub/.\"", "a duplicate name"]);
    }

    #[test]
    fn adversarial_seed_duplicate_files() {
        let case = Case::new();
        fs::write(case.home().join("XQZPAT01"), b"one\n").unwrap();
        fs::write(case.home().join("XQZPAT02"), b"two\n").unwrap();
        let image = case.image(&[Patch::Name(b"XQZPAT02", b"XQZPAT01")]);
        case.refused(&image, &["refusing \"/root/XQZPAT01\"", "a duplicate name"]);
    }

    #[test]
    fn adversarial_seed_symlink_then_same_named_file_aims_at_the_canary() {
        let case = Case::new();
        symlink(case.decoy().join("canary"), case.home().join("XQZPAT01")).unwrap();
        fs::write(case.home().join("XQZPAT02"), b"overwritten!\n").unwrap();
        let image = case.image(&[Patch::Name(b"XQZPAT02", b"XQZPAT01")]);
        case.refused(&image, &["refusing \"/root/XQZPAT01\"", "a duplicate name"]);
    }

    #[test]
    fn adversarial_seed_symlink_then_same_named_directory_aims_at_the_decoy() {
        let case = Case::new();
        symlink(case.decoy().join("dir"), case.home().join("XQZPAT01")).unwrap();
        fs::create_dir(case.home().join("XQZPAT02")).unwrap();
        fs::write(case.home().join("XQZPAT02/planted"), b"planted\n").unwrap();
        let image = case.image(&[Patch::Name(b"XQZPAT02", b"XQZPAT01")]);
        case.refused(&image, &["refusing \"/root/XQZPAT01\"", "a duplicate name"]);
    }

    #[test]
    fn adversarial_seed_deep_tree() {
        let case = Case::new();
        let mut deep = case.home();
        for _ in 0..100 {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        let image = case.image(&[]);
        case.refused(
            &image,
            &["/d/d/d/", "directories nested deeper than 64 levels"],
        );
    }

    #[test]
    fn adversarial_seed_directory_cycle() {
        let case = Case::new();
        fs::create_dir_all(case.home().join("sub/XQZPAT01")).unwrap();
        // sub/XQZPAT01 becomes sub itself: an endless tree.
        let image = case.image(&[Patch::Inode(b"XQZPAT01", "/root/sub")]);
        case.refused(
            &image,
            &[
                "/root/sub/XQZPAT01/XQZPAT01/",
                "directories nested deeper than 64 levels",
            ],
        );
    }

    #[test]
    fn adversarial_seed_huge_sparse_file() {
        let case = Case::new();
        let huge = File::create(case.home().join("huge")).unwrap();
        huge.set_len(1 << 40).unwrap();
        let image = case.image(&[]);
        assert!(fs::metadata(&image).unwrap().len() == 64 * MIB);
        case.refused(
            &image,
            &[
                "refusing \"/root/huge\"",
                "the files add up to more than 67108864 bytes",
            ],
        );
    }

    #[test]
    fn adversarial_seed_entry_type_disagrees_with_inode() {
        let case = Case::new();
        fs::write(case.home().join("XQZPAT01"), b"a file\n").unwrap();
        // The entry claims a directory (type 2); its inode is a regular file.
        let image = case.image(&[Patch::FileType(b"XQZPAT01", 2)]);
        case.refused(
            &image,
            &[
                "refusing \"/root/XQZPAT01\"",
                "its directory entry says directory but its inode is a regular file",
            ],
        );
    }

    #[test]
    fn adversarial_seed_name_with_a_newline() {
        let case = Case::new();
        fs::write(case.home().join("new\nline"), b"x\n").unwrap();
        let image = case.image(&[]);
        case.refused(
            &image,
            &[
                "refusing \"/root/new\\nline\"",
                "a name containing a newline or carriage return",
            ],
        );
    }

    #[test]
    fn adversarial_seed_name_not_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let case = Case::new();
        let name = std::ffi::OsStr::from_bytes(b"bad\xffname");
        fs::write(case.home().join(name), b"x\n").unwrap();
        let image = case.image(&[]);
        case.refused(
            &image,
            &[
                "refusing \"/root/bad\u{fffd}name\"",
                "a name that is not valid UTF-8",
            ],
        );
    }

    /// The control: the same crafting without a patch gives a working seed, so the
    /// refusals above come from the patches.
    #[test]
    fn adversarial_seed_control_unpatched_image_works() {
        let case = Case::new();
        symlink(case.decoy().join("canary"), case.home().join("XQZPAT01")).unwrap();
        fs::write(case.home().join("XQZPAT02"), b"two\n").unwrap();
        fs::create_dir_all(case.home().join("sub/XQZPAT03")).unwrap();
        let image = case.image(&[]);
        let before = snapshot(&case.decoy());
        let scratch = case.path().join("scratch");
        let seed = case.path().join("seed.ext4");
        make_work_seed(&runner(), &image, &seed, 64 * MIB, &scratch).unwrap();
        assert_eq!(read_text(&seed, "/XQZPAT02"), "two\n");
        let link = stat(&runner(), &seed, "/XQZPAT01").unwrap().unwrap();
        assert_eq!(link.kind, FileKind::Symlink);
        assert!(exists(&runner(), &seed, "/sub/XQZPAT03").unwrap());
        assert_eq!(snapshot(&case.decoy()), before);
        assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0);
        assert_fsck_clean(&seed);
    }
}

/// The debugfs line bound, end to end with the real debugfs: the longest words banger
/// accepts -- a guest path of quotes (which double when quoted) and a host path whose last
/// component is a shell command -- make a `write HOST GUEST` line of over 6000 bytes that
/// debugfs reads whole, so the `!` never starts a line and no shell runs; one byte more
/// is refused before debugfs runs. (debugfs 1.47 cuts `-f` lines at 8191 bytes and hands
/// a rest starting with `!` to `system()`; see the `debugfs` module docs.)
#[test]
fn adversarial_debugfs_longest_accepted_lines_are_read_whole() -> Result<(), DiskError> {
    use banger_disk::debugfs::MAX_WORD;
    let dir = tempfile::tempdir().unwrap();
    let image = empty_image(dir.path(), "img.ext4");
    // The payload is relative: it would run in the test's directory.
    let canary = format!("banger-pwned-{}", std::process::id());
    let payload = format!("!touch {canary} #");
    let mut host = dir.path().to_path_buf();
    while host.as_os_str().len() + 1 + 250 + 1 + payload.len() + 2 <= MAX_WORD {
        host.push("h".repeat(250));
    }
    let room = MAX_WORD - 2 - host.as_os_str().len() - 1 - payload.len();
    host.push(format!("{}{payload}", "h".repeat(room.min(200))));
    fs::create_dir_all(host.parent().unwrap()).unwrap();
    fs::write(&host, b"data\n").unwrap();
    // 1500 quotes in components of 250: 3010 bytes quoted.
    let guest = format!("/{}/f", vec!["\"".repeat(250); 6].join("/"));
    let quoted = |w: &str| w.len() + w.matches('"').count() + 2;
    let line = 6 + quoted(&host.to_string_lossy()) + 1 + quoted(&guest);
    assert!(line > 6000, "{line}");
    let mut batch = Debugfs::new(scratch());
    batch
        .mkdir(&guest[..guest.len() - 2])?
        .write(&host, &guest)?;
    batch.run(&runner(), &image)?;
    for place in [std::env::current_dir().unwrap(), dir.path().to_path_buf()] {
        assert!(!place.join(&canary).exists(), "a shell command ran");
    }
    assert_eq!(read_text(&image, &guest), "data\n");
    assert_fsck_clean(&image);

    // A guest path quoting to one byte more than the bound is refused, before debugfs
    // runs.
    let longer = format!("/{}", "\"".repeat((MAX_WORD - 2) / 2));
    assert_eq!(quoted(&longer), MAX_WORD + 1);
    let mut over = Debugfs::new(scratch());
    let err = over.write(&host, &longer).unwrap_err();
    assert!(
        err.to_string()
            .contains("its quoted form is 3073 bytes, more than the 3072"),
        "{err}"
    );
    assert!(over.is_empty());
    Ok(())
}
