//! Workspaces end to end against the fake Firecracker: real git repositories made here,
//! shipped with `vm workspace prepare` / `vm run PATH`, changed in the "guest" through
//! `vm exec`, exported and applied to a clean clone on the host. The host-mode agent runs
//! with a private `/root` per fake VM (a mount namespace), so `/root/repo` is the VM's own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use crate::common::*;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// Whether this host can give the fake's agent a private `/root` (a mount namespace, and a
/// user namespace when not root); tests that write `/root` skip visibly otherwise.
#[allow(clippy::print_stderr)] // the visible reason for a skip
pub(crate) fn private_root_or_skip(home: &Home) -> bool {
    let log = home.path().join("state");
    let found = std::fs::read_dir(&log).is_ok()
        && walk_contains(&log, "console.log", "no private /root for the agent");
    if found {
        eprintln!("skipped: the fake's agent has no private /root here (namespaces unavailable)");
    }
    !found
}

fn walk_contains(dir: &Path, name: &str, needle: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            walk_contains(&p, name, needle)
        } else {
            p.file_name().is_some_and(|n| n == name)
                && std::fs::read_to_string(&p)
                    .unwrap_or_default()
                    .contains(needle)
        }
    })
}

/// A home with one running VM `name`, or `None` (skipped).
fn home_with(names: &[&str]) -> Option<Home> {
    let home = Home::for_vms("")?;
    for name in names {
        home.ok(&["vm", "create", "--name", name, "--image", "test-img"]);
    }
    private_root_or_skip(&home).then_some(home)
}

/// `git` on the host, with a fixed identity and no global or system config.
pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_out(dir, args);
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn git_out(dir: &Path, args: &[&str]) -> Output {
    host_tool("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Host")
        .env("GIT_AUTHOR_EMAIL", "host@example.com")
        .env("GIT_COMMITTER_NAME", "Host")
        .env("GIT_COMMITTER_EMAIL", "host@example.com")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn write(root: &Path, path: &str, bytes: &[u8]) {
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn binary(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(u32::from(seed)) as u8
        })
        .collect()
}

/// A repository at `home/name` with `files` committed (`main`).
fn repo(home: &Home, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let root = home.path().join(name);
    std::fs::create_dir_all(&root).unwrap();
    git(&root, &["init", "-q", "-b", "main"]);
    for (path, bytes) in files {
        write(&root, path, bytes);
    }
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-q", "-m", "initial"]);
    root
}

/// The repository the round trip ships: text and binary files, a file to rename, one to
/// delete, a script to make executable, an ignored `.env`, an untracked note, a
/// subdirectory; and an uncommitted change on the host.
fn rich_repo(home: &Home) -> PathBuf {
    let root = repo(
        home,
        "app",
        &[
            ("README.md", b"# app\n"),
            ("src/lib.rs", b"pub fn f() {}\n"),
            (
                "src/old_name.rs",
                b"pub fn moved() -> u32 { 42 }\n// keep it long enough\n",
            ),
            ("doomed.txt", b"bye\n"),
            ("run.sh", b"#!/bin/sh\necho run\n"),
            ("assets/blob.bin", &binary(3, 4096)),
            (".gitignore", b".env\n"),
        ],
    );
    write(&root, ".env", b"SECRET=1\n");
    write(&root, "notes.txt", b"untracked\n");
    write(
        &root,
        "README.md",
        b"# app\n\nchanged on the host, not committed\n",
    );
    root
}

/// `banger vm exec VM -T -- /bin/sh -c LINE`, stdin closed; must succeed.
fn guest_sh(home: &Home, vm: &str, line: &str) -> String {
    let out = home
        .cmd(&["vm", "exec", vm, "-T", "--", "/bin/sh", "-c", line])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "in {vm}: {line}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The guest's work tree as git would stage it (`git add -A` into a copy of the index):
/// `git ls-files -s` lines (mode, blob id, path), plus each file's sha256.
fn guest_tree(home: &Home, vm: &str) -> (String, String) {
    let staged = guest_sh(
        home,
        vm,
        "t=$(mktemp) && cp .git/index \"$t\" && GIT_INDEX_FILE=$t git add -A && \
         GIT_INDEX_FILE=$t git ls-files -s; rm -f \"$t\"",
    );
    let sums = guest_sh(
        home,
        vm,
        "git ls-files -co --exclude-standard -z | sort -z | xargs -0 sha256sum",
    );
    (staged, sums)
}

fn host_tree(clone: &Path) -> (String, String) {
    git(clone, &["add", "-A"]);
    let staged = git(clone, &["ls-files", "-s"]);
    let out = host_tool("sh")
        .arg("-c")
        .arg("git ls-files -co --exclude-standard -z | sort -z | xargs -0 sha256sum")
        .current_dir(clone)
        .output()
        .unwrap();
    (staged, text(&out.stdout))
}

/// A clean clone of `root` at `base`, the patch checked and applied to it.
fn apply_on_clean_clone(home: &Home, root: &Path, base: &str, patch: &Path) -> PathBuf {
    let clone = home.path().join(format!(
        "clone-{}",
        root.file_name().unwrap().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&clone);
    git(
        home.path(),
        &[
            "clone",
            "-q",
            root.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    git(&clone, &["checkout", "-q", "--detach", base]);
    let p = patch.to_str().unwrap();
    git(&clone, &["apply", "--check", p]);
    git(&clone, &["apply", p]);
    clone
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The fake's agents each have their own `/root`; the host's stays untouched.
#[test]
fn each_fake_vm_has_its_own_root() {
    let Some(home) = home_with(&["one", "two"]) else {
        return;
    };
    let marker = format!("banger-ws-test-{}", std::process::id());
    for vm in ["one", "two"] {
        guest_sh(&home, vm, &format!("echo {vm} > /root/{marker}"));
    }
    for vm in ["one", "two"] {
        assert_eq!(
            guest_sh(&home, vm, &format!("cat /root/{marker}")),
            format!("{vm}\n")
        );
    }
    assert!(
        !Path::new("/root").join(&marker).exists(),
        "the host's /root was written"
    );
}

/// The headline: prepare from a subdirectory, work in the guest (edits, a binary file, a
/// rename, a deletion, a mode change, a commit), export, apply to a clean clone on the host:
/// the host tree equals the guest's. Export leaves the guest's index and work tree alone.
#[test]
fn a_workspace_round_trips_through_the_guest_as_a_patch() {
    let Some(home) = home_with(&["box"]) else {
        return;
    };
    let root = rich_repo(&home);
    let head = git(&root, &["rev-parse", "HEAD"]).trim().to_string();

    let out = home.run(&[
        "vm",
        "workspace",
        "prepare",
        "box",
        root.join("src").to_str().unwrap(),
    ]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    for stage in [
        "[workspace] inspect: ",
        "[workspace] copy: ",
        "[workspace] checkout: ",
    ] {
        assert!(err.contains(stage), "no {stage:?} in {err}");
    }
    assert!(
        err.contains("1 untracked file not copied (use --include-untracked)"),
        "{err}"
    );
    assert!(
        text(&out.stdout).starts_with("prepared "),
        "{}",
        text(&out.stdout)
    );

    // Stored with the VM, shown by show and list.
    let ws = &home.vm("box")["workspace"];
    assert_eq!(ws["guest_path"], "/root/repo");
    assert_eq!(ws["host_path"], root.to_str().unwrap());
    assert_eq!(ws["head"], head.as_str());
    assert_eq!(ws["branch"], "main");
    assert_eq!(ws["mode"], "overlay");
    let show = home.ok(&["vm", "show", "box"]);
    assert!(
        show.contains("/root/repo") && show.contains("overlay"),
        "{show}"
    );
    let list = home.ok(&["vm", "list"]);
    assert!(list.lines().next().unwrap().contains("WORKSPACE"), "{list}");
    assert!(
        list.lines().nth(1).unwrap().trim_end().ends_with("app"),
        "{list}"
    );

    // The guest has the host's uncommitted change, not the ignored or untracked files.
    assert_eq!(guest_sh(&home, "box", "pwd"), "/root/repo\n");
    assert_eq!(
        guest_sh(&home, "box", "cat README.md"),
        "# app\n\nchanged on the host, not committed\n"
    );
    assert_eq!(
        guest_sh(&home, "box", "ls -A | sort | tr '\\n' ' '"),
        ".git .gitignore README.md assets doomed.txt run.sh src "
    );

    // Work in the guest: a commit, then uncommitted changes of every kind.
    guest_sh(
        &home,
        "box",
        "git mv src/old_name.rs src/new_name.rs && git rm -q doomed.txt && \
         git -c user.name=Guest -c user.email=g@example.com commit -q -am 'guest work'",
    );
    guest_sh(
        &home,
        "box",
        "echo 'pub fn g() {}' >> src/lib.rs && chmod +x run.sh && \
         head -c 3000 /dev/urandom > assets/new.bin && printf '\\000\\001\\002' >> assets/blob.bin",
    );
    let state = "git --no-optional-locks status --porcelain=v2 --untracked-files=all; sha256sum .git/index; git rev-parse HEAD";
    let before = guest_sh(&home, "box", state);

    let patch = home.path().join("work.patch");
    home.ok(&[
        "vm",
        "workspace",
        "export",
        "box",
        "--output",
        patch.to_str().unwrap(),
    ]);
    let stdout_patch = home
        .cmd(&["vm", "workspace", "export", "box"])
        .output()
        .unwrap();
    assert!(
        stdout_patch.status.success(),
        "{}",
        text(&stdout_patch.stderr)
    );
    assert_eq!(
        stdout_patch.stdout,
        std::fs::read(&patch).unwrap(),
        "stdout and --output agree"
    );
    assert_eq!(
        guest_sh(&home, "box", state),
        before,
        "export touched the guest"
    );

    let listed = json(&home.ok(&["vm", "workspace", "export", "box", "--json"]));
    assert_eq!(listed["base"], head.as_str());
    let changes: BTreeMap<String, String> = listed["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["change"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (path, change) in [
        ("README.md", "modified"),
        ("src/lib.rs", "modified"),
        ("src/new_name.rs", "renamed"),
        ("doomed.txt", "deleted"),
        ("run.sh", "modified"),
        ("assets/new.bin", "added"),
        ("assets/blob.bin", "modified"),
    ] {
        assert_eq!(
            changes.get(path).map(String::as_str),
            Some(change),
            "{path}: {listed}"
        );
    }
    assert_eq!(
        listed["patch_bytes"].as_u64(),
        Some(stdout_patch.stdout.len() as u64)
    );
    assert!(
        listed["patch"].is_string(),
        "without --output the JSON carries the patch"
    );
    let with_output = json(&home.ok(&[
        "vm",
        "workspace",
        "export",
        "box",
        "--json",
        "--output",
        patch.to_str().unwrap(),
    ]));
    assert!(with_output.get("patch").is_none() && with_output["output"].is_string());

    let clone = apply_on_clean_clone(&home, &root, &head, &patch);
    assert_eq!(
        host_tree(&clone),
        guest_tree(&home, "box"),
        "host tree != guest tree"
    );

    // A closed stdout (`| head -c 1`) ends the export quietly.
    let out = reading_one_byte(&mut home.cmd(&["vm", "workspace", "export", "box"]));
    assert_quiet_success("export | head -c 1", &out);

    // A second prepare is refused (the guest's work is there) unless replacing.
    let out = home.run(&["vm", "workspace", "prepare", "box", root.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("exists and is not empty"),
        "{}",
        text(&out.stderr)
    );
    home.ok(&[
        "vm",
        "workspace",
        "prepare",
        "box",
        root.to_str().unwrap(),
        "--replace",
    ]);
    assert_eq!(guest_sh(&home, "box", "git status --porcelain -- src"), "");
}

/// `vm run PATH -- CMD`: the command runs in the workspace and its status comes back
/// verbatim; the workspace survives a daemon restart; `vm exec` warns when the host's HEAD
/// moved, and `--auto-prepare` ships it again.
#[test]
fn vm_run_path_exec_warnings_and_auto_prepare() {
    let Some(home) = home_with(&[]) else {
        return;
    };
    let root = repo(
        &home,
        "proj",
        &[("Makefile", b"all:\n\techo made > out.txt\n")],
    );
    let out = home.run(&[
        "vm",
        "run",
        "--name",
        "w",
        "--image",
        "test-img",
        root.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "pwd; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/root/repo\n");

    home.ok(&["daemon", "stop"]);
    let ws = &home.vm("w")["workspace"];
    assert_eq!(
        ws["host_path"],
        root.to_str().unwrap(),
        "kept across a daemon restart"
    );

    let exec = |args: &[&str]| {
        let mut all = vec!["vm", "exec", "w", "-T"];
        all.extend_from_slice(args);
        home.cmd(&all).stdin(Stdio::null()).output().unwrap()
    };
    let out = exec(&["--", "git", "rev-parse", "HEAD"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stderr.is_empty(),
        "no warning while HEAD stands: {}",
        text(&out.stderr)
    );

    write(&root, "new.txt", b"new\n");
    git(&root, &["add", "new.txt"]);
    git(&root, &["commit", "-q", "-m", "second"]);
    let new_head = git(&root, &["rev-parse", "HEAD"]);
    let out = exec(&["--", "true"]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("moved since the workspace was prepared"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one warning line: {err}");

    let out = exec(&["--auto-prepare", "--", "git", "rev-parse", "HEAD"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), new_head);
    let out = exec(&["--", "cat", "new.txt"]);
    assert_eq!(
        (text(&out.stdout).as_str(), out.stderr.is_empty()),
        ("new\n", true)
    );
}

/// Bad PATHs are refused before any VM exists (and without a daemon); `--dry-run` prints the
/// plan and makes nothing; an export of a VM without a workspace says how to prepare one.
/// A repository `outer` with the repository `inner` as its submodule `vendor/inner`.
fn repo_with_submodule(home: &Home) -> PathBuf {
    let inner = repo(home, "inner", &[("lib.c", b"int x;\n")]);
    let outer = repo(home, "outer", &[("main.c", b"int main;\n")]);
    git(
        &outer,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            inner.to_str().unwrap(),
            "vendor/inner",
        ],
    );
    git(&outer, &["commit", "-q", "-m", "submodule"]);
    outer
}

#[test]
fn bad_workspace_input_leaves_nothing_behind() {
    let Some(home) = Home::for_vms("") else {
        return;
    };
    home.ok(&["daemon", "stop"]);
    let plain = home.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let bare = home.path().join("bare.git");
    git(
        home.path(),
        &["init", "-q", "--bare", bare.to_str().unwrap()],
    );
    let outer = repo_with_submodule(&home);
    let inner = outer.with_file_name("inner");
    let p = |p: &Path| p.to_str().unwrap().to_string();
    for (args, says) in [
        (vec![p(&plain)], "is not inside a git repository"),
        (vec![p(&bare)], "is a bare git repository"),
        (vec![p(&outer)], "only a full copy (--full-copy) ships them"),
        (
            vec![
                p(&inner),
                "--branch".into(),
                "x".into(),
                "--from".into(),
                "nope".into(),
            ],
            "\"nope\" is not a commit",
        ),
        (
            vec![p(&inner), "--branch".into(), "bad..name".into()],
            "\"bad..name\" is not a valid branch name",
        ),
    ] {
        let mut all: Vec<&str> = vec!["vm", "run", "--rm"];
        all.extend(args.iter().map(String::as_str));
        all.extend(["--", "true"]);
        let out = home.run(&all);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{all:?}: {err}");
        assert!(
            err.starts_with("banger: ") && err.contains(says),
            "{all:?}: {err}"
        );
        assert!(!home.socket().exists(), "{all:?} called the daemon");
    }

    // --dry-run: the exact file list and the mode, no daemon.
    let out = home.run(&["vm", "run", &p(&outer), "--full-copy", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan = text(&out.stdout);
    for line in [
        "mode: full copy\n",
        "C main.c\n",
        "C vendor/inner/lib.c\n",
        "C .gitmodules\n",
    ] {
        assert!(plan.contains(line), "no {line:?} in {plan}");
    }
    let out = home.run(&[
        "vm",
        "workspace",
        "prepare",
        "any",
        &p(&inner),
        "--dry-run",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(json(&text(&out.stdout))["mode"], "overlay");
    assert!(!home.socket().exists(), "--dry-run called the daemon");
    assert_eq!(home.vms(), Vec::<serde_json::Value>::new());

    // --branch without PATH is a usage error.
    let out = home.run(&["vm", "run", "--branch", "x", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    home.ok(&["vm", "create", "--name", "bare-vm", "--image", "test-img"]);
    let out = home.run(&["vm", "workspace", "export", "bare-vm"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(
            "VM bare-vm has no workspace; prepare one with: banger vm workspace prepare bare-vm PATH"
        ),
        "{}",
        text(&out.stderr)
    );
}

/// A full copy ships the submodule; `--from` a commit outside the depth-10 window starts a
/// guest branch there; a detached host HEAD is checked out detached.
#[test]
fn full_copies_old_commits_and_detached_heads() {
    let Some(home) = home_with(&["full", "old", "det"]) else {
        return;
    };
    let outer = repo_with_submodule(&home);
    home.ok(&[
        "vm",
        "workspace",
        "prepare",
        "full",
        outer.to_str().unwrap(),
        "--full-copy",
    ]);
    assert_eq!(
        guest_sh(&home, "full", "cat vendor/inner/lib.c"),
        "int x;\n"
    );
    assert_eq!(home.vm("full")["workspace"]["mode"], "full_copy");

    let long = repo(&home, "long", &[("n", b"0\n")]);
    let first = git(&long, &["rev-parse", "HEAD"]).trim().to_string();
    for i in 1..=12 {
        write(&long, "n", format!("{i}\n").as_bytes());
        git(&long, &["commit", "-q", "-am", &format!("c{i}")]);
    }
    home.ok(&[
        "vm",
        "workspace",
        "prepare",
        "old",
        long.to_str().unwrap(),
        "--branch",
        "old",
        "--from",
        &first,
    ]);
    assert_eq!(
        guest_sh(
            &home,
            "old",
            "git rev-parse HEAD; git symbolic-ref --short HEAD; cat n"
        ),
        format!("{first}\nold\n0\n")
    );

    git(&long, &["checkout", "-q", "--detach", "HEAD~3"]);
    let detached = git(&long, &["rev-parse", "HEAD"]);
    home.ok(&["vm", "workspace", "prepare", "det", long.to_str().unwrap()]);
    assert_eq!(guest_sh(&home, "det", "git rev-parse HEAD"), detached);
    assert_eq!(
        guest_sh(&home, "det", "git symbolic-ref -q HEAD || echo detached"),
        "detached\n"
    );
    assert!(home.vm("det")["workspace"]["branch"].is_null());
}

/// A repository that pins tools gets `mise install` in the workspace when the guest has
/// mise (here a stand-in on the agent's PATH, `/root/.local/bin`), and `vm exec` runs through
/// `mise exec --`; without mise it is one warning line and the prepare still succeeds.
#[test]
fn mise_installs_pinned_tools_and_wraps_exec() {
    let Some(home) = home_with(&["with", "without"]) else {
        return;
    };
    let root = repo(
        &home,
        "pins",
        &[(".tool-versions", b"nodejs 20\n"), ("x", b"x\n")],
    );
    guest_sh(
        &home,
        "with",
        "mkdir -p /root/.local/bin && printf '#!/bin/sh\\necho \"$*\" >> /root/mise.log\\n\
         [ \"$1\" = exec ] && shift 2 && exec \"$@\"\\nexit 0\\n' > /root/.local/bin/mise && \
         chmod +x /root/.local/bin/mise",
    );
    let out = home.run(&["vm", "workspace", "prepare", "with", root.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("[workspace] mise install (.tool-versions)"),
        "{err}"
    );
    assert!(!err.contains("warning"), "{err}");
    // Every command in the workspace goes through the stand-in too, which logs it first.
    assert_eq!(
        guest_sh(&home, "with", "sed -n 1p /root/mise.log"),
        "install\n"
    );
    let out = home
        .cmd(&["vm", "exec", "with", "-T", "--", "printf", "%s|", "a b"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "a b|", "{}", text(&out.stderr));
    assert_eq!(
        guest_sh(&home, "with", "sed -n 3p /root/mise.log"),
        "exec -- printf %s| a b\n"
    );

    let host_has_mise = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("mise").exists()));
    if !host_has_mise {
        let out = home.run(&[
            "vm",
            "workspace",
            "prepare",
            "without",
            root.to_str().unwrap(),
        ]);
        let err = text(&out.stderr);
        assert!(out.status.success(), "{err}");
        let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
        assert_eq!(warnings.len(), 1, "{err}");
        assert!(warnings[0].contains("the guest has no mise"), "{err}");
    }
}

/// A prepare that fails once the VM exists (here the daemon's git refuses to clone) under
/// `vm run --rm`: the error is shown and the VM it made is deleted.
#[test]
fn a_prepare_failure_under_rm_deletes_the_vm() {
    let Some(home) = Home::for_vms("") else {
        return;
    };
    let root = repo(&home, "proj", &[("a", b"a\n")]);
    let real_git = text(
        &host_tool("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    );
    let bin = home.path().join("fake-git");
    std::fs::create_dir_all(&bin).unwrap();
    write(
        &bin,
        "git",
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = clone ] && {{ echo 'fatal: clone refused by the test' >&2; exit 128; }}; done\nexec {} \"$@\"\n",
            real_git.trim()
        )
        .as_bytes(),
    );
    std::fs::set_permissions(
        bin.join("git"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // The daemon keeps the PATH of the CLI that started it: the fake git comes first.
    home.ok(&["daemon", "stop"]);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = home
        .cmd(&["vm", "list"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = home.run(&[
        "vm",
        "run",
        "--rm",
        "--name",
        "tmp",
        "--image",
        "test-img",
        root.to_str().unwrap(),
        "--",
        "true",
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("clone refused by the test"), "{err}");
    assert!(err.contains("deleted tmp"), "{err}");
    assert_eq!(home.vms(), Vec::<serde_json::Value>::new());
}
