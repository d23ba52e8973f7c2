//! A small QMP client: QEMU's JSON control protocol over its Unix socket.
//!
//! A session reads QEMU's greeting (`{"QMP": {...}}`), leaves capabilities negotiation with
//! `qmp_capabilities`, then sends commands (`{"execute": ..., "id": n}`) one at a time. Every
//! message is one JSON object per line. Asynchronous events (`{"event": ...}`) may arrive at
//! any time, even between a command and its answer (`system_powerdown` emits `POWERDOWN`
//! first), so answers are matched by their `id` and events are skipped.
//!
//! QEMU serves one QMP client at a time on a socket chardev: a second client's connection is
//! accepted by the kernel but gets no greeting until the first one leaves. Sessions are
//! therefore short (connect, one or two commands, close), and every step is bounded by the
//! client's timeout, so a busy or wedged QEMU yields [`QmpError::Timeout`] instead of a hang.
//!
//! What comes back is not trusted to be small: a line longer than [`MAX_LINE`] or more than
//! [`MAX_SKIPPED_EVENTS`] events before an answer end the session with
//! [`QmpError::Protocol`], and error messages quote at most a short prefix of a message.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_core::quote::{DEFAULT_QUOTE, quote_prefix};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Per-operation bound of a [`QmpClient`] unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest QMP line accepted, in bytes. The greeting and the answers to the commands used
/// here (`qmp_capabilities`, `query-status`, `query-name`, `system_powerdown`, `quit`) are
/// under 1 KiB, and so are the events QEMU emits meanwhile; 64 KiB bounds what one line may
/// make the daemon buffer.
pub const MAX_LINE: usize = 64 << 10;

/// Most events skipped while waiting for one answer. QEMU emits a few (`POWERDOWN`,
/// `RTC_CHANGE`...) around a command; thousands mean a flood, not a reply on its way.
pub const MAX_SKIPPED_EVENTS: usize = 1000;

/// A failed QMP exchange, naming the socket and the command.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP {command} on {}: cannot connect", socket.display())]
    Connect {
        socket: PathBuf,
        command: String,
        source: io::Error,
    },
    #[error("QMP {command} on {}: the exchange failed", socket.display())]
    Io {
        socket: PathBuf,
        command: String,
        source: io::Error,
    },
    #[error("QMP {command} on {}: QEMU closed the connection", socket.display())]
    Closed { socket: PathBuf, command: String },
    #[error("QMP {command} on {}: no answer within {after:?}", socket.display())]
    Timeout {
        socket: PathBuf,
        command: String,
        after: Duration,
    },
    #[error("QMP {command} on {}: unexpected message: {detail}", socket.display())]
    Protocol {
        socket: PathBuf,
        command: String,
        detail: String,
    },
    #[error("QMP {command} on {}: {class}: {desc}", socket.display())]
    Command {
        socket: PathBuf,
        command: String,
        /// QEMU's error class, e.g. `CommandNotFound`, `GenericError`.
        class: String,
        desc: String,
    },
}

impl QmpError {
    /// Whether nothing accepted the connection (no socket, or nobody listening): the VMM is
    /// not there, as opposed to a VMM that is there but fails.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }

    /// The socket the exchange was on.
    pub fn socket(&self) -> &Path {
        match self {
            Self::Connect { socket, .. }
            | Self::Io { socket, .. }
            | Self::Closed { socket, .. }
            | Self::Timeout { socket, .. }
            | Self::Protocol { socket, .. }
            | Self::Command { socket, .. } => socket,
        }
    }
}

/// Answer to `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// QEMU's run state: `running`, `paused`, `shutdown`, `guest-panicked`, `prelaunch`...
    pub status: String,
    /// Whether the vCPUs run.
    pub running: bool,
}

/// A client bound to one QMP socket. Each call opens its own short session.
#[derive(Debug, Clone)]
pub struct QmpClient {
    socket: PathBuf,
    timeout: Duration,
}

impl QmpClient {
    /// A client for `socket`, with [`DEFAULT_TIMEOUT`] per operation.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Bounds every step (connect and greeting, each command) by `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Connects, reads the greeting and negotiates capabilities: a session ready for
    /// commands.
    pub async fn connect(&self) -> Result<QmpSession, QmpError> {
        let command = "qmp_capabilities";
        let timeout = self.timeout;
        let socket = self.socket.clone();
        let connect = async {
            let stream =
                UnixStream::connect(&socket)
                    .await
                    .map_err(|source| QmpError::Connect {
                        socket: socket.clone(),
                        command: command.to_string(),
                        source,
                    })?;
            let peer_pid = stream
                .peer_cred()
                .ok()
                .and_then(|cred| cred.pid())
                .and_then(|pid| u32::try_from(pid).ok())
                .filter(|pid| *pid > 0);
            let mut session = QmpSession {
                stream: BufReader::new(stream),
                socket: socket.clone(),
                timeout,
                peer_pid,
                next_id: 1,
            };
            let greeting = session.read_message(command).await?;
            if greeting.get("QMP").is_none() {
                return Err(
                    session.protocol(command, format!("expected a greeting, got {greeting}"))
                );
            }
            Ok(session)
        };
        let mut session = bounded(&self.socket, command, timeout, connect).await?;
        session.execute(command, None).await?;
        Ok(session)
    }

    /// `query-status`, plus the pid of the process serving the socket (its peer credentials)
    /// when the kernel reports one visible in this pid namespace.
    pub async fn query_status(&self) -> Result<(StatusInfo, Option<u32>), QmpError> {
        let mut session = self.connect().await?;
        let status = session.query_status().await?;
        Ok((status, session.peer_pid()))
    }

    /// `system_powerdown`: an ACPI power button press.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.connect().await?.system_powerdown().await
    }

    /// `quit`: QEMU exits at once, without asking the guest.
    pub async fn quit(&self) -> Result<(), QmpError> {
        self.connect().await?.quit().await
    }
}

/// One QMP connection, past capabilities negotiation.
#[derive(Debug)]
pub struct QmpSession {
    stream: BufReader<UnixStream>,
    socket: PathBuf,
    timeout: Duration,
    peer_pid: Option<u32>,
    next_id: u64,
}

impl QmpSession {
    /// The pid of the process serving the socket, from its peer credentials.
    pub fn peer_pid(&self) -> Option<u32> {
        self.peer_pid
    }

    /// Runs `command` with optional `arguments` and returns its `return` value. Events that
    /// arrive meanwhile are skipped; an `error` answer is [`QmpError::Command`].
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let (socket, timeout) = (self.socket.clone(), self.timeout);
        bounded(
            &socket,
            command,
            timeout,
            self.exchange(command, id, &request),
        )
        .await
    }

    /// `query-status`.
    pub async fn query_status(&mut self) -> Result<StatusInfo, QmpError> {
        let value = self.execute("query-status", None).await?;
        self.decode("query-status", value)
    }

    /// `query-name`: the `-name` QEMU was started with, if any.
    pub async fn query_name(&mut self) -> Result<Option<String>, QmpError> {
        #[derive(Deserialize)]
        struct NameInfo {
            name: Option<String>,
        }
        let value = self.execute("query-name", None).await?;
        let info: NameInfo = self.decode("query-name", value)?;
        Ok(info.name)
    }

    /// `system_powerdown`.
    pub async fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// `quit`. QEMU answers before it exits; a connection closed instead of an answer also
    /// means it is on its way out.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn exchange(
        &mut self,
        command: &str,
        id: u64,
        request: &Value,
    ) -> Result<Value, QmpError> {
        let mut line = request.to_string();
        line.push('\n');
        if let Err(source) = self.stream.get_mut().write_all(line.as_bytes()).await {
            return Err(QmpError::Io {
                socket: self.socket.clone(),
                command: command.to_string(),
                source,
            });
        }
        let mut skipped = 0usize;
        loop {
            let mut message = self.read_message(command).await?;
            if message.get("event").is_some() {
                skipped += 1;
                if skipped > MAX_SKIPPED_EVENTS {
                    return Err(self.protocol(
                        command,
                        format!("more than {MAX_SKIPPED_EVENTS} events and still no answer"),
                    ));
                }
                continue;
            }
            if message.get("id").and_then(Value::as_u64) != Some(id) {
                // An answer to someone else's command cannot happen on our own connection,
                // but an answer without our id is not ours either.
                return Err(self.protocol(
                    command,
                    format!("answer without id {id}: {}", quoted(&message)),
                ));
            }
            if let Some(value) = message.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(error) = message.get("error") {
                let text = |key: &str| {
                    error
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or("unknown")
                        .to_string()
                };
                return Err(QmpError::Command {
                    socket: self.socket.clone(),
                    command: command.to_string(),
                    class: quote_prefix(text("class").as_bytes(), DEFAULT_QUOTE),
                    desc: quote_prefix(text("desc").as_bytes(), DEFAULT_QUOTE),
                });
            }
            return Err(self.protocol(
                command,
                format!("neither return nor error: {}", quoted(&message)),
            ));
        }
    }

    /// Reads one message (a JSON object on one line).
    async fn read_message(&mut self, command: &str) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        loop {
            let buf = self
                .stream
                .fill_buf()
                .await
                .map_err(|source| QmpError::Io {
                    socket: self.socket.clone(),
                    command: command.to_string(),
                    source,
                })?;
            if buf.is_empty() {
                return Err(QmpError::Closed {
                    socket: self.socket.clone(),
                    command: command.to_string(),
                });
            }
            let (used, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            // Checked before copying: the line never holds more than the limit.
            if line.len() + used > MAX_LINE {
                return Err(self.protocol(
                    command,
                    format!("a line longer than the {MAX_LINE}-byte limit"),
                ));
            }
            line.extend_from_slice(&buf[..used]);
            self.stream.consume(used);
            if done {
                break;
            }
        }
        let value: Value = serde_json::from_slice(line.trim_ascii()).map_err(|e| {
            self.protocol(
                command,
                format!("{e}: {}", quote_prefix(line.trim_ascii(), DEFAULT_QUOTE)),
            )
        })?;
        if value.is_object() {
            Ok(value)
        } else {
            Err(self.protocol(command, format!("not a JSON object: {}", quoted(&value))))
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        command: &str,
        value: Value,
    ) -> Result<T, QmpError> {
        serde_json::from_value(value.clone())
            .map_err(|e| self.protocol(command, format!("{e}: {}", quoted(&value))))
    }

    fn protocol(&self, command: &str, detail: String) -> QmpError {
        QmpError::Protocol {
            socket: self.socket.clone(),
            command: command.to_string(),
            detail,
        }
    }
}

/// A message as JSON text, at most [`DEFAULT_QUOTE`] bytes of it, for an error message.
fn quoted(value: &Value) -> String {
    quote_prefix(value.to_string().as_bytes(), DEFAULT_QUOTE)
}

/// Runs `future`, or fails with [`QmpError::Timeout`] after `timeout`.
async fn bounded<T>(
    socket: &Path,
    command: &str,
    timeout: Duration,
    future: impl Future<Output = Result<T, QmpError>>,
) -> Result<T, QmpError> {
    match tokio::time::timeout(timeout, future).await {
        Ok(result) => result,
        Err(_elapsed) => Err(QmpError::Timeout {
            socket: socket.to_path_buf(),
            command: command.to_string(),
            after: timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    use super::*;

    /// A scripted QMP server for one connection: sends the greeting, then for each request
    /// line answers with what `answer` returns for the parsed request (several lines may be
    /// sent, e.g. an event before the answer). Returns the requests it read.
    async fn serve(
        listener: UnixListener,
        answer: impl Fn(&Value) -> Vec<String> + Send + 'static,
    ) -> Vec<Value> {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        write
            .write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n")
            .await
            .unwrap();
        let mut lines = BufReader::new(read).lines();
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            let request: Value = serde_json::from_str(&line).unwrap();
            for reply in answer(&request) {
                write.write_all(reply.as_bytes()).await.unwrap();
                write.write_all(b"\r\n").await.unwrap();
            }
            seen.push(request);
        }
        seen
    }

    fn ok(request: &Value, value: Value) -> String {
        json!({"return": value, "id": request["id"]}).to_string()
    }

    #[tokio::test]
    async fn negotiates_then_skips_events_and_matches_ids() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let server = tokio::spawn(serve(UnixListener::bind(&socket).unwrap(), |r| {
            match r["execute"].as_str().unwrap() {
                "qmp_capabilities" => vec![ok(r, json!({}))],
                "query-status" => vec![
                    r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RTC_CHANGE", "data": {"offset": 0}}"#.to_string(),
                    ok(r, json!({"status": "running", "singlestep": false, "running": true})),
                ],
                "query-name" => vec![ok(r, json!({"name": "vm1"}))],
                "system_powerdown" => vec![
                    r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}"#.to_string(),
                    ok(r, json!({})),
                ],
                _ => vec![json!({"id": r["id"], "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}).to_string()],
            }
        }));
        let client = QmpClient::new(&socket);
        let mut session = client.connect().await.expect("connect");
        assert_eq!(session.peer_pid(), Some(std::process::id()));
        let status = session.query_status().await.expect("status");
        assert_eq!(
            status,
            StatusInfo {
                status: "running".into(),
                running: true
            }
        );
        assert_eq!(session.query_name().await.unwrap(), Some("vm1".into()));
        session.system_powerdown().await.expect("powerdown");
        let err = session.execute("nope", None).await.unwrap_err();
        assert!(
            matches!(&err, QmpError::Command { class, .. } if class == "CommandNotFound"),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.starts_with("QMP nope on "), "{text}");
        assert!(
            text.ends_with("CommandNotFound: The command nope has not been found"),
            "{text}"
        );
        drop(session);

        let requests = server.await.unwrap();
        let sent: Vec<(&str, u64)> = requests
            .iter()
            .map(|r| (r["execute"].as_str().unwrap(), r["id"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            sent,
            [
                ("qmp_capabilities", 1),
                ("query-status", 2),
                ("query-name", 3),
                ("system_powerdown", 4),
                ("nope", 5)
            ]
        );
    }

    #[tokio::test]
    async fn quit_accepts_a_closed_connection() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            write.write_all(b"{\"QMP\": {}}\n").await.unwrap();
            let mut lines = BufReader::new(read).lines();
            let caps: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            write
                .write_all(format!("{}\n", ok(&caps, json!({}))).as_bytes())
                .await
                .unwrap();
            // Read `quit`, then go away without answering.
            lines.next_line().await.unwrap().unwrap();
        });
        QmpClient::new(&socket).quit().await.expect("quit");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn silent_busy_missing_and_garbled_servers_fail_with_context() {
        let dir = tempfile::tempdir().unwrap();
        // Accepts (the kernel does) but never greets: another client holds QMP.
        let socket = dir.path().join("busy.sock");
        let _listener = UnixListener::bind(&socket).unwrap();
        let err = QmpClient::new(&socket)
            .with_timeout(Duration::from_millis(100))
            .query_status()
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        assert!(!err.is_connect());
        assert!(err.to_string().contains("busy.sock"), "{err}");

        let err = QmpClient::new(dir.path().join("missing.sock"))
            .query_status()
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err}");
        assert!(err.to_string().contains("missing.sock"), "{err}");

        let socket = dir.path().join("garbled.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\n")
                .await
                .unwrap();
            let _ = stream.shutdown().await;
        });
        let err = QmpClient::new(&socket).query_status().await.unwrap_err();
        assert!(matches!(err, QmpError::Protocol { .. }), "{err}");
        assert!(err.to_string().contains("HTTP/1.1 400"), "{err}");
        server.await.unwrap();
    }

    // Adversarial corpus: a hostile QMP socket. Each case asserts a clear error naming the
    // command and the socket, and that the server could push only a bounded number of bytes.

    const SLACK: u64 = 4 << 20;

    /// Greets, answers `qmp_capabilities`, then on the next request writes `flood` over and
    /// over until the client goes away (at most 1 GiB); returns the bytes written after the
    /// greeting.
    async fn flooding(listener: UnixListener, flood: Vec<u8>) -> u64 {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        write.write_all(b"{\"QMP\": {}}\r\n").await.unwrap();
        let mut lines = BufReader::new(read).lines();
        let caps: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        write
            .write_all(format!("{}\r\n", ok(&caps, json!({}))).as_bytes())
            .await
            .unwrap();
        if lines.next_line().await.ok().flatten().is_none() {
            return 0;
        }
        let mut sent = 0u64;
        while sent < 1 << 30 {
            if write.write_all(&flood).await.is_err() {
                break;
            }
            sent += flood.len() as u64;
        }
        sent
    }

    async fn status_against(flood: &[u8]) -> (QmpError, u64) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let server = tokio::spawn(flooding(
            UnixListener::bind(&socket).unwrap(),
            flood.to_vec(),
        ));
        let err = QmpClient::new(&socket).query_status().await.unwrap_err();
        let sent = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the hostile server kept going after the client gave up")
            .unwrap();
        let msg = err.to_string();
        assert!(msg.starts_with("QMP query-status on "), "{msg}");
        assert!(msg.contains("qmp.sock"), "{msg}");
        assert!(msg.len() < 2048, "{} bytes of error", msg.len());
        (err, sent)
    }

    #[tokio::test]
    async fn adversarial_vmm_qmp_endless_line_stops_at_the_limit() {
        let (err, sent) = status_against(&[b'{'; 65536]).await;
        assert!(matches!(err, QmpError::Protocol { .. }), "{err}");
        assert!(err.to_string().contains("65536-byte limit"), "{err}");
        assert!(sent < MAX_LINE as u64 + SLACK, "{sent}");
    }

    #[tokio::test]
    async fn adversarial_vmm_qmp_event_flood_ends_the_wait() {
        let event = br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RTC_CHANGE", "data": {"offset": 0}}"#;
        let (err, sent) = status_against(&[event.as_slice(), b"\r\n"].concat()).await;
        assert!(matches!(err, QmpError::Protocol { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("more than 1000 events and still no answer"),
            "{err}"
        );
        assert!(sent < 1000 * 100 + SLACK, "{sent}");
    }

    #[tokio::test]
    async fn adversarial_vmm_qmp_trickled_answer_hits_the_deadline() {
        // Greets and accepts capabilities, then answers one byte every 20 ms, never a newline.
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            write.write_all(b"{\"QMP\": {}}\r\n").await.unwrap();
            let mut lines = BufReader::new(read).lines();
            let caps: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            write
                .write_all(format!("{}\r\n", ok(&caps, json!({}))).as_bytes())
                .await
                .unwrap();
            lines.next_line().await.unwrap().unwrap();
            let mut sent = 0u64;
            while write.write_all(b"{").await.is_ok() && sent < 10_000 {
                sent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        });
        let started = std::time::Instant::now();
        let err = QmpClient::new(&socket)
            .with_timeout(Duration::from_millis(300))
            .query_status()
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        assert!(err.to_string().starts_with("QMP query-status on "), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        let sent = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the trickling server kept going after the client gave up")
            .unwrap();
        assert!(sent < 100, "{sent}");
    }

    #[tokio::test]
    async fn adversarial_vmm_qmp_huge_garbage_lines_are_quoted_short() {
        let mut line = vec![b'x'; 60_000];
        line.extend_from_slice(b"\n");
        let (err, _) = status_against(&line).await;
        assert!(matches!(err, QmpError::Protocol { .. }), "{err}");
        assert!(err.to_string().contains("(60000 bytes in all)"), "{err}");
    }
}
