//! The managed `Host *.vm` block banger keeps in the owner's `~/.ssh/config`, so plain
//! `ssh root@NAME.vm` uses banger's key and host keys with the options `banger vm ssh` uses.
//!
//! The block is written inline, between two marker lines ([`BEGIN`], [`END`]), not as an
//! `Include`: an `Include` after a user's last `Host` stanza would only apply inside that
//! stanza, while a `Host *.vm` line always starts a stanza of its own, wherever the user's
//! config ends.
//!
//! Rules, so that no user entry is ever lost or changed:
//! - [`apply`] replaces the bytes between the markers (markers included) and nothing else;
//!   with no block yet it appends one at the end, after a blank line (and after a newline
//!   when the file's last line has none). Applying the same block twice changes nothing.
//! - [`remove`] takes the block out again, and the blank line `apply` put before it, so
//!   apply-then-remove gives back the original bytes (plus the final newline a file
//!   without one got).
//! - A marker that does not pair up (a `BEGIN` without its `END`, an `END` alone, a
//!   `BEGIN` inside a block) is an error, and nothing is rewritten: what lies after a lone
//!   marker may be the user's.
//! - Several complete blocks (two banger versions, a copied file) all go; [`apply`] puts the
//!   new one where the first was.
//!
//! `NAME.vm` resolves only where the host routes `.vm` to banger's DNS (systemd-resolved);
//! elsewhere ssh reaches a VM by address: the block's first line `Include`s a file banger
//! owns ([`Block::hosts`], rendered by [`hosts_file`]) that holds one `Host NAME.vm` stanza
//! with `HostName IP` per running VM. That file changes whenever a VM starts, stops or goes,
//! the user's own config only when the block does. An `Include` inside a `Host` stanza
//! applies to that stanza only (ssh restores the stanza's match after it), and a missing
//! included file is no error.
//!
//! This module is text only; the caller reads and writes the file (keeping its mode).

use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The line that opens banger's block.
pub const BEGIN: &str = "# >>> banger: managed block, rewritten by banger; edit outside it >>>";
/// The line that closes banger's block.
pub const END: &str = "# <<< banger: managed block <<<";

/// What goes into the block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// banger's private key for guests.
    pub identity_file: PathBuf,
    /// banger's own known-hosts file, holding the guests' host keys.
    pub known_hosts: PathBuf,
    /// The running VMs' address stanzas ([`hosts_file`]), included by the block.
    pub hosts: PathBuf,
}

/// Why the config cannot be rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshConfigError {
    /// A path ssh_config cannot carry, even quoted.
    #[error(
        "{path:?} cannot be written into an ssh config (it holds a double quote or a line break)"
    )]
    Path {
        /// The path.
        path: PathBuf,
    },
    /// A marker line that does not pair up.
    #[error("line {line} of the ssh config is {what}; fix or remove banger's marker lines by hand")]
    Markers {
        /// 1-based line number.
        line: usize,
        /// What is wrong there.
        what: &'static str,
    },
}

fn quoted(path: &Path) -> Result<String, SshConfigError> {
    let text = path.to_string_lossy();
    if text.contains(['"', '\n', '\r']) || text.is_empty() {
        return Err(SshConfigError::Path {
            path: path.to_path_buf(),
        });
    }
    Ok(format!("\"{text}\""))
}

impl Block {
    /// The block's text, markers included, ending with a newline.
    pub fn render(&self) -> Result<String, SshConfigError> {
        let key = quoted(&self.identity_file)?;
        let known = quoted(&self.known_hosts)?;
        let hosts = quoted(&self.hosts)?;
        Ok(format!(
            "{BEGIN}\n\
             Host *.vm\n\
             \x20   Include {hosts}\n\
             \x20   User root\n\
             \x20   IdentityFile {key}\n\
             \x20   IdentitiesOnly yes\n\
             \x20   PreferredAuthentications publickey\n\
             \x20   PasswordAuthentication no\n\
             \x20   KbdInteractiveAuthentication no\n\
             \x20   UserKnownHostsFile {known}\n\
             \x20   StrictHostKeyChecking yes\n\
             \x20   LogLevel ERROR\n\
             {END}\n"
        ))
    }
}

/// The included file of [`Block::hosts`]: a `Host NAME.vm` stanza with `HostName IP` for
/// each of `vms` (running VMs with an address), in the order given. A name that is not a
/// VM name (which could carry a pattern or another keyword) is left out.
pub fn hosts_file<'a>(vms: impl IntoIterator<Item = (&'a str, Ipv4Addr)>) -> String {
    let mut out =
        String::from("# Written by banger: the running VMs' addresses, for its Host *.vm block.\n");
    for (name, ip) in vms {
        if crate::names::validate_vm_name(name).is_ok() {
            out.push_str(&format!("Host {name}.vm\n    HostName {ip}\n"));
        }
    }
    out
}

/// The byte ranges of every complete block, whole lines with their newlines.
fn blocks(config: &str) -> Result<Vec<Range<usize>>, SshConfigError> {
    let mut found = Vec::new();
    let mut open: Option<usize> = None;
    let mut at = 0;
    for (i, line) in config.split_inclusive('\n').enumerate() {
        let text = line.trim_end_matches(['\n', '\r']).trim_end();
        if text == BEGIN {
            if open.is_some() {
                return Err(SshConfigError::Markers {
                    line: i + 1,
                    what: "a banger block's opening marker inside another banger block",
                });
            }
            open = Some(at);
        } else if text == END {
            let Some(start) = open.take() else {
                return Err(SshConfigError::Markers {
                    line: i + 1,
                    what: "a banger block's closing marker with no opening one",
                });
            };
            found.push(start..at + line.len());
        }
        at += line.len();
    }
    if let Some(start) = open {
        let line = config[..start].matches('\n').count() + 1;
        return Err(SshConfigError::Markers {
            line,
            what: "a banger block's opening marker with no closing one",
        });
    }
    Ok(found)
}

/// `config` with every banger block taken out; also where the first one was.
fn without_blocks(config: &str) -> Result<(String, Option<usize>), SshConfigError> {
    let found = blocks(config)?;
    let mut out = String::with_capacity(config.len());
    let mut first = None;
    let mut from = 0;
    for range in found {
        let mut before = &config[from..range.start];
        // The blank line apply put before the block goes with it.
        for blank in ["\n", "\r\n"] {
            let first_line = from == 0 && before == blank;
            let after_a_line = before.len() > blank.len()
                && before.ends_with(blank)
                && before[..before.len() - blank.len()].ends_with('\n');
            if first_line || after_a_line {
                before = &before[..before.len() - blank.len()];
                break;
            }
        }
        out.push_str(before);
        first.get_or_insert(out.len());
        from = range.end;
    }
    out.push_str(&config[from..]);
    Ok((out, first))
}

/// `config` with `block` as its banger block (see the module docs).
pub fn apply(config: &str, block: &Block) -> Result<String, SshConfigError> {
    let rendered = block.render()?;
    let (mut rest, first) = without_blocks(config)?;
    match first {
        Some(at) => {
            let mut insert = String::new();
            if at > 0 {
                insert.push('\n');
            }
            insert.push_str(&rendered);
            rest.insert_str(at, &insert);
        }
        None => {
            if !rest.is_empty() {
                if !rest.ends_with('\n') {
                    rest.push('\n');
                }
                rest.push('\n');
            }
            rest.push_str(&rendered);
        }
    }
    Ok(rest)
}

/// `config` without banger's block (see the module docs).
pub fn remove(config: &str) -> Result<String, SshConfigError> {
    Ok(without_blocks(config)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> Block {
        Block {
            identity_file: "/home/me/.local/state/banger/ssh/id_ed25519".into(),
            known_hosts: "/home/me/.local/state/banger/ssh/known hosts".into(),
            hosts: "/home/me/.local/state/banger/ssh/hosts".into(),
        }
    }

    /// A user config that ends inside a `Host` stanza, with no final newline.
    const USER: &str = "# mine\nHost github.com\n  User git\n\nHost *\n  ServerAliveInterval 30";

    #[test]
    fn a_fresh_config_gets_the_block_and_nothing_else() {
        let out = apply("", &block()).unwrap();
        assert_eq!(out, block().render().unwrap());
        assert!(out.contains("Host *.vm\n"));
        assert!(out.contains("IdentityFile \"/home/me/.local/state/banger/ssh/id_ed25519\"\n"));
        assert!(
            out.contains("UserKnownHostsFile \"/home/me/.local/state/banger/ssh/known hosts\"\n")
        );
        assert!(out.contains("StrictHostKeyChecking yes\n"));
        assert_eq!(remove(&out).unwrap(), "");
    }

    #[test]
    fn user_entries_are_kept_byte_for_byte_and_the_block_starts_its_own_stanza() {
        let out = apply(USER, &block()).unwrap();
        assert!(out.starts_with(USER), "{out}");
        let tail = &out[USER.len()..];
        assert!(tail.starts_with("\n\n# >>> banger"), "{tail:?}");
        // Idempotent.
        assert_eq!(apply(&out, &block()).unwrap(), out);
        // Removal gives the user's bytes back, with the final newline their last line got.
        assert_eq!(remove(&out).unwrap(), format!("{USER}\n"));
        let with_newline = format!("{USER}\n");
        let out = apply(&with_newline, &block()).unwrap();
        assert_eq!(remove(&out).unwrap(), with_newline);
    }

    #[test]
    fn a_changed_block_is_replaced_in_place_and_what_follows_it_is_kept() {
        let old = Block {
            identity_file: "/old/key".into(),
            known_hosts: "/old/known".into(),
            hosts: "/old/hosts".into(),
        };
        let user_after = "Host work\n  HostName 10.0.0.1\n";
        let config = format!(
            "{}\n{}{user_after}",
            "Host a\n  User b\n",
            old.render().unwrap()
        );
        let out = apply(&config, &block()).unwrap();
        assert!(!out.contains("/old/key"), "{out}");
        assert_eq!(
            out,
            format!(
                "Host a\n  User b\n\n{}{user_after}",
                block().render().unwrap()
            )
        );
        assert_eq!(
            remove(&out).unwrap(),
            format!("Host a\n  User b\n{user_after}")
        );
    }

    #[test]
    fn duplicated_blocks_collapse_into_one() {
        let b = block().render().unwrap();
        let config = format!("Host x\n\n{b}Host y\n\n{b}");
        let out = apply(&config, &block()).unwrap();
        assert_eq!(out.matches(BEGIN).count(), 1, "{out}");
        assert_eq!(out, format!("Host x\n\n{b}Host y\n"));
    }

    #[test]
    fn adversarial_unpaired_markers_are_refused_and_nothing_is_rewritten() {
        let b = block().render().unwrap();
        let cases = [
            (format!("Host x\n{BEGIN}\nHost y\n"), 2, "no closing"),
            (format!("{END}\nHost y\n"), 1, "no opening"),
            (format!("{BEGIN}\n{b}"), 2, "inside another"),
        ];
        for (config, line, what) in cases {
            for err in [
                apply(&config, &block()).unwrap_err(),
                remove(&config).unwrap_err(),
            ] {
                match &err {
                    SshConfigError::Markers { line: l, what: w } => {
                        assert_eq!(*l, line, "{config:?}");
                        assert!(w.contains(what), "{w}");
                    }
                    other => panic!("{other:?}"),
                }
                assert!(err.to_string().contains("by hand"));
            }
        }
    }

    #[test]
    fn adversarial_paths_that_would_break_out_of_their_quotes_are_refused() {
        for bad in ["/a\"b", "/a\nHost *", "/a\rb", ""] {
            let b = Block {
                identity_file: bad.into(),
                known_hosts: "/k".into(),
                hosts: "/h".into(),
            };
            assert!(matches!(apply("", &b), Err(SshConfigError::Path { .. })));
        }
    }

    /// The real OpenSSH reads the block for `NAME.vm` even after a user stanza left open,
    /// and leaves other hosts alone.
    #[test]
    #[allow(clippy::print_stderr)] // the visible reason for a skip
    fn openssh_applies_the_block_to_vm_names_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, apply(USER, &block()).unwrap()).unwrap();
        let resolve = |host: &str| {
            std::process::Command::new("ssh")
                .arg("-G")
                .arg("-F")
                .arg(&path)
                .arg(host)
                .output()
        };
        let out = match resolve("web.vm") {
            Ok(out) => out,
            Err(e) => {
                eprintln!("skipped: cannot run ssh: {e}");
                return;
            }
        };
        assert!(out.status.success(), "{out:?}");
        let vm = String::from_utf8(out.stdout).unwrap();
        assert!(vm.contains("\nuser root\n"), "{vm}");
        assert!(
            vm.contains("identityfile /home/me/.local/state/banger/ssh/id_ed25519\n"),
            "{vm}"
        );
        assert!(vm.contains("stricthostkeychecking true\n"), "{vm}");
        assert!(vm.contains("serveraliveinterval 30\n"), "{vm}");
        let other = String::from_utf8(resolve("github.com").unwrap().stdout).unwrap();
        assert!(other.contains("\nuser git\n"), "{other}");
        assert!(!other.contains("banger"), "{other}");
    }

    #[test]
    fn adversarial_the_hosts_file_takes_vm_names_only() {
        let ip = Ipv4Addr::new(172, 30, 0, 5);
        let text = hosts_file([
            ("web", ip),
            ("*", ip),
            ("a b", ip),
            ("x\nHost *", ip),
            ("db", Ipv4Addr::new(172, 30, 0, 6)),
        ]);
        assert_eq!(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            [
                "Host web.vm",
                "    HostName 172.30.0.5",
                "Host db.vm",
                "    HostName 172.30.0.6"
            ]
        );
    }

    /// The included stanzas give a running VM its address, other `.vm` names keep theirs,
    /// and a user stanza after the block is untouched by them.
    #[test]
    #[allow(clippy::print_stderr)] // the visible reason for a skip
    fn openssh_reaches_running_vms_by_address_through_the_included_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let b = Block {
            hosts: dir.path().join("hosts"),
            ..block()
        };
        std::fs::write(
            &b.hosts,
            hosts_file([("web", Ipv4Addr::new(172, 30, 0, 5))]),
        )
        .unwrap();
        std::fs::set_permissions(&b.hosts, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.path().join("config");
        let config = apply(USER, &b).unwrap() + "Host after\n  User later\n";
        std::fs::write(&path, config).unwrap();
        let field = |host: &str, key: &str| -> Option<String> {
            let out = std::process::Command::new("ssh")
                .arg("-G")
                .arg("-F")
                .arg(&path)
                .arg(host)
                .output()
                .ok()?;
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key} ")).map(str::to_string))
        };
        let Some(web) = field("web.vm", "hostname") else {
            eprintln!("skipped: cannot run ssh");
            return;
        };
        assert_eq!(web, "172.30.0.5");
        assert_eq!(field("web.vm", "user").unwrap(), "root");
        assert_eq!(field("db.vm", "hostname").unwrap(), "db.vm");
        assert_eq!(field("after", "hostname").unwrap(), "after");
        assert_eq!(field("after", "user").unwrap(), "later");
    }

    #[test]
    fn a_marker_with_trailing_spaces_or_crlf_still_pairs() {
        let b = block().render().unwrap().replace('\n', "\r\n");
        let config = format!("Host x\r\n\r\n{b}");
        assert_eq!(remove(&config).unwrap(), "Host x\r\n");
    }
}
