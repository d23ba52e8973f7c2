//! `banger mcp` driven by a real MCP client this project did not write: the reference Python
//! SDK (`mcp` from PyPI, installed by `scripts/setup` into `target/py`), as a stdio
//! client, against a daemon with the fake Firecracker and the host-mode agent. The checks
//! themselves are in `mcp_client.py`; this side sets the stage (a home, a repository inside
//! the owner's home, a VM made with the CLI) and checks what only the host can: the exported
//! patch applies to the repository.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::workspace::{git, private_root_or_skip};

/// The Python with the `mcp` package: `BANGER_MCP_PYTHON`, else `target/py` (made by
/// `scripts/setup`). `None` (after saying why) when it is missing, which fails the test
/// instead under `BANGER_REQUIRE_GUEST_TESTS=1` (CI, `scripts/test` as root).
#[allow(clippy::print_stderr)] // the visible reason for a skip
pub(crate) fn mcp_python() -> Option<PathBuf> {
    let python = std::env::var_os("BANGER_MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/py/bin/python3")
        });
    let has_sdk = Command::new(&python)
        .args(["-c", "import mcp.client.stdio"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_sdk {
        return Some(python);
    }
    let why = format!(
        "no Python with the mcp package at {} (run scripts/setup, or set BANGER_MCP_PYTHON)",
        python.display()
    );
    if std::env::var("BANGER_REQUIRE_GUEST_TESTS").is_ok_and(|v| v == "1") {
        panic!("{why}");
    }
    eprintln!("skipped: {why}");
    None
}

/// Runs `mcp_client.py` against `banger mcp` in `home`'s namespace with `spec` (the script's
/// fields besides the server's command and environment); panics with its output on failure.
pub(crate) fn run_client(home: &Home, python: &Path, mut spec: serde_json::Value) -> String {
    let ns = home.netns.clone().expect("a home in a network namespace");
    let user_home = home.path().join("user");
    std::fs::create_dir_all(&user_home).unwrap();
    let mut env = serde_json::json!({
        "BANGER_HOME": home.path(),
        "HOME": user_home,
        "PATH": std::env::var("PATH").unwrap_or_default(),
    });
    if let Ok(agent) = std::env::var("BANGER_AGENT_BIN") {
        env["BANGER_AGENT_BIN"] = agent.into();
    }
    spec["command"] = serde_json::json!(["ip", "netns", "exec", ns, BANGER, "mcp"]);
    spec["env"] = env;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli/mcp_client.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(spec.to_string())
        .current_dir(&user_home)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &user_home)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && stdout.ends_with("done\n"),
        "the MCP client failed\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Every tool through the Python client: runs, files, a workspace round trip, guard rails,
/// tool errors that keep the server serving, progress and cancellation.
#[test]
fn the_reference_python_client_drives_every_tool() {
    let Some(python) = mcp_python() else { return };
    let Some(home) = Home::for_vms(
        "stop_grace_secs = 3\nagent_wait_secs = 15\ndefault_image = \"test-img\"\n\
         [mcp]\nmax_vms = 3\n",
    ) else {
        return;
    };
    home.ok(&["vm", "create", "--name", "cli-vm"]);
    if !private_root_or_skip(&home) {
        return;
    }
    let repo = home.path().join("user/app");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "# app\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "initial"]);
    let outside = home.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let patch = home.path().join("export.patch");

    let out = run_client(
        &home,
        &python,
        serde_json::json!({
            "mode": "fake",
            "repo": repo,
            "outside": outside,
            "cli_vm": "cli-vm",
            "patch_out": patch,
            "max_vms": 3,
        }),
    );
    for step in [
        "initialize",
        "tools/list",
        "vm_run with progress",
        "file_write then file_read",
        "file_list",
        "workspace_prepare then workspace_export",
        "bad arguments are tool errors and the server keeps serving",
        "a cancelled vm_create leaves no VM",
        "vm_delete",
    ] {
        assert!(out.contains(&format!("ok {step}\n")), "{step}: {out}");
    }

    // The patch the agent got applies to the repository at the base it names.
    let base = std::fs::read_to_string(patch.with_extension("patch.base")).unwrap();
    let clone = home.path().join("clone");
    git(
        home.path(),
        &[
            "clone",
            "-q",
            repo.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    git(&clone, &["checkout", "-q", "--detach", base.trim()]);
    git(&clone, &["apply", "--check", patch.to_str().unwrap()]);
    git(&clone, &["apply", patch.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(clone.join("added.txt")).unwrap(),
        "new\n"
    );
    // The CLI's VM is untouched and says where it came from; nothing of MCP's is left.
    let shown = home.ok(&["vm", "show", "cli-vm"]);
    assert!(
        shown
            .lines()
            .any(|l| l.split_whitespace().eq(["origin", "api"])),
        "{shown}"
    );
    let names: Vec<String> = home
        .vms()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["cli-vm"]);
    // No TAP outlived the VMs MCP made, the cancelled create's included.
    let cli_tap = home.vm("cli-vm")["tap"].as_str().unwrap().to_string();
    assert_eq!(home.vm_taps(), [cli_tap]);
}

/// `--print-config` names this very binary, in each agent's format.
#[test]
fn print_config_gives_each_agent_its_format() {
    let home = Home::new();
    let exe = std::fs::canonicalize(BANGER).unwrap();
    let out = home.run(&["mcp", "--print-config", "claude"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mcpServers"]["banger"]["command"], exe.to_str().unwrap());
    assert_eq!(
        v["mcpServers"]["banger"]["args"],
        serde_json::json!(["mcp"])
    );
    // BANGER_HOME is passed on, so the agent's server uses the same daemon.
    assert_eq!(
        v["mcpServers"]["banger"]["env"]["BANGER_HOME"],
        home.path().to_str().unwrap()
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("claude mcp add --scope user"),
        "{out:?}"
    );
    let codex = home.ok(&["mcp", "--print-config", "codex"]);
    let t: toml::Value = toml::from_str(&codex).unwrap();
    assert_eq!(t["mcp_servers"]["banger"]["command"].as_str(), exe.to_str());
    let cursor = home.ok(&["mcp", "--print-config", "cursor"]);
    assert!(cursor.contains("\"mcpServers\""), "{cursor}");
    let bad = home.run(&["mcp", "--print-config", "vim"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    // Printing a config starts no daemon.
    assert!(!home.socket().exists());
}
