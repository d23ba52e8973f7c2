//! The API server: HTTP/1.1 on the Unix socket, and the parsing Firecracker's
//! `parsed_request.rs` does before the VMM sees a request.
//!
//! [`parse`] mirrors Firecracker's order of checks: a `GET` with a body, a
//! `PUT` or `PATCH` without one, then the route (from the spec; an unknown one
//! answers `400 Invalid request method and/or path: GET foo.`), path ids
//! (non-empty, alphanumeric or `_`), the body (JSON, then the spec definition
//! the operation names), the id in the path against the id in the body, and
//! the few rules Firecracker's parsers add (an empty `PATCH /machine-config`,
//! `mem_backend` versus `mem_file_path`). The result is an [`Action`] for
//! [`crate::state::Vm`]. [`handle`] runs both and turns the outcome into a
//! response: `204` with no body, `200` with JSON, or `400` (`413` for an
//! oversized MMDS store) with `{"fault_message": "..."}`.
//!
//! [`RequestLog`] is the `BANGER_FAKE_FC_LOG` file: one JSON line per request
//! received, refused ones included.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue, SERVER};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::schema::{Mode, RouteMatch, Spec};
use crate::state::{Action, Host, LoadSnapshot, LogLevel, MemBackend, Reply, Vm};

/// Deprecated-field message of `PUT /snapshot/load` (none of the two given).
pub const MISSING_MEM_FIELD: &str =
    "missing field: either `mem_backend` or `mem_file_path` is required";
/// Both `mem_backend` and `mem_file_path` given.
pub const TOO_MANY_MEM_FIELDS: &str =
    "too many fields: either `mem_backend` or `mem_file_path` exclusively is required";

/// Why a request was refused before reaching the VMM (Firecracker's `RequestError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A path id is empty (`PUT /drives`).
    #[error("The ID cannot be empty.")]
    EmptyId,
    /// A path id has characters other than alphanumerics and `_`.
    #[error("API Resource IDs can only contain alphanumeric characters and underscores.")]
    InvalidId,
    /// No such method and path. `token` is the first path segment, as Firecracker prints it.
    #[error("Invalid request method and/or path: {method} {token}.")]
    InvalidPathMethod {
        /// Upper-case method.
        method: String,
        /// First path segment, without the slash.
        token: String,
    },
    /// The body is not JSON or does not fit the spec.
    #[error("An error occurred when deserializing the json body of a request: {0}.")]
    Deserialize(String),
    /// Other refusals with Firecracker's fixed texts.
    #[error("{0}")]
    Generic(String),
    /// A spec operation the fake does not map (a test guards against this).
    #[error("The requested operation is not supported: {0}")]
    Unsupported(String),
}

/// An API answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    /// HTTP status.
    pub status: u16,
    /// JSON body (`None` for 204).
    pub body: Option<Value>,
}

impl ApiResponse {
    fn fault(status: u16, message: String) -> Self {
        Self {
            status,
            body: Some(json!({ "fault_message": message })),
        }
    }
}

/// Firecracker's `checked_id`.
fn checked_id(id: &str) -> Result<(), RequestError> {
    if id.is_empty() {
        return Err(RequestError::EmptyId);
    }
    if !id.chars().all(|c| c == '_' || c.is_alphanumeric()) {
        return Err(RequestError::InvalidId);
    }
    Ok(())
}

fn first_token(path: &str) -> String {
    path.trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Parses one request into an [`Action`].
pub fn parse(spec: &Spec, method: &str, path: &str, body: &[u8]) -> Result<Action, RequestError> {
    let has_body = !body.is_empty();
    let token = first_token(path);
    match (method, has_body) {
        ("GET", true) => {
            return Err(RequestError::Generic(
                "GET request cannot have a body.".to_owned(),
            ));
        }
        ("PUT", false) => return Err(RequestError::Generic("Empty PUT request.".to_owned())),
        ("PATCH", false) if token != "balloon" => {
            return Err(RequestError::Generic("Empty PATCH request.".to_owned()));
        }
        _ => {}
    }
    let (operation, params) = match spec.route(method, path) {
        RouteMatch::Found { operation, params } => (operation, params),
        RouteMatch::MissingId => return Err(RequestError::EmptyId),
        RouteMatch::NotFound => {
            return Err(RequestError::InvalidPathMethod {
                method: method.to_owned(),
                token,
            });
        }
    };
    for id in params.values() {
        checked_id(id)?;
    }
    let value = match (&operation.body, has_body) {
        (Some(param), true) => {
            let value: Value = serde_json::from_slice(body)
                .map_err(|e| RequestError::Deserialize(e.to_string()))?;
            let mode = match operation.id.as_str() {
                // Firecracker takes every field of a machine-config PATCH as optional.
                "patchMachineConfiguration" => Mode::Partial,
                _ => Mode::Full,
            };
            spec.validate(&param.schema, &value, mode)
                .map_err(|v| RequestError::Deserialize(v.to_string()))?;
            Some(value)
        }
        (Some(param), false) if param.required => {
            return Err(RequestError::Generic("Empty PATCH request.".to_owned()));
        }
        (None, true) => {
            return Err(RequestError::Generic(format!(
                "{method} {path} takes no body."
            )));
        }
        _ => None,
    };
    if let Some(value) = &value {
        for (name, id) in &params {
            if let Some(body_id) = value.get(name).and_then(Value::as_str)
                && body_id != id
            {
                return Err(RequestError::Generic(
                    "The id from the path does not match the id from the body!".to_owned(),
                ));
            }
        }
    }
    action_for(&operation.id, value)
}

fn body_of(value: Option<Value>) -> Value {
    value.unwrap_or(Value::Null)
}

fn action_for(operation_id: &str, value: Option<Value>) -> Result<Action, RequestError> {
    use Action::*;
    Ok(match operation_id {
        "describeInstance" => DescribeInstance,
        "getFirecrackerVersion" => GetVersion,
        "getMachineConfiguration" => GetMachineConfig,
        "getExportVmConfig" => GetFullConfig,
        "putMachineConfiguration" => PutMachineConfig(body_of(value)),
        "patchMachineConfiguration" => {
            let body = body_of(value);
            if body
                .as_object()
                .is_none_or(|m| m.values().all(Value::is_null))
            {
                return Err(RequestError::Generic("Empty PATCH request.".to_owned()));
            }
            PatchMachineConfig(body)
        }
        "putGuestBootSource" => PutBootSource(body_of(value)),
        "putGuestDriveByID" => PutDrive(body_of(value)),
        "patchGuestDriveByID" => PatchDrive(body_of(value)),
        "putGuestPmemByID" => PutPmem(body_of(value)),
        "patchGuestPmemByID" => PatchPmem(body_of(value)),
        "putGuestNetworkInterfaceByID" => PutNetwork(body_of(value)),
        "patchGuestNetworkInterfaceByID" => PatchNetwork(body_of(value)),
        "putGuestVsock" => PutVsock(body_of(value)),
        "putBalloon" => PutBalloon(body_of(value)),
        "patchBalloon" => PatchBalloon(body_of(value)),
        "describeBalloonConfig" => GetBalloon,
        "describeBalloonStats" => GetBalloonStats,
        "patchBalloonStatsInterval" => PatchBalloonStats(body_of(value)),
        "startBalloonHinting" => StartBalloonHinting(value),
        "describeBalloonHinting" => GetBalloonHinting,
        "stopBalloonHinting" => StopBalloonHinting,
        "putLogger" => PutLogger(body_of(value)),
        "putMetrics" => PutMetrics(body_of(value)),
        "putMmds" => PutMmds(body_of(value)),
        "patchMmds" => PatchMmds(body_of(value)),
        "getMmds" => GetMmds,
        "putMmdsConfig" => PutMmdsConfig(body_of(value)),
        "putEntropyDevice" => PutEntropy(body_of(value)),
        "putSerialDevice" => PutSerial(body_of(value)),
        "putCpuConfiguration" => PutCpuConfig(body_of(value)),
        "putMemoryHotplug" => PutMemoryHotplug(body_of(value)),
        "patchMemoryHotplug" => PatchMemoryHotplug(body_of(value)),
        "getMemoryHotplug" => GetMemoryHotplug,
        "createSnapshot" => CreateSnapshot(body_of(value)),
        "loadSnapshot" => LoadSnapshot(load_params(&body_of(value))?),
        "patchVm" => match body_of(value).get("state").and_then(Value::as_str) {
            Some("Paused") => Pause,
            _ => Resume,
        },
        "createSyncAction" => match body_of(value).get("action_type").and_then(Value::as_str) {
            Some("InstanceStart") => InstanceStart,
            Some("SendCtrlAltDel") => SendCtrlAltDel,
            _ => FlushMetrics,
        },
        other => return Err(RequestError::Unsupported(other.to_owned())),
    })
}

fn load_params(body: &Value) -> Result<LoadSnapshot, RequestError> {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let flag = |k: &str| body.get(k).and_then(Value::as_bool).unwrap_or(false);
    let backend = body.get("mem_backend").filter(|v| !v.is_null());
    let file = text(body, "mem_file_path");
    let mem_backend = match (backend, file) {
        (Some(_), Some(_)) => {
            return Err(RequestError::Deserialize(TOO_MANY_MEM_FIELDS.to_owned()));
        }
        (None, None) => return Err(RequestError::Deserialize(MISSING_MEM_FIELD.to_owned())),
        (None, Some(path)) => MemBackend::File(PathBuf::from(path)),
        (Some(b), None) => {
            let path = PathBuf::from(text(b, "backend_path").unwrap_or_default());
            match text(b, "backend_type").as_deref() {
                Some("Uffd") => MemBackend::Uffd(path),
                _ => MemBackend::File(path),
            }
        }
    };
    let network_overrides = body
        .get("network_overrides")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|o| Some((text(o, "iface_id")?, text(o, "host_dev_name")?)))
        .collect();
    Ok(LoadSnapshot {
        snapshot_path: PathBuf::from(text(body, "snapshot_path").unwrap_or_default()),
        mem_backend,
        track_dirty_pages: flag("track_dirty_pages") || flag("enable_diff_snapshots"),
        resume_vm: flag("resume_vm"),
        network_overrides,
        vsock_override: body.get("vsock_override").and_then(|v| text(v, "uds_path")),
        huge_pages: text(body, "huge_pages").unwrap_or_else(|| "Snapshot".to_owned()),
    })
}

fn method_name(method: &str) -> String {
    // Firecracker logs micro_http's `Method` with `{:?}`: `Get`, `Put`, `Patch`.
    let mut chars = method.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + &chars.as_str().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Handles one request end to end: parse, apply, log, answer.
pub fn handle<H: Host>(
    spec: &Spec,
    vm: &mut Vm<H>,
    method: &str,
    path: &str,
    body: &[u8],
) -> ApiResponse {
    vm.count_request();
    let received = match body.is_empty() {
        true => format!(
            "The API server received a {} request on {path:?}.",
            method_name(method)
        ),
        false => format!(
            "The API server received a {} request on {path:?} with body {:?}.",
            method_name(method),
            String::from_utf8_lossy(body)
        ),
    };
    vm.log(LogLevel::Info, (file!(), line!()), &received);
    let outcome = parse(spec, method, path, body)
        .map_err(|e| (400, e.to_string()))
        .and_then(|action| vm.handle(action).map_err(|e| (e.status(), e.to_string())));
    match outcome {
        Ok(Reply::Empty) => {
            vm.log(
                LogLevel::Info,
                (file!(), line!()),
                "The request was executed successfully. Status code: 204 No Content.",
            );
            ApiResponse {
                status: 204,
                body: None,
            }
        }
        Ok(Reply::Json(value)) => {
            vm.log(
                LogLevel::Info,
                (file!(), line!()),
                "The request was executed successfully. Status code: 200 OK.",
            );
            ApiResponse {
                status: 200,
                body: Some(value),
            }
        }
        Err((status, message)) => {
            let reason = match status {
                413 => "413 Payload too large",
                _ => "400 Bad Request",
            };
            vm.log(
                LogLevel::Error,
                (file!(), line!()),
                &format!("Received Error. Status code: {reason}. Message: {message}"),
            );
            ApiResponse::fault(status, message)
        }
    }
}

/// Why the request log could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the request log {path}")]
pub struct RequestLogError {
    /// The log file.
    pub path: PathBuf,
    /// The open error.
    pub source: io::Error,
}

/// The `BANGER_FAKE_FC_LOG` file.
#[derive(Debug)]
pub struct RequestLog {
    file: Mutex<File>,
}

impl RequestLog {
    /// Opens `path` for appending, creating it.
    pub fn open(path: &Path) -> Result<Self, RequestLogError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| RequestLogError {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// The line logged for a request: `body` is the JSON, `null` when empty,
    /// or the raw text when it is not JSON.
    pub fn line(method: &str, path: &str, body: &[u8]) -> String {
        let body = match body.is_empty() {
            true => Value::Null,
            false => serde_json::from_slice(body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned())),
        };
        json!({"method": method, "path": path, "body": body}).to_string()
    }

    /// Appends one request and flushes.
    pub fn record(&self, method: &str, path: &str, body: &[u8]) -> io::Result<()> {
        let mut line = Self::line(method, path, body);
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        file.write_all(line.as_bytes())?;
        file.flush()
    }
}

/// What every connection shares.
#[derive(Debug)]
pub struct Server<H> {
    /// The API description.
    pub spec: Arc<Spec>,
    /// The microVM.
    pub vm: Mutex<Vm<H>>,
    /// `BANGER_FAKE_FC_LOG`.
    pub request_log: Option<RequestLog>,
    /// `--http-api-max-payload-size`.
    pub max_payload: usize,
}

fn http_response(response: ApiResponse) -> Response<Full<Bytes>> {
    let body = response.body.map(|v| v.to_string()).unwrap_or_default();
    let mut out = Response::new(Full::new(Bytes::from(body)));
    *out.status_mut() = StatusCode::from_u16(response.status).unwrap_or(StatusCode::BAD_REQUEST);
    out.headers_mut()
        .insert(SERVER, HeaderValue::from_static("Firecracker API"));
    if response.status != 204 {
        out.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    out
}

impl<H: Host> Server<H> {
    /// Serves one HTTP request.
    pub async fn serve(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, hyper::Error> {
        let method = request.method().as_str().to_owned();
        let path = request.uri().path().to_owned();
        // Read the whole body even when it is over the limit, so the client
        // gets its 413 instead of a connection reset.
        let mut incoming = request.into_body();
        let mut body = Vec::new();
        let mut size = 0usize;
        while let Some(frame) = incoming.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            size += data.len();
            if size <= self.max_payload {
                body.extend_from_slice(&data);
            }
        }
        if let Some(log) = &self.request_log {
            // A test double keeps serving even if its own log breaks. An
            // oversized body is logged truncated to the limit (so as text).
            let _ = log.record(&method, &path, &body);
        }
        if size > self.max_payload {
            return Ok(http_response(ApiResponse::fault(
                413,
                format!(
                    "Request payload with size {size} is larger than the limit of {} allowed by server.",
                    self.max_payload
                ),
            )));
        }
        let response = {
            let mut vm = self.vm.lock().unwrap_or_else(PoisonError::into_inner);
            handle(&self.spec, &mut vm, &method, &path, &body)
        };
        Ok(http_response(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::{FakeHost, vm};

    fn spec() -> Spec {
        Spec::embedded().expect("spec")
    }

    fn fault(method: &str, path: &str, body: &str) -> String {
        parse(&spec(), method, path, body.as_bytes())
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn every_spec_operation_maps_to_an_action() {
        for op in spec().operations() {
            let err = action_for(
                &op.id,
                Some(json!({"snapshot_path": "s", "mem_file_path": "m"})),
            );
            assert!(
                !matches!(err, Err(RequestError::Unsupported(_))),
                "{} {} ({}) is not handled",
                op.method,
                op.path,
                op.id
            );
        }
    }

    #[test]
    fn firecracker_request_errors() {
        assert_eq!(fault("GET", "/", "{}"), "GET request cannot have a body.");
        assert_eq!(fault("PUT", "/actions", ""), "Empty PUT request.");
        assert_eq!(fault("PATCH", "/vm", ""), "Empty PATCH request.");
        assert_eq!(
            fault("GET", "/foo/bar", ""),
            "Invalid request method and/or path: GET foo."
        );
        assert_eq!(
            fault("GET", "/actions", ""),
            "Invalid request method and/or path: GET actions."
        );
        assert_eq!(fault("PUT", "/drives", "{}"), "The ID cannot be empty.");
        assert_eq!(
            fault(
                "PUT",
                "/drives/bad-id",
                r#"{"drive_id":"bad-id","is_root_device":true}"#
            ),
            "API Resource IDs can only contain alphanumeric characters and underscores."
        );
        assert_eq!(
            fault(
                "PUT",
                "/drives/root",
                r#"{"drive_id":"work","is_root_device":true,"path_on_host":"/x"}"#
            ),
            "The id from the path does not match the id from the body!"
        );
        assert_eq!(
            fault(
                "PUT",
                "/network-interfaces/eth0",
                r#"{"iface_id":"eth1","host_dev_name":"tap0"}"#
            ),
            "The id from the path does not match the id from the body!"
        );
        assert!(fault("PUT", "/actions", "{nope").starts_with(
            "An error occurred when deserializing the json body of a request: key must be a string"
        ));
        assert_eq!(
            fault("PUT", "/boot-source", r#"{"kernel_image_path":"/k","x":1}"#),
            "An error occurred when deserializing the json body of a request: unknown field `x`, expected one of `boot_args`, `initrd_path`, `kernel_image_path`."
        );
        assert_eq!(
            fault("PUT", "/actions", r#"{"action_type":"Reboot"}"#),
            "An error occurred when deserializing the json body of a request: unknown variant `Reboot`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel` at `action_type`."
        );
        assert_eq!(
            fault("PATCH", "/machine-config", "{}"),
            "Empty PATCH request."
        );
        assert_eq!(
            fault("PUT", "/snapshot/load", r#"{"snapshot_path":"s"}"#),
            format!(
                "An error occurred when deserializing the json body of a request: {MISSING_MEM_FIELD}."
            )
        );
        assert_eq!(
            fault(
                "PUT",
                "/snapshot/load",
                r#"{"snapshot_path":"s","mem_file_path":"m","mem_backend":{"backend_type":"File","backend_path":"m"}}"#
            ),
            format!(
                "An error occurred when deserializing the json body of a request: {TOO_MANY_MEM_FIELDS}."
            )
        );
    }

    #[test]
    fn parses_actions() {
        let s = spec();
        assert_eq!(
            parse(&s, "PUT", "/actions", br#"{"action_type":"InstanceStart"}"#),
            Ok(Action::InstanceStart)
        );
        assert_eq!(
            parse(&s, "PATCH", "/vm", br#"{"state":"Paused"}"#),
            Ok(Action::Pause)
        );
        assert_eq!(
            parse(&s, "PATCH", "/vm", br#"{"state":"Resumed"}"#),
            Ok(Action::Resume)
        );
        assert_eq!(
            parse(&s, "PATCH", "/balloon/hinting/stop", b""),
            Ok(Action::StopBalloonHinting)
        );
        assert_eq!(
            parse(&s, "PATCH", "/balloon/hinting/start", b""),
            Ok(Action::StartBalloonHinting(None))
        );
        assert_eq!(
            parse(&s, "PATCH", "/machine-config", br#"{"mem_size_mib":256}"#),
            Ok(Action::PatchMachineConfig(json!({"mem_size_mib": 256})))
        );
        match parse(
            &s,
            "PUT",
            "/snapshot/load",
            br#"{"snapshot_path":"s","mem_backend":{"backend_type":"Uffd","backend_path":"u"},"resume_vm":true}"#,
        ) {
            Ok(Action::LoadSnapshot(load)) => {
                assert_eq!(load.mem_backend, MemBackend::Uffd("u".into()));
                assert!(load.resume_vm);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn handle_answers_like_firecracker() {
        let spec = spec();
        let mut vm = vm(FakeHost::default());
        let info = handle(&spec, &mut vm, "GET", "/", b"");
        assert_eq!(info.status, 200);
        assert_eq!(
            info.body.as_ref().map(|b| b["state"].clone()),
            Some(json!("Not started"))
        );
        let refused = handle(
            &spec,
            &mut vm,
            "PUT",
            "/actions",
            br#"{"action_type":"InstanceStart"}"#,
        );
        assert_eq!(refused.status, 400);
        assert_eq!(
            refused.body,
            Some(
                json!({"fault_message": "Start microvm error: Cannot start microvm without kernel configuration."})
            )
        );
        let ok = handle(
            &spec,
            &mut vm,
            "PUT",
            "/machine-config",
            br#"{"vcpu_count":2,"mem_size_mib":512}"#,
        );
        assert_eq!(
            ok,
            ApiResponse {
                status: 204,
                body: None
            }
        );
        let version = handle(&spec, &mut vm, "GET", "/version", b"");
        assert_eq!(
            version.body,
            Some(json!({"firecracker_version": "1.17.0-dev"}))
        );
    }

    #[test]
    fn request_log_lines() {
        assert_eq!(
            RequestLog::line("PUT", "/drives/root", br#"{"drive_id":"root"}"#),
            r#"{"body":{"drive_id":"root"},"method":"PUT","path":"/drives/root"}"#
        );
        assert_eq!(
            RequestLog::line("GET", "/", b""),
            r#"{"body":null,"method":"GET","path":"/"}"#
        );
        assert_eq!(
            RequestLog::line("PUT", "/x", b"{oops"),
            r#"{"body":"{oops","method":"PUT","path":"/x"}"#
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("req.log");
        let log = RequestLog::open(&path).expect("open");
        log.record("GET", "/", b"").expect("record");
        log.record("GET", "/version", b"").expect("record");
        assert_eq!(
            std::fs::read_to_string(&path)
                .expect("read")
                .lines()
                .count(),
            2
        );
    }
}
