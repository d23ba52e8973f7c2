//! banger's own `known_hosts` file: the guests' SSH host keys, recorded when a VM first
//! boots, so `vm ssh` and plain `ssh NAME.vm` check them strictly (no prompt) and an
//! address reused by a later VM never meets the earlier VM's keys ("host key changed").
//!
//! Each VM has its lines, one per host key, for the host patterns `NAME.vm` and its
//! address: `web.vm,172.30.0.5 ssh-ed25519 AAAA...`. [`set`] replaces every line that
//! names any of the VM's patterns (its name or its address, whoever they belonged to
//! before), [`remove`] drops them (a deleted VM). Lines of other hosts, comments and blank
//! lines are kept as they are; this module is text only, the caller owns the file.

use std::net::Ipv4Addr;

/// One host public key line's key part: `TYPE BASE64` (an `ssh_host_*_key.pub` without its
/// comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// `ssh-ed25519`, `ecdsa-sha2-nistp256`, ...
    pub kind: String,
    /// The key, base64.
    pub key: String,
}

/// A host key that cannot go into a known_hosts line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an SSH public key line (TYPE BASE64 [COMMENT])")]
pub struct HostKeyError(pub String);

impl HostKey {
    /// Reads a `.pub` line: a key type, the base64 key, an optional comment (dropped); one
    /// final newline is allowed.
    pub fn parse(line: &str) -> Result<Self, HostKeyError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let bad = || HostKeyError(line.chars().take(80).collect());
        let mut words = line.split_ascii_whitespace();
        let (Some(kind), Some(key)) = (words.next(), words.next()) else {
            return Err(bad());
        };
        let kind_ok = !kind.is_empty()
            && kind
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'@' || b == b'.');
        let key_ok = key.len() >= 16
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
        if !kind_ok || !key_ok || line.contains(['\n', '\r']) {
            return Err(bad());
        }
        Ok(Self {
            kind: kind.to_string(),
            key: key.to_string(),
        })
    }
}

/// The host patterns of VM `name` at `ip`.
fn patterns(name: &str, ip: Option<Ipv4Addr>) -> Vec<String> {
    let mut p = vec![format!("{name}.vm")];
    if let Some(ip) = ip {
        p.push(ip.to_string());
    }
    p
}

/// Whether a known_hosts line names any of `patterns`.
fn names_any(line: &str, patterns: &[String]) -> bool {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return false;
    }
    let mut words = trimmed.split_ascii_whitespace();
    let mut hosts = words.next().unwrap_or("");
    if hosts.starts_with('@') {
        hosts = words.next().unwrap_or("");
    }
    hosts
        .split(',')
        .any(|h| patterns.iter().any(|p| p.eq_ignore_ascii_case(h)))
}

fn without(file: &str, patterns: &[String]) -> String {
    file.split_inclusive('\n')
        .filter(|line| !names_any(line, patterns))
        .collect()
}

/// `file` with VM `name` (at `ip`) known by exactly `keys`; see the module docs.
pub fn set(file: &str, name: &str, ip: Option<Ipv4Addr>, keys: &[HostKey]) -> String {
    let patterns = patterns(name, ip);
    let mut out = without(file, &patterns);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let hosts = patterns.join(",");
    for k in keys {
        out.push_str(&format!("{hosts} {} {}\n", k.kind, k.key));
    }
    out
}

/// Whether `file` has a line for VM `name`.
pub fn knows(file: &str, name: &str) -> bool {
    let patterns = patterns(name, None);
    file.lines().any(|line| names_any(line, &patterns))
}

/// `file` without VM `name`'s lines, nor any for `ip`.
pub fn remove(file: &str, name: &str, ip: Option<Ipv4Addr>) -> String {
    without(file, &patterns(name, ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> HostKey {
        HostKey::parse(&format!("ssh-ed25519 {k} root@guest")).unwrap()
    }

    const IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 5);

    #[test]
    fn a_vm_is_known_by_name_and_address() {
        let out = set("", "web", Some(IP), &[key("AAAAC3NzaC1lZDI1NTE5AAAAIOne")]);
        assert_eq!(
            out,
            "web.vm,172.30.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne\n"
        );
        assert!(knows(&out, "web"));
        assert!(!knows(&out, "we") && !knows(&out, "db"));
        assert!(
            !knows("# web.vm ssh-ed25519 AAAA\n", "web"),
            "a comment is no line"
        );
        assert_eq!(remove(&out, "web", Some(IP)), "");
    }

    #[test]
    fn a_reused_address_or_name_replaces_the_old_keys_and_others_stay() {
        let other = "# mine\ndb.vm,172.30.0.9 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDb\n";
        let first = set(
            other,
            "old",
            Some(IP),
            &[key("AAAAC3NzaC1lZDI1NTE5AAAAIOld")],
        );
        // A new VM gets the old one's address: only its keys are known for it now.
        let second = set(
            &first,
            "web",
            Some(IP),
            &[key("AAAAC3NzaC1lZDI1NTE5AAAAINew")],
        );
        assert!(second.starts_with(other), "{second}");
        assert!(!second.contains("IOld"), "{second}");
        assert!(second.ends_with("web.vm,172.30.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINew\n"));
        // Recreated under the same name elsewhere: the name moves.
        let third = set(
            &second,
            "web",
            Some(Ipv4Addr::new(172, 30, 0, 6)),
            &[key("AAAAC3NzaC1lZDI1NTE5AAAAIN3w")],
        );
        assert_eq!(third.matches("web.vm").count(), 1, "{third}");
        assert!(third.starts_with(other));
    }

    #[test]
    #[allow(clippy::print_stderr)] // the visible reason for a skip
    fn openssh_reads_the_file_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("k");
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key_path)
            .status();
        let Ok(status) = made else {
            eprintln!("skipped: cannot run ssh-keygen");
            return;
        };
        assert!(status.success());
        let public = std::fs::read_to_string(key_path.with_extension("pub")).unwrap();
        let file = set("", "web", Some(IP), &[HostKey::parse(&public).unwrap()]);
        let known = dir.path().join("known_hosts");
        std::fs::write(&known, file).unwrap();
        for host in ["web.vm", "172.30.0.5"] {
            let out = std::process::Command::new("ssh-keygen")
                .arg("-F")
                .arg(host)
                .arg("-f")
                .arg(&known)
                .output()
                .unwrap();
            assert!(out.status.success(), "{host}: {out:?}");
        }
    }

    #[test]
    fn adversarial_key_lines_that_would_add_hosts_or_options_are_refused() {
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 short",
            "ssh-ed25519 AAAA\nevil.vm ssh-ed25519 AAAAAAAAAAAAAAAAAAAA",
            "@cert-authority * ssh-ed25519 AAAAAAAAAAAAAAAAAAAA",
            "ssh,ed25519 AAAAAAAAAAAAAAAAAAAA",
            "ssh-ed25519 AAAA*AAAAAAAAAAAAAAAA",
        ] {
            assert!(HostKey::parse(bad).is_err(), "{bad:?}");
        }
    }
}
