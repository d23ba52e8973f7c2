//! Workspaces end to end without a VM: real git repositories made in each test, the stream
//! written by the library, the generated guest scripts run with `/bin/sh` in a temporary
//! directory that stands in for the guest, the export parsed and applied with `git apply`
//! on a clean clone of the host repository, and the two trees compared.
//!
//! Every git here (the library's, the tests', the "guest's") runs with its own `HOME` and
//! global config in the test's temporary directory, never the machine's.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use banger_core::quote::shell_word;
use banger_core::runner::SystemRunner;
use banger_workspace::{
    Change, ChangedFile, Existing, Export, FileSource, Git, InspectError, InspectOptions,
    Inspection, StreamStats, ToolPin, TransferMode, export_script, inspect, parse_export,
    prepare_script, write_stream,
};

/// A sandbox: a temporary directory with a private `HOME` and git config.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for home in ["host-home", "guest-home"] {
            fs::create_dir(dir.path().join(home)).unwrap();
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn home(&self, who: &str) -> PathBuf {
        self.path(&format!("{who}-home"))
    }

    fn command(&self, program: &str, who: &str) -> Command {
        let home = self.home(who);
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("GIT_CONFIG_GLOBAL", home.join(".gitconfig"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("LC_ALL", "C")
            .env("GIT_AUTHOR_NAME", "Test Author")
            .env("GIT_AUTHOR_EMAIL", "author@example.com")
            .env("GIT_COMMITTER_NAME", "Test Author")
            .env("GIT_COMMITTER_EMAIL", "author@example.com");
        cmd
    }

    /// The library's git: banger-core's `SystemRunner` running a wrapper that gives git the
    /// host side's `HOME` and config (the runner passes on the test's own environment).
    fn git(&self) -> Git {
        let wrapper = self.path("host-git");
        let home = self.home("host");
        let script = format!(
            "#!/bin/sh\nexport HOME={home} GIT_CONFIG_GLOBAL={home}/.gitconfig GIT_CONFIG_NOSYSTEM=1\nexec git \"$@\"\n",
            home = shell_word(home.to_str().unwrap()),
        );
        fs::write(&wrapper, script).unwrap();
        chmod(&wrapper, "", 0o755);
        Git::with_program(Arc::new(SystemRunner::new()), wrapper.to_str().unwrap())
    }

    /// Runs git as `who` ("host" or "guest"); panics with its stderr on failure.
    fn git_as(&self, who: &str, dir: &Path, args: &[&str]) -> String {
        let out = self
            .command("git", who)
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{who} git {args:?} in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn host_git(&self, dir: &Path, args: &[&str]) -> String {
        self.git_as("host", dir, args)
    }

    fn guest_git(&self, dir: &Path, args: &[&str]) -> String {
        self.git_as("guest", dir, args)
    }

    /// Runs a generated guest script with `/bin/sh`, `stdin` from a file (or nothing).
    fn guest_sh(&self, script: &str, stdin: Option<&Path>) -> std::process::Output {
        let mut cmd = self.command("/bin/sh", "guest");
        cmd.arg("-c").arg(script).current_dir(self.home("guest"));
        cmd.stdin(match stdin {
            Some(path) => Stdio::from(fs::File::open(path).unwrap()),
            None => Stdio::null(),
        });
        cmd.output().unwrap()
    }

    /// A new repository with one commit of `files` (path → bytes), on branch `main`.
    fn repo(&self, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let root = self.path(name);
        fs::create_dir_all(&root).unwrap();
        self.host_git(&root, &["init", "-q", "-b", "main"]);
        for (path, bytes) in files {
            write(&root, path, bytes);
        }
        self.host_git(&root, &["add", "-A"]);
        self.host_git(&root, &["commit", "-q", "-m", "initial"]);
        root
    }

    fn commit_all(&self, root: &Path, message: &str) {
        self.host_git(root, &["add", "-A"]);
        self.host_git(root, &["commit", "-q", "-m", message]);
    }
}

fn write(root: &Path, path: &str, bytes: &[u8]) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// Sets the mode of `root/path` (`path` empty: of `root` itself).
fn chmod(root: &Path, path: &str, mode: u32) {
    let target = if path.is_empty() {
        root.to_path_buf()
    } else {
        root.join(path)
    };
    fs::set_permissions(target, fs::Permissions::from_mode(mode)).unwrap();
}

/// Binary bytes git cannot diff as text (NULs, every byte value).
fn binary(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .chain([0, 0, 0xff])
        .collect()
}

/// A work tree as path → what is there: a file's bytes and exec bit, or a symlink's target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File { bytes: Vec<u8>, exec: bool },
    Link(PathBuf),
}

fn tree(root: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            if rel == ".git" || rel.ends_with("/.git") {
                continue;
            }
            if meta.file_type().is_symlink() {
                out.insert(rel, Node::Link(fs::read_link(&path).unwrap()));
            } else if meta.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(
                    rel,
                    Node::File {
                        bytes: fs::read(&path).unwrap(),
                        exec: meta.mode() & 0o100 != 0,
                    },
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// `git ls-files -s` of everything in the work tree (through a temporary index, so the
/// repository's own index is not touched): modes and blob ids, staged or not.
fn staged_view(sandbox: &Sandbox, who: &str, root: &Path) -> String {
    let index = sandbox.path(&format!("view-index-{who}"));
    let _ = fs::remove_file(&index);
    let run = |args: &[&str]| {
        let out = sandbox
            .command("git", who)
            .arg("-C")
            .arg(root)
            .args(args)
            .env("GIT_INDEX_FILE", &index)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["add", "-A"]);
    run(&["ls-files", "-s"])
}

/// What a prepared guest looks like.
struct Prepared {
    plan: Inspection,
    stats: StreamStats,
    guest: PathBuf,
    stream: PathBuf,
}

/// inspect → stream (to a file) → prepare script in the guest stand-in.
fn prepare(sandbox: &Sandbox, path: &Path, options: &InspectOptions) -> Prepared {
    let git = sandbox.git();
    let plan = inspect(&git, path, options).unwrap();
    let stream = sandbox.path("stream.tar");
    let scratch = sandbox.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let stats = write_stream(&git, &plan, &scratch, fs::File::create(&stream).unwrap()).unwrap();
    assert_eq!(stats.bytes, fs::metadata(&stream).unwrap().len());
    assert_eq!(
        fs::read_dir(&scratch).unwrap().count(),
        0,
        "the temporary clone is removed"
    );
    // A guest path a shell would split and unquote: the scripts quote it.
    let guest = sandbox.path("guest/root/my 'repo' $HOME");
    let script = prepare_script(&plan, guest.to_str().unwrap(), Existing::Refuse).unwrap();
    let out = sandbox.guest_sh(&script, Some(&stream));
    assert!(
        out.status.success(),
        "prepare failed ({:?}): {}\n{script}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Prepared {
        plan,
        stats,
        guest,
        stream,
    }
}

/// Runs the export script; asserts it leaves the guest's index and work tree as they were.
fn export(sandbox: &Sandbox, guest: &Path, base: Option<&str>) -> Export {
    let status_before = sandbox.guest_git(guest, &["status", "--porcelain=v1", "-uall"]);
    let index = guest.join(".git/index");
    let index_before = fs::read(&index).unwrap();
    let tree_before = tree(guest);
    let script = export_script(guest.to_str().unwrap(), base).unwrap();
    let out = sandbox.guest_sh(&script, None);
    assert!(
        out.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read(&index).unwrap(),
        index_before,
        "the guest's index is unchanged"
    );
    assert_eq!(
        sandbox.guest_git(guest, &["status", "--porcelain=v1", "-uall"]),
        status_before,
        "the guest's status is unchanged"
    );
    assert_eq!(
        tree(guest),
        tree_before,
        "the guest's work tree is unchanged"
    );
    parse_export(&out.stdout).unwrap()
}

/// Applies `export` on a clean clone of the host repository at the export's base, and
/// checks the result equals the guest's tree.
fn apply_on_host_clone(sandbox: &Sandbox, root: &Path, guest: &Path, export: &Export) {
    let clone = sandbox.path("host-clone");
    let _ = fs::remove_dir_all(&clone);
    sandbox.host_git(
        sandbox.dir.path(),
        &[
            "clone",
            "-q",
            "--no-checkout",
            root.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    sandbox.host_git(&clone, &["checkout", "-q", "--detach", &export.base]);
    let patch = sandbox.path("export.patch");
    fs::write(&patch, &export.patch).unwrap();
    if !export.patch.is_empty() {
        sandbox.host_git(&clone, &["apply", "--check", patch.to_str().unwrap()]);
        sandbox.host_git(&clone, &["apply", patch.to_str().unwrap()]);
    }
    assert_eq!(tree(&clone), tree(guest), "the host clone equals the guest");
    assert_eq!(
        staged_view(sandbox, "host", &clone),
        staged_view(sandbox, "guest", guest),
        "`git ls-files -s` agree"
    );
}

fn sources(plan: &Inspection) -> BTreeMap<&str, FileSource> {
    plan.files
        .iter()
        .map(|f| (f.path.as_str(), f.source))
        .collect()
}

/// Entries of a stream: path → (uid, gid, entry type).
fn stream_entries(stream: &Path) -> BTreeMap<String, (u64, u64, tar::EntryType)> {
    let mut archive = tar::Archive::new(fs::File::open(stream).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                (h.uid().unwrap(), h.gid().unwrap(), h.entry_type()),
            )
        })
        .collect()
}

/// The repository most tests use: text, binary, executable, symlink, an ignored `.env`,
/// a subdirectory; then work-tree changes on the host: a modified file, a mode change, a
/// deleted file, a staged new file, an untracked file at the root.
fn rich_repo(sandbox: &Sandbox) -> PathBuf {
    let root = sandbox.repo(
        "host repo",
        &[
            ("README.md", b"# app\n"),
            (".gitignore", b".env\nbuild/\n"),
            ("src/lib.rs", b"pub fn f() {}\n"),
            (
                "src/old.rs",
                b"fn old() {}\n\n// a file long enough for rename detection\n",
            ),
            ("assets/logo.bin", &binary(1, 4096)),
            ("scripts/run.sh", b"#!/bin/sh\necho run\n"),
            ("gone.txt", b"to be deleted\n"),
            ("mode.txt", b"to become executable\n"),
        ],
    );
    chmod(&root, "scripts/run.sh", 0o755);
    symlink("src/lib.rs", root.join("lib-link")).unwrap();
    sandbox.commit_all(&root, "exec bit and symlink");
    sandbox.host_git(&root, &["config", "user.name", "Repo Person"]);
    sandbox.host_git(&root, &["config", "user.email", "repo@example.com"]);
    sandbox.host_git(
        &root,
        &["remote", "add", "origin", "https://example.com/me/app.git"],
    );
    // Work-tree state on the host.
    write(&root, ".env", b"SECRET=1\n");
    write(&root, "build/out.o", b"ignored too\n");
    write(&root, "README.md", b"# app\n\nmodified on the host\n");
    chmod(&root, "mode.txt", 0o755);
    fs::remove_file(root.join("gone.txt")).unwrap();
    write(&root, "src/staged.rs", b"// staged, not committed\n");
    sandbox.host_git(&root, &["add", "src/staged.rs"]);
    write(&root, "notes.txt", b"untracked at the root\n");
    root
}

/// The guest's work: edits, a new binary file, a deletion, a rename, a mode change, a
/// symlink retargeted, part of it committed in the guest.
fn guest_work(sandbox: &Sandbox, guest: &Path) {
    write(guest, "src/lib.rs", b"pub fn f() { /* guest */ }\n");
    write(guest, "assets/new.bin", &binary(7, 10_000));
    write(guest, "assets/logo.bin", &binary(2, 4096));
    sandbox.guest_git(guest, &["add", "-A"]);
    sandbox.guest_git(guest, &["commit", "-q", "-m", "guest commit"]);
    fs::remove_file(guest.join("scripts/run.sh")).unwrap();
    fs::rename(guest.join("src/old.rs"), guest.join("src/renamed.rs")).unwrap();
    chmod(guest, "README.md", 0o755);
    fs::remove_file(guest.join("lib-link")).unwrap();
    symlink("README.md", guest.join("lib-link")).unwrap();
    write(guest, "guest-new.txt", b"new in the guest, uncommitted\n");
}

#[test]
fn a_repository_round_trips_from_a_subdirectory() {
    let sandbox = Sandbox::new();
    let root = rich_repo(&sandbox);
    let head = sandbox
        .host_git(&root, &["rev-parse", "HEAD"])
        .trim()
        .to_string();
    // (The test's own `git status` may refresh the index: read it after.)
    let host_status = sandbox.host_git(&root, &["status", "--porcelain"]);
    let host_index = fs::read(root.join(".git/index")).unwrap();
    // A tracked file whose stat no longer matches the index: a `git status` that may
    // write would refresh the index now.
    fs::File::options()
        .write(true)
        .open(root.join("src/lib.rs"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    let prepared = prepare(&sandbox, &root.join("src"), &InspectOptions::default());
    let plan = &prepared.plan;
    assert_eq!(
        fs::read(root.join(".git/index")).unwrap(),
        host_index,
        "inspecting and streaming never write the host's index"
    );
    assert_eq!(
        sandbox.host_git(&root, &["status", "--porcelain"]),
        host_status
    );

    assert_eq!(plan.root, root.canonicalize().unwrap());
    assert_eq!(plan.path, root.join("src").canonicalize().unwrap());
    assert_eq!(plan.head, head);
    assert_eq!(plan.base, head);
    assert_eq!(plan.branch.as_deref(), Some("main"));
    assert_eq!(
        plan.origin_url.as_deref(),
        Some("https://example.com/me/app.git")
    );
    assert_eq!(plan.identity.name.as_deref(), Some("Repo Person"));
    assert_eq!(plan.mode, TransferMode::Overlay);
    let expected: BTreeMap<&str, FileSource> = [
        (".gitignore", FileSource::Commit),
        ("README.md", FileSource::Modified),
        ("assets/logo.bin", FileSource::Commit),
        ("lib-link", FileSource::Commit),
        ("mode.txt", FileSource::Modified),
        ("scripts/run.sh", FileSource::Commit),
        ("src/lib.rs", FileSource::Commit),
        ("src/old.rs", FileSource::Commit),
        ("src/staged.rs", FileSource::Modified),
    ]
    .into();
    assert_eq!(sources(plan), expected);
    assert_eq!(plan.deleted, ["gone.txt"]);
    assert_eq!(plan.untracked, 1, "notes.txt, counted from the root");
    assert_eq!(plan.skipped_untracked, 1);
    assert!(!prepared.stats.fetched_base);

    // The stream: root-owned, the clone's git dir plus exactly the modified files.
    let entries = stream_entries(&prepared.stream);
    assert!(entries.values().all(|(uid, gid, _)| *uid == 0 && *gid == 0));
    assert!(
        !entries
            .keys()
            .any(|p| p.contains("hooks/") && p.ends_with(".sample"))
    );
    let overlay: Vec<&String> = entries.keys().filter(|p| !p.starts_with(".git")).collect();
    assert_eq!(overlay, ["README.md", "mode.txt", "src/staged.rs"]);
    assert!(entries.contains_key(".git/banger-checkout-skip"));

    // The guest: the host's work tree without ignored and untracked files.
    let guest = &prepared.guest;
    let mut host_view = tree(&root);
    for left_out in [".env", "build/out.o", "notes.txt"] {
        assert!(host_view.remove(left_out).is_some(), "{left_out}");
    }
    assert_eq!(tree(guest), host_view);
    assert!(!guest.join(".git/banger-checkout-skip").exists());
    assert_eq!(
        sandbox.guest_git(guest, &["rev-parse", "HEAD"]).trim(),
        head
    );
    assert_eq!(
        sandbox
            .guest_git(guest, &["symbolic-ref", "--short", "HEAD"])
            .trim(),
        "main"
    );
    assert_eq!(
        sandbox
            .guest_git(guest, &["rev-parse", "refs/banger/base"])
            .trim(),
        head
    );
    assert_eq!(
        sandbox
            .guest_git(guest, &["config", "--get", "remote.origin.url"])
            .trim(),
        "https://example.com/me/app.git"
    );
    assert_eq!(
        sandbox
            .guest_git(guest, &["config", "--local", "user.email"])
            .trim(),
        "repo@example.com"
    );
    assert_eq!(
        sandbox
            .guest_git(
                guest,
                &["config", "--global", "--get-all", "safe.directory"]
            )
            .trim(),
        guest.to_str().unwrap()
    );
    // Extracted as the extracting user's (root in a guest; the test's here, like its own
    // files), not as the host owner recorded in the stream.
    let own_uid = fs::metadata(sandbox.home("guest")).unwrap().uid();
    assert_eq!(
        fs::metadata(guest.join("README.md")).unwrap().uid(),
        own_uid
    );
    // The host's changes show as changes in the guest.
    let status = sandbox.guest_git(guest, &["status", "--porcelain=v1"]);
    for line in [
        " M README.md",
        " M mode.txt",
        " D gone.txt",
        "?? src/staged.rs",
    ] {
        assert!(status.lines().any(|l| l == line), "{line:?} in {status}");
    }

    guest_work(&sandbox, guest);
    let export = export(&sandbox, guest, None);
    assert_eq!(export.base, head);
    let changed: BTreeMap<&str, &Change> = export
        .files
        .iter()
        .map(|f| (f.path.as_str(), &f.change))
        .collect();
    assert_eq!(changed["README.md"], &Change::Modified);
    assert_eq!(changed["assets/new.bin"], &Change::Added);
    assert_eq!(changed["scripts/run.sh"], &Change::Deleted);
    assert_eq!(changed["gone.txt"], &Change::Deleted);
    assert!(
        matches!(changed["src/renamed.rs"], Change::Renamed { from, .. } if from == "src/old.rs"),
        "{changed:?}"
    );
    assert!(!changed.contains_key(".env"));
    assert!(export.patch.windows(13).any(|w| w == b"GIT binary pa"));
    apply_on_host_clone(&sandbox, &root, guest, &export);
}

#[test]
fn untracked_files_travel_only_when_asked_and_ignored_ones_never() {
    let sandbox = Sandbox::new();
    let root = rich_repo(&sandbox);
    let options = InspectOptions {
        include_untracked: true,
        branch: Some("guest/feature".into()),
        ..InspectOptions::default()
    };
    let prepared = prepare(&sandbox, &root, &options);
    assert_eq!(
        sandbox
            .guest_git(&prepared.guest, &["symbolic-ref", "--short", "HEAD"])
            .trim(),
        "guest/feature",
        "a guest-only branch from HEAD, the overlay on top"
    );
    assert_eq!(
        fs::read(prepared.guest.join("README.md")).unwrap(),
        b"# app\n\nmodified on the host\n"
    );
    assert_eq!(sources(&prepared.plan)["notes.txt"], FileSource::Untracked);
    assert_eq!(prepared.plan.skipped_untracked, 0);
    assert_eq!(prepared.plan.untracked_notice(), None);
    assert!(!sources(&prepared.plan).contains_key(".env"));
    let entries = stream_entries(&prepared.stream);
    assert!(entries.contains_key("notes.txt"));
    assert!(
        !entries
            .keys()
            .any(|p| p == ".env" || p.starts_with("build"))
    );
    assert!(prepared.guest.join("notes.txt").exists());
    assert!(!prepared.guest.join(".env").exists());

    let export = export(&sandbox, &prepared.guest, None);
    assert!(export.files.contains(&ChangedFile {
        path: "notes.txt".into(),
        change: Change::Added
    }));
    apply_on_host_clone(&sandbox, &root, &prepared.guest, &export);
}

#[test]
fn a_detached_head_is_checked_out_detached() {
    let sandbox = Sandbox::new();
    let root = sandbox.repo("repo", &[("a.txt", b"a\n")]);
    write(&root, "a.txt", b"a2\n");
    sandbox.commit_all(&root, "second");
    sandbox.host_git(&root, &["checkout", "-q", "--detach", "HEAD~1"]);
    write(&root, "detached.txt", b"only on a detached commit\n");
    sandbox.commit_all(&root, "detached work");
    let head = sandbox
        .host_git(&root, &["rev-parse", "HEAD"])
        .trim()
        .to_string();

    let prepared = prepare(&sandbox, &root, &InspectOptions::default());
    assert_eq!(prepared.plan.branch, None);
    assert_eq!(prepared.plan.origin_url, None);
    assert!(
        prepared
            .plan
            .to_string()
            .contains(&format!("head: {head} (detached)\n"))
    );
    let guest = &prepared.guest;
    assert_eq!(
        sandbox.guest_git(guest, &["rev-parse", "HEAD"]).trim(),
        head
    );
    let symbolic = sandbox
        .command("git", "guest")
        .args(["-C", guest.to_str().unwrap(), "symbolic-ref", "-q", "HEAD"])
        .status()
        .unwrap();
    assert_eq!(symbolic.code(), Some(1), "HEAD is detached in the guest");
    assert!(
        sandbox.guest_git(guest, &["remote"]).trim().is_empty(),
        "no origin on the host, none in the guest"
    );
    assert_eq!(
        fs::read(guest.join("detached.txt")).unwrap(),
        b"only on a detached commit\n"
    );

    write(guest, "a.txt", b"guest\n");
    let export = export(&sandbox, guest, None);
    apply_on_host_clone(&sandbox, &root, guest, &export);
}

#[test]
fn from_a_commit_outside_the_depth_window_fetches_it() {
    let sandbox = Sandbox::new();
    let root = sandbox.repo("repo", &[("n.txt", b"0\n")]);
    for i in 1..=14 {
        write(&root, "n.txt", format!("{i}\n").as_bytes());
        write(&root, &format!("f{i}.txt"), b"x\n");
        sandbox.commit_all(&root, &format!("commit {i}"));
    }
    let old = sandbox
        .host_git(&root, &["rev-parse", "HEAD~12"])
        .trim()
        .to_string();
    write(&root, "n.txt", b"uncommitted on the host\n");
    let options = InspectOptions {
        branch: Some("guest-work".into()),
        from: Some("HEAD~12".into()),
        ..InspectOptions::default()
    };
    let prepared = prepare(&sandbox, &root, &options);
    assert_eq!(prepared.plan.base, old);
    assert!(prepared.stats.fetched_base, "HEAD~12 is outside depth 10");
    assert!(
        prepared.plan.work_tree_files().next().is_none(),
        "no overlay with --from"
    );
    let guest = &prepared.guest;
    assert_eq!(sandbox.guest_git(guest, &["rev-parse", "HEAD"]).trim(), old);
    assert_eq!(
        sandbox
            .guest_git(guest, &["symbolic-ref", "--short", "HEAD"])
            .trim(),
        "guest-work"
    );
    assert_eq!(fs::read(guest.join("n.txt")).unwrap(), b"2\n");
    assert!(stream_entries(&prepared.stream).contains_key(".git/shallow"));
    assert_eq!(
        sandbox
            .guest_git(guest, &["rev-parse", "--is-shallow-repository"])
            .trim(),
        "true"
    );
    let reachable: usize = sandbox
        .guest_git(guest, &["rev-list", "--count", "--all"])
        .trim()
        .parse()
        .unwrap();
    assert!(reachable < 15, "{reachable} commits: not the whole history");
    assert!(!guest.join("f3.txt").exists());
    assert!(
        sandbox
            .guest_git(guest, &["status", "--porcelain"])
            .is_empty(),
        "the guest tree is exactly the commit"
    );

    write(guest, "n.txt", b"guest\n");
    sandbox.guest_git(guest, &["commit", "-q", "-am", "guest on the old base"]);
    write(guest, "extra.bin", &binary(3, 300));
    let export = export(&sandbox, guest, None);
    assert_eq!(export.base, old);
    apply_on_host_clone(&sandbox, &root, guest, &export);
}

#[test]
fn export_takes_an_explicit_base_and_refuses_an_unknown_one_or_no_workspace() {
    let sandbox = Sandbox::new();
    let root = sandbox.repo("repo", &[("a.txt", b"a\n")]);
    let prepared = prepare(&sandbox, &root, &InspectOptions::default());
    let guest = &prepared.guest;
    write(guest, "a.txt", b"one\n");
    sandbox.guest_git(guest, &["commit", "-q", "-am", "one"]);
    write(guest, "a.txt", b"two\n");
    let since_one = export(&sandbox, guest, Some("HEAD"));
    assert_eq!(
        since_one.base,
        sandbox.guest_git(guest, &["rev-parse", "HEAD"]).trim()
    );
    assert!(String::from_utf8_lossy(&since_one.patch).contains("-one\n+two\n"));

    let script = export_script(guest.to_str().unwrap(), Some("no-such-commit")).unwrap();
    let out = sandbox.guest_sh(&script, None);
    assert_eq!(
        out.status.code(),
        Some(banger_workspace::script::EXIT_NO_BASE)
    );
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-commit is not a commit"));

    let nowhere = sandbox.path("guest/root/none");
    let out = sandbox.guest_sh(
        &export_script(nowhere.to_str().unwrap(), None).unwrap(),
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(banger_workspace::script::EXIT_NO_WORKSPACE)
    );
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no workspace at"));
}

#[test]
fn prepare_refuses_a_non_empty_guest_path_unless_replacing() {
    let sandbox = Sandbox::new();
    let root = sandbox.repo("repo", &[("a.txt", b"a\n")]);
    let prepared = prepare(&sandbox, &root, &InspectOptions::default());
    let guest = prepared.guest.to_str().unwrap();
    write(&prepared.guest, "guest-only.txt", b"work\n");
    let again = prepare_script(&prepared.plan, guest, Existing::Refuse).unwrap();
    let out = sandbox.guest_sh(&again, Some(&prepared.stream));
    assert_eq!(
        out.status.code(),
        Some(banger_workspace::script::EXIT_NOT_EMPTY)
    );
    assert!(
        prepared.guest.join("guest-only.txt").exists(),
        "nothing changed"
    );

    let replace = prepare_script(&prepared.plan, guest, Existing::Replace).unwrap();
    let out = sandbox.guest_sh(&replace, Some(&prepared.stream));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!prepared.guest.join("guest-only.txt").exists());
    assert_eq!(fs::read(prepared.guest.join("a.txt")).unwrap(), b"a\n");
    let safe = sandbox.guest_git(
        &prepared.guest,
        &["config", "--global", "--get-all", "safe.directory"],
    );
    assert_eq!(
        safe.lines().count(),
        1,
        "safe.directory is added once: {safe}"
    );
}

fn repo_with_submodule(sandbox: &Sandbox) -> PathBuf {
    let sub = sandbox.repo("sub", &[("lib.c", b"int x;\n")]);
    let root = sandbox.repo("super", &[("main.c", b"int main;\n")]);
    sandbox.host_git(
        &root,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            sub.to_str().unwrap(),
            "vendor/sub",
        ],
    );
    sandbox.commit_all(&root, "add a submodule");
    root
}

#[test]
fn submodules_are_refused_without_a_full_copy() {
    let sandbox = Sandbox::new();
    let root = repo_with_submodule(&sandbox);
    let err = inspect(&sandbox.git(), &root, &InspectOptions::default()).unwrap_err();
    assert!(
        matches!(&err, InspectError::Submodules { paths, .. } if paths == &["vendor/sub"]),
        "{err:?}"
    );
    assert!(err.to_string().contains("vendor/sub"), "{err}");
    assert!(err.to_string().contains(root.to_str().unwrap()), "{err}");
}

#[test]
fn a_full_copy_ships_history_and_submodules() {
    let sandbox = Sandbox::new();
    let root = repo_with_submodule(&sandbox);
    write(&root, "main.c", b"int main(void);\n");
    write(&root, ".gitignore", b".env\n");
    write(&root, ".env", b"SECRET=1\n");
    let options = InspectOptions {
        full_copy: true,
        ..InspectOptions::default()
    };
    let prepared = prepare(&sandbox, &root, &options);
    let plan = &prepared.plan;
    assert_eq!(plan.mode, TransferMode::FullCopy);
    assert_eq!(plan.submodules, ["vendor/sub"]);
    assert_eq!(sources(plan)["vendor/sub/lib.c"], FileSource::Copied);
    assert!(!sources(plan).contains_key(".env"));
    assert!(plan.to_string().contains("mode: full copy\n"));
    let guest = &prepared.guest;
    assert_eq!(
        sandbox.guest_git(guest, &["rev-list", "--count", "HEAD"]),
        sandbox.host_git(&root, &["rev-list", "--count", "HEAD"]),
        "the whole history"
    );
    assert_eq!(
        sandbox.guest_git(&guest.join("vendor/sub"), &["rev-parse", "HEAD"]),
        sandbox.host_git(&root.join("vendor/sub"), &["rev-parse", "HEAD"])
    );
    assert!(!guest.join(".env").exists());
    assert_eq!(
        fs::read(guest.join("main.c")).unwrap(),
        b"int main(void);\n"
    );

    write(guest, "main.c", b"int main(int argc);\n");
    write(guest, "new.bin", &binary(9, 100));
    let export = export(&sandbox, guest, None);
    assert_eq!(export.base, plan.head);
    apply_on_host_clone_without_submodules(&sandbox, &root, guest, &export);
}

/// Like [`apply_on_host_clone`], comparing only the top repository's own files (a clean
/// clone has no submodule checkout).
fn apply_on_host_clone_without_submodules(
    sandbox: &Sandbox,
    root: &Path,
    guest: &Path,
    export: &Export,
) {
    let clone = sandbox.path("host-clone");
    sandbox.host_git(
        sandbox.dir.path(),
        &[
            "clone",
            "-q",
            root.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    sandbox.host_git(&clone, &["checkout", "-q", "--detach", &export.base]);
    let patch = sandbox.path("export.patch");
    fs::write(&patch, &export.patch).unwrap();
    sandbox.host_git(&clone, &["apply", "--check", patch.to_str().unwrap()]);
    sandbox.host_git(&clone, &["apply", patch.to_str().unwrap()]);
    let top = |root: &Path| {
        let mut t = tree(root);
        t.retain(|p, _| !p.starts_with("vendor/"));
        t
    };
    assert_eq!(top(&clone), top(guest));
}

#[test]
fn the_dry_run_text_and_json_describe_the_plan() {
    let sandbox = Sandbox::new();
    let root = rich_repo(&sandbox);
    let plan = inspect(
        &sandbox.git(),
        &root.join("src"),
        &InspectOptions::default(),
    )
    .unwrap();
    let text = plan.to_string();
    let root_shown = plan.root.display().to_string();
    assert!(text.starts_with(&format!(
        "repository: {root_shown}\npath: {root_shown}/src\n"
    )));
    for line in [
        "mode: overlay",
        "origin: https://example.com/me/app.git",
        "guest branch: none",
        "files: 9 (3 from the working tree)",
        "M README.md",
        "= src/lib.rs",
        "D gone.txt",
        "untracked: 1 skipped (include them with --include-untracked)",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
    }
    assert!(!text.contains(".env") || text.contains(".gitignore"));
    assert!(!text.lines().any(|l| l.ends_with(" .env")));
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["mode"], "overlay");
    assert_eq!(json["files"][1]["path"], "README.md");
    assert_eq!(json["files"][1]["source"], "modified");
    assert_eq!(json["deleted"][0], "gone.txt");
    assert_eq!(json["untracked"], 1);
}

#[test]
fn bad_input_gets_a_typed_error_naming_it() {
    let sandbox = Sandbox::new();
    let git = sandbox.git();
    let default = InspectOptions::default();

    let plain = sandbox.path("plain");
    fs::create_dir(&plain).unwrap();
    let err = inspect(&git, &plain, &default).unwrap_err();
    assert!(
        matches!(err, InspectError::NotARepository { ref path } if path == &plain),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("{} is not inside a git repository", plain.display())
    );

    let missing = sandbox.path("missing");
    let err = inspect(&git, &missing, &default).unwrap_err();
    assert!(matches!(err, InspectError::Unreadable { .. }), "{err:?}");
    assert!(err.to_string().contains("missing"));

    let bare = sandbox.path("bare.git");
    sandbox.host_git(
        sandbox.dir.path(),
        &["init", "-q", "--bare", bare.to_str().unwrap()],
    );
    let err = inspect(&git, &bare, &default).unwrap_err();
    assert!(
        matches!(err, InspectError::Bare { ref path } if path == &bare),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("bare.git is a bare git repository")
    );

    let root = sandbox.repo("repo", &[("a.txt", b"a\n")]);
    let err = inspect(&git, &root.join("a.txt"), &default).unwrap_err();
    assert!(matches!(err, InspectError::NotADirectory { .. }), "{err:?}");
    let err = inspect(&git, &root.join(".git"), &default).unwrap_err();
    assert!(matches!(err, InspectError::InsideGitDir { .. }), "{err:?}");

    let from_alone = InspectOptions {
        from: Some("HEAD".into()),
        ..InspectOptions::default()
    };
    let err = inspect(&git, &root, &from_alone).unwrap_err();
    assert!(
        matches!(err, InspectError::FromWithoutBranch { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "--from HEAD needs --branch NAME (the guest-only branch it starts)"
    );

    for reference in ["no-such-ref", "--all", ""] {
        let unknown = InspectOptions {
            branch: Some("work".into()),
            from: Some(reference.into()),
            ..InspectOptions::default()
        };
        let err = inspect(&git, &root, &unknown).unwrap_err();
        assert!(
            matches!(&err, InspectError::UnknownRef { reference: r, .. } if r == reference),
            "{err:?}"
        );
        assert!(err.to_string().contains(root.to_str().unwrap()));
    }

    for name in ["bad..name", "-x", "a b", "@{-1}", "HEAD"] {
        let bad = InspectOptions {
            branch: Some(name.into()),
            ..InspectOptions::default()
        };
        let err = inspect(&git, &root, &bad).unwrap_err();
        assert!(
            matches!(&err, InspectError::BadBranch { name: n } if n == name),
            "{err:?}"
        );
    }

    let empty = sandbox.path("empty");
    fs::create_dir(&empty).unwrap();
    sandbox.host_git(&empty, &["init", "-q"]);
    let err = inspect(&git, &empty, &default).unwrap_err();
    assert!(matches!(err, InspectError::NoCommits { .. }), "{err:?}");
}

#[test]
fn a_stream_to_a_closed_output_is_a_write_error() {
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sandbox = Sandbox::new();
    let root = sandbox.repo("repo", &[("a.txt", b"a\n")]);
    let git = sandbox.git();
    let plan = inspect(&git, &root, &InspectOptions::default()).unwrap();
    let scratch = sandbox.path("scratch");
    fs::create_dir(&scratch).unwrap();
    let err = write_stream(&git, &plan, &scratch, Closed).unwrap_err();
    assert!(
        matches!(err, banger_workspace::StreamError::Write(_)),
        "{err:?}"
    );
    assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0);
}

#[test]
fn a_linked_worktree_ships_as_an_overlay_but_not_as_a_full_copy() {
    let sandbox = Sandbox::new();
    let root = sandbox.repo("repo", &[("a.txt", b"a\n")]);
    let linked = sandbox.path("linked");
    sandbox.host_git(
        &root,
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "side",
            linked.to_str().unwrap(),
        ],
    );
    write(&linked, "a.txt", b"changed in the linked worktree\n");
    let prepared = prepare(&sandbox, &linked, &InspectOptions::default());
    assert_eq!(prepared.plan.branch.as_deref(), Some("side"));
    assert_eq!(
        fs::read(prepared.guest.join("a.txt")).unwrap(),
        b"changed in the linked worktree\n"
    );
    let full = InspectOptions {
        full_copy: true,
        ..InspectOptions::default()
    };
    let err = inspect(&sandbox.git(), &linked, &full).unwrap_err();
    assert!(
        matches!(err, InspectError::LinkedWorktree { .. }),
        "{err:?}"
    );
}

#[test]
fn a_file_name_that_is_not_utf8_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let sandbox = Sandbox::new();
    let root = sandbox.repo("repo", &[("a.txt", b"a\n")]);
    let name = std::ffi::OsStr::from_bytes(b"bad-\xff-name");
    fs::write(root.join(name), b"x").unwrap();
    sandbox.commit_all(&root, "a name git keeps as bytes");
    let err = inspect(&sandbox.git(), &root, &InspectOptions::default()).unwrap_err();
    assert!(matches!(err, InspectError::NonUtf8Path { .. }), "{err:?}");
    assert!(err.to_string().contains("not UTF-8"), "{err}");
}

#[test]
fn tool_pins_at_the_root_are_listed_and_printed() {
    let sandbox = Sandbox::new();
    let root = sandbox.repo(
        "pinned",
        &[
            ("go.mod", b"module x\n"),
            (".tool-versions", b"nodejs 20\n"),
            ("sub/.nvmrc", b"20\n"),
        ],
    );
    let git = sandbox.git();
    let plan = inspect(&git, &root.join("sub"), &InspectOptions::default()).unwrap();
    assert_eq!(plan.tool_pins, vec![ToolPin::ToolVersions, ToolPin::GoMod]);
    assert!(
        plan.to_string()
            .contains("\ntool pins: .tool-versions, go.mod\n"),
        "{plan}"
    );
    assert_eq!(
        serde_json::to_value(&plan).unwrap()["tool_pins"],
        serde_json::json!([".tool-versions", "go.mod"])
    );
    // An untracked pin file travels (and counts) only with the untracked files.
    write(&root, "mise.toml", b"[tools]\n");
    let plan = inspect(&git, &root, &InspectOptions::default()).unwrap();
    assert!(!plan.tool_pins.contains(&ToolPin::MiseToml));
    let with = InspectOptions {
        include_untracked: true,
        ..InspectOptions::default()
    };
    let plan = inspect(&git, &root, &with).unwrap();
    assert!(plan.tool_pins.contains(&ToolPin::MiseToml));
}
