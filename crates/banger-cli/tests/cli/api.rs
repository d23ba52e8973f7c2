//! The daemon's OpenAPI document, checked by tools this project did not write: a standard
//! validator (`openapi-spec-validator`) and a bounded property-based pass (`schemathesis`)
//! against a real `bangerd` with the fake Firecracker. Both come from the project's Python
//! venv, `target/py` (`scripts/setup` installs them); without it the tests skip with the
//! reason, unless `BANGER_REQUIRE_GUEST_TESTS=1` (CI, root runs of `scripts/test`), where a
//! missing tool fails.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Home, bin_dir, is_root};

/// `docs/api/openapi.json`.
fn checked_in_document() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api/openapi.json")
}

/// `target/py/bin/NAME`, or `None` (after printing why) when it is not installed.
#[allow(clippy::print_stderr)] // the visible reason for a skip
fn venv_tool(name: &str) -> Option<PathBuf> {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/py/bin")
        .join(name);
    if tool.exists() {
        return Some(tool);
    }
    let why = format!(
        "{} is not installed (scripts/setup installs it into target/py)",
        tool.display()
    );
    if std::env::var("BANGER_REQUIRE_GUEST_TESTS").is_ok_and(|v| v == "1") {
        panic!("{why}");
    }
    eprintln!("skipped: {why}");
    None
}

#[test]
fn the_api_document_passes_a_standard_openapi_validator() {
    let Some(validator) = venv_tool("openapi-spec-validator") else {
        return;
    };
    let out = Command::new(validator)
        .arg(checked_in_document())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains(": OK"), "{text}");

    // The validator can fail: a response without its required description is refused.
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checked_in_document()).unwrap()).unwrap();
    let status = doc["paths"]["/v1/status"]["get"]["responses"]["200"]
        .as_object_mut()
        .unwrap();
    status.remove("description").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, doc.to_string()).unwrap();
    let out = Command::new(venv_tool("openapi-spec-validator").unwrap())
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
}

/// Forwards every connection to `127.0.0.1:<port>` to the Unix socket `target`, both ways,
/// until the test process ends: HTTP tools speak TCP, the daemon only its socket.
fn tcp_to_unix(target: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let Ok(unix) = UnixStream::connect(&target) else {
                continue;
            };
            let (Ok(tcp2), Ok(unix2)) = (tcp.try_clone(), unix.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || pump(tcp, unix2, |u| u.shutdown(Shutdown::Write)));
            std::thread::spawn(move || pump(unix, tcp2, |t| t.shutdown(Shutdown::Write)));
        }
    });
    port
}

/// Copies `from` into `to` until `from` ends, then shuts `to`'s write side.
fn pump<R: Read, W: Write>(mut from: R, mut to: W, close: impl FnOnce(&W) -> std::io::Result<()>) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = close(&to);
}

/// The paths schemathesis leaves alone, and why.
const NOT_FUZZED: [(&str, &str); 4] = [
    ("/v1/shutdown", "it stops the daemon under the run"),
    (
        "/v1/images/bootstrap",
        "it downloads Debian packages, and tests never leave loopback",
    ),
    (
        "/v1/images/{reference}/export",
        "it writes a bundle into the directory it is given: generated absolute paths would \
         write onto the real host",
    ),
    (
        "/v1/vms/{reference}/files/write",
        "the fake Firecracker's agent runs on the host (as root in CI) with only /root its \
         own: generated absolute paths would write onto the real host",
    ),
];

/// How many operations the checked-in document has outside [`NOT_FUZZED`].
fn fuzzed_operations() -> usize {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checked_in_document()).unwrap()).unwrap();
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| !NOT_FUZZED.iter().any(|(p, _)| p == path))
        .map(|(_, item)| item.as_object().unwrap().len())
        .sum()
}

/// Which references schemathesis tries besides its own: half the time the VM `web` (for VM
/// routes and the refs of actions) or the image `test-img`, so that its requests reach the
/// routes' real work on a running VM, not only the refusal of an unknown reference.
const SCHEMATHESIS_CONFIG: &str = r#"
[dictionaries.vms]
values = ["web"]

[dictionaries.images]
values = ["test-img"]

[[operations]]
include-path-regex = "^/v1/vms/[{]"
parameters = { "path.reference" = { dictionary = "vms", probability = 0.5 } }

[[operations]]
include-path = "/v1/vms/actions"
parameters = { "body.refs[*]" = { dictionary = "vms", probability = 0.5 } }

[[operations]]
include-path-regex = "^/v1/images/[{]"
parameters = { "path.reference" = { dictionary = "images", probability = 0.5 } }
"#;

/// A daemon with the fake Firecracker: as root in its own network namespace with the image
/// `test-img` and the running VM `web`, else (no namespaces, bridges or TAPs) with neither.
#[allow(clippy::print_stderr)] // why the run reaches less
fn daemon_for_schemathesis() -> Home {
    if is_root() {
        let home = Home::for_vms("").unwrap();
        home.ok(&["vm", "create", "--name", "web", "--image", "test-img"]);
        return home;
    }
    eprintln!("not root: no VM to test against, only the daemon's answers without one");
    let home = Home::new();
    let fake = bin_dir().join("banger-fake-firecracker");
    assert!(
        fake.exists(),
        "build the workspace first: cargo build --workspace"
    );
    std::fs::create_dir_all(home.path().join("config")).unwrap();
    std::fs::write(
        home.path().join("config/config.toml"),
        crate::common::test_config(&format!("firecracker_bin = \"{}\"\n", fake.display())),
    )
    .unwrap();
    home.ok(&["daemon", "status"]);
    home
}

/// schemathesis generates requests from the served document for about a minute (valid and
/// invalid bodies, parameters, headers, methods the document does not list, and stateful
/// sequences through its links) and checks every answer: no 5xx, a status the document
/// lists, its content type, and its body valid against the schema, so every error body is
/// the typed `ErrorBody` with a known kind.
///
/// `BANGER_SCHEMATHESIS_SECONDS=N` gives it N seconds instead of 60, for a longer hunt.
///
/// Left out: the paths of [`NOT_FUZZED`]. Not checked: `positive_data_acceptance`, since the daemon validates names,
/// paths and sizes beyond what the schema can say (an empty name is a valid string and a
/// bad request), and `negative_data_rejection`, since a streamed operation reports a refused
/// request as the stream's `error` event after its 200.
#[test]
fn schemathesis_finds_no_server_error_and_only_typed_errors() {
    let Some(schemathesis) = venv_tool("schemathesis") else {
        return;
    };
    let home = daemon_for_schemathesis();
    let port = tcp_to_unix(home.socket());
    let base = format!("http://127.0.0.1:{port}");
    let work = tempfile::tempdir().unwrap(); // hypothesis keeps its database in the cwd
    let config = work.path().join("schemathesis.toml");
    std::fs::write(&config, SCHEMATHESIS_CONFIG).unwrap();
    let seconds = std::env::var("BANGER_SCHEMATHESIS_SECONDS").unwrap_or_else(|_| "60".into());
    let mut run = Command::new(schemathesis);
    run.current_dir(work.path())
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{base}/v1/openapi.json"), "--url", &base]);
    for (path, _why) in NOT_FUZZED {
        run.args(["--exclude-path", path]);
    }
    let out = run
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,\
             missing_required_header,unsupported_method,use_after_free,\
             ensure_resource_availability",
            "--max-examples",
            "10",
            "--max-time",
            &seconds,
            "--request-timeout",
            "10",
            "--workers",
            "1",
        ])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "schemathesis found failures:\n{text}");
    // It really ran against the daemon: every operation it selected was tested, and it
    // selected them all (but perhaps `GET /v1/openapi.json`, which it loaded the document
    // from and leaves out once operations are filtered).
    let count = |label: &str| -> usize {
        let at = text
            .find(label)
            .unwrap_or_else(|| panic!("no {label:?} in: {text}"));
        let digits: String = text[at + label.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    let (selected, tested) = (count("Selected: "), count("Tested: "));
    assert_eq!(tested, selected, "{text}");
    assert!(selected + 1 >= fuzzed_operations(), "{text}");
    // And the daemon is still there.
    assert_eq!(home.status()["socket"], home.socket().display().to_string());
}
