//! The managed `Host *.vm` block in the owner's `~/.ssh/config` (the test home's
//! `user/.ssh/config`): written at daemon start around the user's own entries, kept byte for
//! byte, refreshed idempotently, shown and removed by `banger ssh-config`; and the running
//! VMs' addresses that let `ssh NAME.vm` work without `.vm` DNS routing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// A user config with entries of its own that ends inside a `Host` stanza.
const USER: &str =
    "# my own\nHost github.com\n    User git\n\nHost *\n    ServerAliveInterval 30\n";

const BEGIN: &str = banger_core::ssh_config::BEGIN;

/// The test home's `~/.ssh/config`, made with `text` and `mode`.
fn user_config(home: &Home, text: &str, mode: u32) -> PathBuf {
    let ssh = home.path().join("user/.ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    let config = ssh.join("config");
    std::fs::write(&config, text).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).unwrap();
    config
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// What `ssh -G -F config host` says about `key`; `None` when ssh cannot run here.
fn ssh_option(config: &Path, host: &str, key: &str) -> Option<String> {
    let out = Command::new("ssh")
        .arg("-G")
        .arg("-F")
        .arg(config)
        .arg(host)
        .output()
        .ok()?;
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")).map(str::to_string))
}

/// `banger doctor`'s status for the ssh config block.
fn doctor_ssh(home: &Home) -> String {
    let out = home.run(&["doctor", "--json"]);
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "ssh config")
        .unwrap_or_else(|| panic!("no ssh config check: {checks}"));
    check["status"].as_str().unwrap().to_string()
}

#[test]
fn the_block_goes_around_the_user_s_entries_at_daemon_start_and_comes_out_exactly() {
    let home = Home::new();
    let config = user_config(&home, USER, 0o640);
    home.ok(&["daemon", "status"]);
    let written = read(&config);
    assert!(
        written.starts_with(&format!("{USER}\n{BEGIN}\n")),
        "{written}"
    );
    assert_eq!(mode(&config), 0o640, "the file's mode is kept");
    let block = home.ok(&["ssh-config", "--print"]);
    assert_eq!(written, format!("{USER}\n{block}"));
    for needle in [
        "Host *.vm\n",
        "User root\n",
        "IdentitiesOnly yes\n",
        "PasswordAuthentication no\n",
        "StrictHostKeyChecking yes\n",
    ] {
        assert!(block.contains(needle), "{needle:?} missing: {block}");
    }
    let state = home.path().join("state/ssh");
    assert!(
        block.contains(&format!(
            "UserKnownHostsFile \"{}\"",
            state.join("known_hosts").display()
        )),
        "{block}"
    );
    assert!(
        block.contains(&format!("Include \"{}\"", state.join("hosts").display())),
        "{block}"
    );

    // The real ssh: a VM name gets banger's options, the user's hosts keep theirs.
    if let Some(user) = ssh_option(&config, "web.vm", "user") {
        assert_eq!(user, "root");
        assert_eq!(
            ssh_option(&config, "web.vm", "identityfile").unwrap(),
            state.join("id_ed25519").display().to_string()
        );
        assert_eq!(
            ssh_option(&config, "web.vm", "serveraliveinterval").unwrap(),
            "30"
        );
        assert_eq!(ssh_option(&config, "github.com", "user").unwrap(), "git");
    }

    // A second daemon start and an explicit refresh change nothing.
    let before = std::fs::metadata(&config).unwrap().modified().unwrap();
    home.ok(&["daemon", "stop"]);
    home.ok(&["daemon", "status"]);
    assert_eq!(read(&config), written);
    assert!(
        home.ok(&["ssh-config"])
            .starts_with("banger's block is up to date in "),
        "an unchanged block is not rewritten"
    );
    assert_eq!(
        std::fs::metadata(&config).unwrap().modified().unwrap(),
        before
    );

    assert_eq!(doctor_ssh(&home), "PASS");

    // --remove gives the user's bytes back exactly; no flag writes the block again.
    let out = home.ok(&["ssh-config", "--remove"]);
    assert!(out.starts_with("removed banger's block from "), "{out}");
    assert_eq!(read(&config), USER);
    assert_eq!(mode(&config), 0o640);
    assert_eq!(doctor_ssh(&home), "WARN", "doctor sees the block is gone");
    assert_eq!(read(&config), USER, "doctor writes nothing");
    assert_eq!(
        home.ok(&["ssh-config", "--remove"]).trim(),
        format!("no banger block in {}", config.display())
    );
    home.ok(&["ssh-config"]);
    assert_eq!(read(&config), written);
    // Nothing but the config in ~/.ssh: no temporary file left.
    let names: Vec<_> = std::fs::read_dir(config.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["config"]);
}

#[test]
fn a_missing_ssh_dir_is_made_private_and_the_config_0600() {
    let home = Home::new();
    std::fs::create_dir_all(home.path().join("user")).unwrap();
    home.ok(&["daemon", "status"]);
    let ssh = home.path().join("user/.ssh");
    assert_eq!(mode(&ssh), 0o700);
    assert_eq!(mode(&ssh.join("config")), 0o600);
    assert_eq!(
        read(&ssh.join("config")),
        home.ok(&["ssh-config", "--print"])
    );
}

#[test]
fn ssh_config_false_leaves_the_user_s_config_alone_at_start() {
    let home = Home::new();
    let config = user_config(&home, USER, 0o600);
    std::fs::create_dir_all(home.path().join("config")).unwrap();
    std::fs::write(
        home.path().join("config/config.toml"),
        "ssh_config = false\n",
    )
    .unwrap();
    home.ok(&["daemon", "status"]);
    assert_eq!(read(&config), USER);
    // --print still shows it, and writes nothing.
    assert!(home.ok(&["ssh-config", "--print"]).starts_with(BEGIN));
    assert_eq!(read(&config), USER);
}

#[test]
fn adversarial_a_config_with_a_lone_marker_is_a_warning_not_a_failed_start() {
    let home = Home::new();
    let text = format!("Host x\n{BEGIN}\nHost mine\n    User me\n");
    let config = user_config(&home, &text, 0o600);
    home.ok(&["daemon", "status"]);
    assert_eq!(read(&config), text, "nothing is rewritten");
    let log = read(&home.path().join("state/bangerd.log"));
    assert!(log.contains("ssh config block not written"), "{log}");
    let out = home.run(&["ssh-config"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("banger: ") && err.contains("by hand") && err.contains(".ssh/config"),
        "{err}"
    );
    assert_eq!(read(&config), text);
}

/// `ssh NAME.vm` gets the running VM's address from the included stanzas, which follow
/// start, stop and delete; banger's known_hosts is what `vm ssh` checks against.
#[test]
fn running_vms_are_reached_by_address_without_dns_routing() {
    let Some(home) = Home::for_vms("") else {
        return;
    };
    let config = user_config(&home, USER, 0o600);
    home.ok(&["ssh-config"]);
    home.ok(&["vm", "create", "--name", "web", "--image", "test-img"]);
    let ip = home.vm("web")["ip"].as_str().unwrap().to_string();
    let Some(hostname) = ssh_option(&config, "web.vm", "hostname") else {
        return;
    };
    assert_eq!(hostname, ip);
    assert_eq!(
        ssh_option(&config, "other.vm", "hostname").unwrap(),
        "other.vm"
    );
    home.ok(&["vm", "stop", "web"]);
    assert_eq!(
        ssh_option(&config, "web.vm", "hostname").unwrap(),
        "web.vm",
        "a stopped VM has no address"
    );
    home.ok(&["vm", "start", "web"]);
    assert_eq!(ssh_option(&config, "web.vm", "hostname").unwrap(), ip);
    home.ok(&["vm", "delete", "web"]);
    assert_eq!(ssh_option(&config, "web.vm", "hostname").unwrap(), "web.vm");
    assert!(read(&config).starts_with(USER));
}
