//! Reading listening sockets and machine facts from a procfs tree.
//!
//! Listening sockets come from `net/tcp`, `net/tcp6`, `net/udp` and `net/udp6`: TCP sockets in
//! LISTEN state (`0A`) and UDP sockets that are not connected (remote address all zero). Each
//! socket's inode is matched to a process by scanning the `socket:[INODE]` links under
//! `<pid>/fd/`. Everything is read below a root directory (`/proc` in production) so tests can
//! point it at fixture files.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use banger_agent_proto::wire::{Family, Listener, Proto};

/// The default procfs mount point.
pub const DEFAULT_PROC_ROOT: &str = "/proc";

/// TCP state number of a listening socket, as printed in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// The socket tables read, with what their rows are and whether the table may be absent (the
/// IPv6 tables are missing when IPv6 is disabled).
const TABLES: [(&str, Proto, Family, bool); 4] = [
    ("net/tcp", Proto::Tcp, Family::Ipv4, false),
    ("net/tcp6", Proto::Tcp, Family::Ipv6, true),
    ("net/udp", Proto::Udp, Family::Ipv4, false),
    ("net/udp6", Proto::Udp, Family::Ipv6, true),
];

/// A failure reading or understanding a procfs file.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot parse {} line {line}: {reason}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// A procfs tree rooted at some directory.
#[derive(Debug, Clone)]
pub struct ProcFs {
    root: PathBuf,
}

/// One row of a socket table that accepts traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawSocket {
    proto: Proto,
    family: Family,
    address: IpAddr,
    port: u16,
    inode: u64,
}

/// What is known about the process owning a socket.
#[derive(Debug, Clone, Default)]
struct ProcessInfo {
    process: Option<String>,
    command: Option<String>,
}

impl ProcFs {
    /// A procfs tree rooted at `root` (normally `/proc`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory this tree reads from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every listening TCP socket and unconnected UDP socket, with its owning process when it
    /// can be found, sorted by protocol, family, port and address.
    ///
    /// A missing IPv6 table (IPv6 disabled) is not an error; a missing IPv4 table is.
    pub fn listeners(&self) -> Result<Vec<Listener>, ProcError> {
        let mut sockets = Vec::new();
        for (rel, proto, family, optional) in TABLES {
            let path = self.root.join(rel);
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if optional && e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ProcError::Read { path, source }),
            };
            sockets.extend(parse_table(&text, proto, family, &path)?);
        }

        let wanted: HashSet<u64> = sockets
            .iter()
            .map(|s| s.inode)
            .filter(|&i| i != 0)
            .collect();
        let owners = if wanted.is_empty() {
            HashMap::new()
        } else {
            self.socket_owners(&wanted)?
        };

        let mut infos: HashMap<u32, ProcessInfo> = HashMap::new();
        let mut listeners: Vec<Listener> = sockets
            .into_iter()
            .map(|s| {
                let pid = owners.get(&s.inode).copied();
                let info = pid
                    .map(|p| {
                        infos
                            .entry(p)
                            .or_insert_with(|| self.process_info(p))
                            .clone()
                    })
                    .unwrap_or_default();
                Listener {
                    proto: s.proto,
                    family: s.family,
                    address: s.address.to_string(),
                    port: s.port,
                    pid,
                    process: info.process,
                    command: info.command,
                }
            })
            .collect();
        listeners.sort_by(|a, b| {
            (a.proto, a.family, a.port, &a.address, a.pid)
                .cmp(&(b.proto, b.family, b.port, &b.address, b.pid))
        });
        listeners.dedup();
        Ok(listeners)
    }

    /// Seconds since boot, from `uptime`.
    pub fn uptime_secs(&self) -> Result<u64, ProcError> {
        let path = self.root.join("uptime");
        let text = read(&path)?;
        let first = text.split_whitespace().next().unwrap_or("");
        let secs: f64 = first.parse().map_err(|_| ProcError::Parse {
            path: path.clone(),
            line: 1,
            reason: format!("expected seconds, found {first:?}"),
        })?;
        if !secs.is_finite() || secs < 0.0 {
            return Err(ProcError::Parse {
                path,
                line: 1,
                reason: format!("uptime out of range: {first}"),
            });
        }
        Ok(secs as u64)
    }

    /// The hostname, from `sys/kernel/hostname`.
    pub fn hostname(&self) -> Result<String, ProcError> {
        let path = self.root.join("sys/kernel/hostname");
        Ok(read(&path)?.trim_end().to_string())
    }

    /// Maps each wanted socket inode to the lowest pid holding it.
    ///
    /// Processes that vanish or whose fds cannot be read are skipped: they are not an error.
    fn socket_owners(&self, wanted: &HashSet<u64>) -> Result<HashMap<u64, u32>, ProcError> {
        let entries = std::fs::read_dir(&self.root).map_err(|source| ProcError::Read {
            path: self.root.clone(),
            source,
        })?;
        let mut owners: HashMap<u64, u32> = HashMap::new();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                let Ok(target) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                let Some(inode) = target.to_str().and_then(socket_inode) else {
                    continue;
                };
                if wanted.contains(&inode) {
                    owners
                        .entry(inode)
                        .and_modify(|p| *p = (*p).min(pid))
                        .or_insert(pid);
                }
            }
        }
        Ok(owners)
    }

    /// The processes of session `sid` (those whose `stat` names it as their session), the
    /// leader included. Processes that cannot be read (gone meanwhile) are left out.
    pub fn session_members(&self, sid: u32) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut members: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(self.root.join(pid.to_string()).join("stat"))
                    .ok()
                    .and_then(|stat| stat_session(&stat))
                    == Some(sid)
            })
            .collect();
        members.sort_unstable();
        members
    }

    /// Name and command line of a process; parts that cannot be read are left out.
    fn process_info(&self, pid: u32) -> ProcessInfo {
        let dir = self.root.join(pid.to_string());
        let process = std::fs::read_to_string(dir.join("comm"))
            .ok()
            .map(|s| s.trim_end_matches('\n').to_string())
            .filter(|s| !s.is_empty());
        let command = std::fs::read(dir.join("cmdline"))
            .ok()
            .and_then(|b| join_cmdline(&b));
        ProcessInfo { process, command }
    }
}

impl Default for ProcFs {
    fn default() -> Self {
        Self::new(DEFAULT_PROC_ROOT)
    }
}

fn read(path: &Path) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The session id in a `/proc/<pid>/stat` line: the fourth field after the command name,
/// which is in parentheses and may itself contain spaces and parentheses.
fn stat_session(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    // state, ppid, pgrp, session
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// The inode in a `socket:[INODE]` fd link target.
fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// `/proc/<pid>/cmdline` with NULs turned into spaces; `None` when empty (kernel threads).
fn join_cmdline(bytes: &[u8]) -> Option<String> {
    let parts: Vec<String> = bytes
        .split(|&b| b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let joined = parts.join(" ");
    let trimmed = joined.trim_end();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// Parses one socket table, keeping only rows that accept traffic.
fn parse_table(
    text: &str,
    proto: Proto,
    family: Family,
    path: &Path,
) -> Result<Vec<RawSocket>, ProcError> {
    let mut out = Vec::new();
    // The first line is the column header.
    for (idx, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let err = |reason: String| ProcError::Parse {
            path: path.to_path_buf(),
            line: idx + 1,
            reason,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 10 {
            return Err(err(format!(
                "expected at least 10 fields, found {}",
                fields.len()
            )));
        }
        let (local, local_port) = parse_endpoint(fields[1], family).map_err(&err)?;
        let (remote, remote_port) = parse_endpoint(fields[2], family).map_err(&err)?;
        let state = fields[3];
        let accepts = match proto {
            Proto::Tcp => state.eq_ignore_ascii_case(TCP_LISTEN),
            Proto::Udp => remote.is_unspecified() && remote_port == 0,
        };
        if !accepts {
            continue;
        }
        let inode: u64 = fields[9]
            .parse()
            .map_err(|_| err(format!("bad inode {:?}", fields[9])))?;
        out.push(RawSocket {
            proto,
            family,
            address: local,
            port: local_port,
            inode,
        });
    }
    Ok(out)
}

/// Decodes `HEXADDR:HEXPORT` as printed by the kernel.
///
/// The address is the in-memory (network order) bytes printed as 32-bit words in host byte
/// order, so each 8-digit group is parsed as a word and its native-endian bytes are the address
/// bytes. The port is printed as a plain number.
fn parse_endpoint(field: &str, family: Family) -> Result<(IpAddr, u16), String> {
    let (addr_hex, port_hex) = field
        .split_once(':')
        .ok_or_else(|| format!("endpoint {field:?} has no ':'"))?;
    let port = u16::from_str_radix(port_hex, 16).map_err(|_| format!("bad port {port_hex:?}"))?;
    let words = hex_words(addr_hex).ok_or_else(|| format!("bad address {addr_hex:?}"))?;
    let addr = match (family, words.as_slice()) {
        (Family::Ipv4, [w]) => IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes())),
        (Family::Ipv6, [a, b, c, d]) => {
            let mut bytes = [0u8; 16];
            for (chunk, w) in bytes.chunks_exact_mut(4).zip([a, b, c, d]) {
                chunk.copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => {
            return Err(format!(
                "address {addr_hex:?} has the wrong length for {family:?}"
            ));
        }
    };
    Ok((addr, port))
}

/// Splits a hex string into 8-digit 32-bit words.
fn hex_words(hex: &str) -> Option<Vec<u32>> {
    if hex.is_empty() || !hex.len().is_multiple_of(8) || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(8)
        .map(|i| u32::from_str_radix(&hex[i..i + 8], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const TCP_HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    const TCP6_HEADER: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    const UDP_HEADER: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n";

    /// Builds a fake procfs tree in a tempdir.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("net")).unwrap();
            Self { dir }
        }

        fn file(&self, rel: &str, contents: &[u8]) {
            let path = self.dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }

        fn process(&self, pid: u32, comm: &str, cmdline: &[u8], fds: &[&str]) {
            self.file(&format!("{pid}/comm"), format!("{comm}\n").as_bytes());
            self.file(&format!("{pid}/cmdline"), cmdline);
            let fd_dir = self.dir.path().join(format!("{pid}/fd"));
            std::fs::create_dir_all(&fd_dir).unwrap();
            for (n, target) in fds.iter().enumerate() {
                symlink(target, fd_dir.join(n.to_string())).unwrap();
            }
        }

        fn procfs(&self) -> ProcFs {
            ProcFs::new(self.dir.path())
        }
    }

    #[test]
    fn decodes_ipv4_little_endian() {
        let (a, p) = parse_endpoint("0100007F:1F90", Family::Ipv4).unwrap();
        assert_eq!(a, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(p, 8080);
        let (a, p) = parse_endpoint("0F02000A:0016", Family::Ipv4).unwrap();
        assert_eq!(a, "10.0.2.15".parse::<IpAddr>().unwrap());
        assert_eq!(p, 22);
    }

    #[test]
    fn decodes_ipv6_and_v4_mapped() {
        let (a, p) = parse_endpoint("00000000000000000000000000000000:0035", Family::Ipv6).unwrap();
        assert_eq!(a, "::".parse::<IpAddr>().unwrap());
        assert_eq!(p, 53);
        let (a, _) = parse_endpoint("00000000000000000000000001000000:0050", Family::Ipv6).unwrap();
        assert_eq!(a, "::1".parse::<IpAddr>().unwrap());
        let (a, _) = parse_endpoint("0000000000000000FFFF00000100007F:0050", Family::Ipv6).unwrap();
        assert_eq!(a, "::ffff:127.0.0.1".parse::<IpAddr>().unwrap());
        let (a, _) = parse_endpoint("B80D0120000000000000000001000000:01BB", Family::Ipv6).unwrap();
        assert_eq!(a, "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn rejects_malformed_endpoints() {
        assert!(parse_endpoint("0100007F", Family::Ipv4).is_err());
        assert!(parse_endpoint("0100007F:XYZ1", Family::Ipv4).is_err());
        assert!(parse_endpoint("0100007:0016", Family::Ipv4).is_err());
        assert!(parse_endpoint("0100007F:0016", Family::Ipv6).is_err());
        assert!(parse_endpoint("G100007F:0016", Family::Ipv4).is_err());
    }

    #[test]
    fn tcp_keeps_only_listen_state() {
        let text = format!(
            "{TCP_HEADER}\
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1002 1 0000000000000000 100 0 0 10 0\n\
   2: 0F02000A:0016 0202000A:C350 01 00000000:00000000 02:0009A2D6 00000000     0        0 1003 4 0000000000000000 20 4 29 10 -1\n\
   3: 0100007F:A1B2 0100007F:1F90 06 00000000:00000000 03:00000F7C 00000000     0        0 0 3 0000000000000000\n"
        );
        let rows = parse_table(&text, Proto::Tcp, Family::Ipv4, Path::new("tcp")).unwrap();
        assert_eq!(
            rows,
            vec![
                RawSocket {
                    proto: Proto::Tcp,
                    family: Family::Ipv4,
                    address: "0.0.0.0".parse().unwrap(),
                    port: 22,
                    inode: 1001
                },
                RawSocket {
                    proto: Proto::Tcp,
                    family: Family::Ipv4,
                    address: "127.0.0.1".parse().unwrap(),
                    port: 8080,
                    inode: 1002
                },
            ]
        );
    }

    #[test]
    fn udp_keeps_only_unconnected() {
        let text = format!(
            "{UDP_HEADER}\
  120: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 2001 2 0000000000000000 0\n\
  200: 0F02000A:9C40 08080808:0035 01 00000000:00000000 00:00000000 00000000  1000        0 2002 2 0000000000000000 0\n"
        );
        let rows = parse_table(&text, Proto::Udp, Family::Ipv4, Path::new("udp")).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].address, "127.0.0.53".parse::<IpAddr>().unwrap());
        assert_eq!(rows[0].port, 53);
        assert_eq!(rows[0].inode, 2001);
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let text = format!("{TCP_HEADER}   0: 00000000:0016 00000000:0000 0A\n");
        let err =
            parse_table(&text, Proto::Tcp, Family::Ipv4, Path::new("/x/net/tcp")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/x/net/tcp"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn cmdline_and_socket_link_helpers() {
        assert_eq!(
            join_cmdline(b"python3\0-m\0http.server\08000\0").as_deref(),
            Some("python3 -m http.server 8000")
        );
        assert_eq!(join_cmdline(b""), None);
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn listeners_join_processes_from_fixture_tree() {
        let fx = Fixture::new();
        fx.file(
            "net/tcp",
            format!(
                "{TCP_HEADER}\
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1002 1 0000000000000000 100 0 0 10 0\n"
            )
            .as_bytes(),
        );
        fx.file(
            "net/tcp6",
            format!(
                "{TCP6_HEADER}\
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 100 0 0 10 0\n"
            )
            .as_bytes(),
        );
        fx.file(
            "net/udp",
            format!(
                "{UDP_HEADER}\
  120: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 2001 2 0000000000000000 0\n"
            )
            .as_bytes(),
        );
        // net/udp6 is absent, as with IPv6 disabled.
        fx.process(
            412,
            "sshd",
            b"sshd: /usr/sbin/sshd -D [listener]\0",
            &["/dev/null", "socket:[1001]", "socket:[1003]"],
        );
        // A forked worker sharing sshd's socket: the lower pid wins.
        fx.process(9000, "sshd", b"sshd: worker\0", &["socket:[1001]"]);
        fx.process(
            777,
            "python3",
            b"python3\0-m\0http.server\08080\0",
            &["pipe:[5]", "socket:[1002]"],
        );
        // Not a process directory.
        fx.file("self-ish/fd/0", b"");

        let ls = fx.procfs().listeners().unwrap();
        type Row<'a> = (Proto, Family, &'a str, u16, Option<u32>, Option<&'a str>);
        let summary: Vec<Row<'_>> = ls
            .iter()
            .map(|l| {
                (
                    l.proto,
                    l.family,
                    l.address.as_str(),
                    l.port,
                    l.pid,
                    l.process.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    Proto::Tcp,
                    Family::Ipv4,
                    "0.0.0.0",
                    22,
                    Some(412),
                    Some("sshd")
                ),
                (
                    Proto::Tcp,
                    Family::Ipv4,
                    "127.0.0.1",
                    8080,
                    Some(777),
                    Some("python3")
                ),
                (Proto::Tcp, Family::Ipv6, "::", 22, Some(412), Some("sshd")),
                (Proto::Udp, Family::Ipv4, "127.0.0.53", 53, None, None),
            ]
        );
        assert_eq!(
            ls[1].command.as_deref(),
            Some("python3 -m http.server 8080")
        );
        assert_eq!(ls[3].command, None);
    }

    #[test]
    fn missing_ipv4_table_is_an_error() {
        let fx = Fixture::new();
        let err = fx.procfs().listeners().unwrap_err();
        assert!(matches!(err, ProcError::Read { .. }), "{err}");
        assert!(err.to_string().contains("net/tcp"), "{err}");
    }

    #[test]
    fn missing_ipv6_tables_are_fine() {
        let fx = Fixture::new();
        fx.file("net/tcp", TCP_HEADER.as_bytes());
        fx.file("net/udp", UDP_HEADER.as_bytes());
        assert_eq!(fx.procfs().listeners().unwrap(), vec![]);
    }

    #[test]
    fn uptime_and_hostname() {
        let fx = Fixture::new();
        fx.file("uptime", b"12345.67 23456.78\n");
        fx.file("sys/kernel/hostname", b"devbox\n");
        let p = fx.procfs();
        assert_eq!(p.uptime_secs().unwrap(), 12345);
        assert_eq!(p.hostname().unwrap(), "devbox");
        fx.file("uptime", b"soon\n");
        assert!(p.uptime_secs().unwrap_err().to_string().contains("soon"));
    }

    #[test]
    fn real_proc_is_readable() {
        let p = ProcFs::default();
        p.listeners().unwrap();
        assert!(p.uptime_secs().unwrap() > 0);
        assert!(!p.hostname().unwrap().is_empty());
    }

    #[test]
    fn session_members_reads_the_session_field_past_odd_command_names() {
        let f = Fixture::new();
        f.file("100/stat", b"100 (sh) S 1 100 100 0 -1 4194560 0 0\n");
        f.file("101/stat", b"101 (a) b (c)) S 100 101 100 0 -1\n");
        f.file("102/stat", b"102 (sleep) S 100 102 102 0 -1\n");
        f.file("103/stat", b"103 (broken\n");
        f.file("self/stat", b"100 (sh) S 1 100 100 0 -1\n");
        let p = f.procfs();
        assert_eq!(p.session_members(100), vec![100, 101]);
        assert_eq!(p.session_members(102), vec![102]);
        assert!(p.session_members(7).is_empty());
        assert!(ProcFs::new("/nonexistent").session_members(1).is_empty());
    }
}
