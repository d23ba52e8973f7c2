//! The web UI served by the real daemon: its security checks with a plain HTTP client
//! (nothing reaches a service without the token's cookie, a right Host, Origin and CSRF
//! token), its listener refused or failed without the daemon failing, and, in a real
//! browser (Debian's chromium driven by playwright-core), the dashboard, create with live
//! stages, a VM's pages and log, stop and delete behind their confirmations; screenshots of
//! every page go to `target/ui-screenshots/`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::Home;

/// A home whose daemon serves the UI on `web_listen` (plus `extra` config), without DNS or
/// the ssh config block.
fn web_home(web_listen: &str, extra: &str) -> Home {
    let mut home = Home::new();
    home.unset_env("BANGER_WEB_LISTEN");
    std::fs::create_dir_all(home.path().join("config")).unwrap();
    std::fs::write(
        home.path().join("config/config.toml"),
        crate::common::test_config(&format!(
            "dns = false\nssh_config = false\nweb_listen = \"{web_listen}\"\n{extra}"
        )),
    )
    .unwrap();
    home
}

/// The UI's address and login link from `daemon status --json`.
fn listening(home: &Home) -> (SocketAddr, String) {
    let st = home.status();
    let web = &st["web"];
    assert_eq!(web["state"], "listening", "{st}");
    (
        web["address"].as_str().unwrap().parse().unwrap(),
        web["login_url"].as_str().unwrap().to_string(),
    )
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One answer: status, headers (lower-cased names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` to `addr` with `headers` (a `Host` of its own unless given) and
/// `body`, over a fresh connection.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// The session cookie a login link sets, as a `Cookie` header value.
fn login(addr: SocketAddr, login_url: &str) -> String {
    let path = &login_url[login_url.find("/?").unwrap()..];
    let a = http(addr, "GET", path, &[], "");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.body
            .contains("http-equiv=\"refresh\" content=\"0;url=/\"")
            && !a.body.contains("token"),
        "the page moves on without the token: {}",
        a.body
    );
    let cookie = a.header("set-cookie").unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_string()
}

/// The CSRF token the pages' forms carry.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + page[at..].find('"').unwrap()].to_string()
}

fn image_names(home: &Home) -> Vec<String> {
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&home.ok(&["image", "list", "--json"])).unwrap();
    list.iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn without_the_token_s_cookie_nothing_is_shown_or_changed() {
    let home = web_home("127.0.0.1:0", "");
    home.make_image("keep-me");
    let (addr, login_url) = listening(&home);
    let origin = format!("http://{addr}");
    for path in ["/", "/vms", "/images/keep-me", "/host", "/?token=wrong"] {
        let a = http(addr, "GET", path, &[], "");
        assert_eq!(a.status, 401, "GET {path}: {}", a.body);
        assert!(
            a.body.contains("banger ui") && !a.body.contains("keep-me"),
            "{}",
            a.body
        );
    }
    let cookie = login(addr, &login_url);
    let csrf = csrf_of(
        &http(
            addr,
            "GET",
            "/images/keep-me/confirm",
            &[("Cookie", &cookie)],
            "",
        )
        .body,
    );
    let form = format!("csrf={csrf}&confirmed=yes");
    let a = http(
        addr,
        "POST",
        "/images/keep-me/delete",
        &[("Origin", &origin)],
        &form,
    );
    assert_eq!(a.status, 401, "a POST without the cookie: {}", a.body);
    let wrong = "banger_session=0000000000000000000000000000000000000000000000000000000000000000";
    let a = http(
        addr,
        "POST",
        "/images/keep-me/delete",
        &[("Origin", &origin), ("Cookie", wrong)],
        &form,
    );
    assert_eq!(a.status, 401, "a wrong cookie: {}", a.body);
    assert_eq!(image_names(&home), ["keep-me"]);
}

/// A request that must be refused: what is wrong with it, its headers, its form.
type Attempt<'a> = (&'a str, Vec<(&'a str, &'a str)>, String);

#[test]
fn a_state_changing_request_needs_the_csrf_token_its_own_origin_and_host() {
    let home = web_home("127.0.0.1:0", "");
    home.make_image("keep-me");
    let (addr, login_url) = listening(&home);
    let cookie = login(addr, &login_url);
    let page = http(
        addr,
        "GET",
        "/images/keep-me/confirm",
        &[("Cookie", &cookie)],
        "",
    );
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = csrf_of(&page.body);
    let origin = format!("http://{addr}");
    let good = format!("csrf={csrf}&confirmed=yes");
    let foreign_host = format!("evil.example:{}", addr.port());
    let refused: [Attempt<'_>; 7] = [
        (
            "no CSRF token",
            vec![("Origin", &origin)],
            "confirmed=yes".into(),
        ),
        (
            "a wrong CSRF token",
            vec![("Origin", &origin)],
            "csrf=0123&confirmed=yes".into(),
        ),
        (
            "two CSRF tokens",
            vec![("Origin", &origin)],
            format!("csrf={csrf}&csrf=x&confirmed=yes"),
        ),
        ("no Origin", vec![], good.clone()),
        (
            "a foreign Origin",
            vec![("Origin", "http://evil.example")],
            good.clone(),
        ),
        (
            "a cross-site fetch",
            vec![("Origin", &origin), ("Sec-Fetch-Site", "cross-site")],
            good.clone(),
        ),
        (
            "a foreign Host (DNS rebinding)",
            vec![("Origin", "http://evil.example"), ("Host", &foreign_host)],
            good.clone(),
        ),
    ];
    for (what, mut headers, body) in refused {
        headers.push(("Cookie", &cookie));
        let a = http(addr, "POST", "/images/keep-me/delete", &headers, &body);
        assert_eq!(a.status, 403, "{what}: {} {}", a.status, a.body);
        assert!(
            a.header("access-control-allow-origin").is_none(),
            "{what}: no CORS"
        );
        assert_eq!(image_names(&home), ["keep-me"], "{what} changed nothing");
    }
    // A foreign Host gets nothing at all, not even the login page.
    let a = http(
        addr,
        "GET",
        "/",
        &[("Host", &foreign_host), ("Cookie", &cookie)],
        "",
    );
    assert_eq!(a.status, 403);
    assert!(!a.body.contains("<html"), "{}", a.body);
    // No CORS preflight succeeds.
    let a = http(
        addr,
        "OPTIONS",
        "/images/keep-me/delete",
        &[("Origin", "http://evil.example"), ("Cookie", &cookie)],
        "",
    );
    assert!(
        a.status >= 400 && a.header("access-control-allow-origin").is_none(),
        "{}",
        a.status
    );
    // Every answer has the strict policy.
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("script-src 'self'")
            && !csp.contains("unsafe"),
        "{csp}"
    );
    // The same request from the UI's own page works (the checks above are not blanket refusals).
    let a = http(
        addr,
        "POST",
        "/images/keep-me/delete",
        &[("Origin", &origin), ("Cookie", &cookie)],
        &good,
    );
    assert_eq!(
        (a.status, a.header("location")),
        (303, Some("/images")),
        "{}",
        a.body
    );
    assert!(image_names(&home).is_empty());
    // The dashboard lists it among the recent operations, with its op id.
    let dash = http(addr, "GET", "/", &[("Cookie", &cookie)], "").body;
    assert!(dash.contains("POST web /images/keep-me/delete"), "{dash}");
}

#[test]
fn a_delete_refused_by_the_daemon_shows_its_reason_and_op_id() {
    let home = web_home("127.0.0.1:0", "");
    let (addr, login_url) = listening(&home);
    let cookie = login(addr, &login_url);
    let csrf = csrf_of(&http(addr, "GET", "/images", &[("Cookie", &cookie)], "").body);
    let origin = format!("http://{addr}");
    let a = http(
        addr,
        "POST",
        "/images/no-such/delete",
        &[("Origin", &origin), ("Cookie", &cookie)],
        &format!("csrf={csrf}&confirmed=yes"),
    );
    assert_eq!(a.status, 404, "{}", a.body);
    assert!(
        a.body.contains("not found") && a.body.contains("no-such"),
        "{}",
        a.body
    );
    assert!(
        a.body.contains("op <code>"),
        "the op id is shown: {}",
        a.body
    );
}

#[test]
fn the_path_picker_stays_in_the_owner_s_home_and_a_bad_form_creates_nothing() {
    let home = web_home("127.0.0.1:0", "");
    let user = home.path().join("user");
    std::fs::create_dir_all(user.join("src/proj")).unwrap();
    std::os::unix::fs::symlink("/etc", user.join("etc-link")).unwrap();
    let (addr, login_url) = listening(&home);
    let cookie = login(addr, &login_url);
    let get = |path: &str| http(addr, "GET", path, &[("Cookie", &cookie)], "");
    let a = get("/browse?path=%7E");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains(">src/<"), "{}", a.body);
    let a = get("/browse?path=%7E%2Fsrc");
    assert!(
        a.body.contains(">proj/<") && a.body.contains("/vms/new?workspace="),
        "{}",
        a.body
    );
    for outside in ["/etc", "%7E%2F..%2F..", "%7E%2Fetc-link"] {
        let a = get(&format!("/browse?path={outside}"));
        assert_eq!(a.status, 400, "{outside}: {}", a.body);
        assert!(
            a.body.contains("outside your home"),
            "{outside}: {}",
            a.body
        );
        assert!(
            !a.body.contains("passwd"),
            "{outside}: nothing of it is listed"
        );
    }
    let csrf = csrf_of(&get("/vms/new").body);
    let origin = format!("http://{addr}");
    for (form, why) in [
        ("memory=lots", "memory"),
        ("cpus=two", "CPUs"),
        ("workspace=%2Fetc", "outside your home"),
    ] {
        let a = http(
            addr,
            "POST",
            "/vms",
            &[("Origin", &origin), ("Cookie", &cookie)],
            &format!("csrf={csrf}&name=bad&{form}"),
        );
        assert_eq!(a.status, 400, "{form}: {}", a.body);
        assert!(
            a.body.contains(why) && a.body.contains("value=\"bad\""),
            "{form}: {}",
            a.body
        );
    }
    assert!(home.vms().is_empty());
}

#[test]
fn an_image_build_from_the_form_is_a_job_whose_page_shows_the_daemon_s_error() {
    let home = web_home("127.0.0.1:0", "");
    let (addr, login_url) = listening(&home);
    let cookie = login(addr, &login_url);
    let csrf = csrf_of(&http(addr, "GET", "/images", &[("Cookie", &cookie)], "").body);
    let origin = format!("http://{addr}");
    let a = http(
        addr,
        "POST",
        "/images/bootstrap",
        &[("Origin", &origin), ("Cookie", &cookie)],
        &format!("csrf={csrf}&name=..%2Fescape"),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    let job = a.header("location").unwrap().to_string();
    assert!(job.starts_with("/ops/"), "{job}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let page = loop {
        let page = http(addr, "GET", &job, &[("Cookie", &cookie)], "").body;
        if !page.contains("Running") || std::time::Instant::now() > deadline {
            break page;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        page.contains("bad request") && page.contains("../escape"),
        "{page}"
    );
    assert!(
        page.contains(&format!("op <code>{}</code>", &job[5..])),
        "{page}"
    );
    assert!(image_names(&home).is_empty());
}

#[test]
fn a_non_loopback_address_is_refused_without_web_allow_remote_and_the_daemon_serves_on() {
    let port = free_port();
    let home = web_home(&format!("0.0.0.0:{port}"), "");
    let st = home.status();
    assert_eq!(st["web"]["state"], "failed", "{st}");
    let error = st["web"]["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("0.0.0.0:{port}")) && error.contains("web_allow_remote = true"),
        "{error}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing serves the UI"
    );
    let text = home.ok(&["daemon", "status"]);
    assert!(
        text.contains("web ui") && text.contains("not serving"),
        "{text}"
    );
    let out = home.run(&["ui", "--print"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("web_allow_remote"), "{err}");
}

#[test]
fn a_taken_port_is_reported_and_the_daemon_serves_on() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let home = web_home(&addr.to_string(), "");
    let st = home.status();
    assert_eq!(st["web"]["state"], "failed", "{st}");
    let error = st["web"]["error"].as_str().unwrap();
    assert!(
        error.contains(&addr.to_string()) && error.to_lowercase().contains("in use"),
        "{error}"
    );
    home.ok(&["vm", "list"]);
}

#[test]
fn web_false_serves_nothing_and_banger_ui_says_how_to_turn_it_on() {
    let port = free_port();
    let home = web_home(&format!("127.0.0.1:{port}"), "web = false\n");
    assert_eq!(home.status()["web"]["state"], "off");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    let out = home.run(&["ui"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("web = true"));
}

#[test]
fn banger_ui_prints_the_login_link_when_there_is_no_browser() {
    let home = web_home("127.0.0.1:0", "");
    let (addr, login_url) = listening(&home);
    let printed = home.ok(&["ui"]);
    assert_eq!(printed.trim(), login_url);
    assert!(login_url.starts_with(&format!("http://127.0.0.1:{}/?token=", addr.port())));
    // $BROWSER gets a private page that forwards to the link, never the link itself (other
    // users can read a program's arguments).
    let seen = home.path().join("browser-got");
    let browser = home.path().join("browser.sh");
    std::fs::write(
        &browser,
        format!(
            "#!/bin/sh\necho \"$1\" > {0}.tmp && mv {0}.tmp {0}\n",
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &browser,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = home.cmd(&["ui"]).env("BROWSER", &browser).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("opened http://127.0.0.1:"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !seen.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let arg = std::fs::read_to_string(&seen).unwrap().trim().to_string();
    assert!(!arg.contains("token"), "the browser's argument is {arg}");
    assert_eq!(Path::new(&arg), home.path().join("run/ui-open.html"));
    let page = std::fs::read_to_string(&arg).unwrap();
    assert!(page.contains(&format!("url={login_url}\"")), "{page}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&arg).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

/// Where the browser tests find their tools: node, Debian's chromium and playwright-core
/// (installed by `scripts/setup` into `target/npm`). `Err`: what is missing.
fn browser_tools() -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let which = |name: &str| {
        let path = std::env::var_os("PATH");
        banger_core::probe::SearchPath::programs(path.as_deref()).find(name)
    };
    let node = which("node").ok_or("node is not installed (apt install nodejs)")?;
    let chromium = which("chromium").ok_or("chromium is not installed (scripts/setup)")?;
    let pw =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/npm/node_modules/playwright-core");
    if !pw.join("package.json").exists() {
        return Err(format!(
            "playwright-core is not installed at {} (scripts/setup)",
            pw.display()
        ));
    }
    Ok((node, chromium, pw))
}

/// Where the screenshots go: the workspace's `target/ui-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

#[test]
#[allow(clippy::print_stderr)] // the visible reason for a skip
fn in_a_browser_a_vm_is_created_watched_stopped_and_deleted() {
    let tools = match browser_tools() {
        Ok(t) => t,
        Err(why) => {
            let required = std::env::var("BANGER_REQUIRE_GUEST_TESTS").is_ok_and(|v| v == "1")
                || std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(!required, "the browser test cannot run: {why}");
            eprintln!("skipped: {why}");
            return;
        }
    };
    let (node, chromium, pw) = tools;
    let Some(home) = Home::for_vms("web_listen = \"127.0.0.1:0\"\nssh_config = false\n") else {
        return;
    };
    let (_, login_url) = listening(&home);
    // A repository in the owner's home, for the form's workspace field.
    let proj = home.path().join("user/proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(proj.join("README"), "shipped by the web UI\n").unwrap();
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "-A"],
        &["commit", "-q", "-m", "initial"],
    ] {
        let st = crate::common::host_tool("git")
            .arg("-C")
            .arg(&proj)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Host")
            .env("GIT_AUTHOR_EMAIL", "host@example.com")
            .env("GIT_COMMITTER_NAME", "Host")
            .env("GIT_COMMITTER_EMAIL", "host@example.com")
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    }
    // `banger ui` as a user runs it: the browser opens the private page that forwards to the
    // login link (the stand-in browser here does nothing; chromium opens the page below).
    let opened = home.cmd(&["ui"]).env("BROWSER", "true").output().unwrap();
    assert!(
        opened.status.success(),
        "{}",
        String::from_utf8_lossy(&opened.stderr)
    );
    let open_page = home.path().join("run/ui-open.html");
    let ns = home.netns.clone().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli/web_e2e.js");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(&node)
        .arg(&script)
        .env("PLAYWRIGHT_CORE", &pw)
        .env("CHROMIUM", &chromium)
        .env("LOGIN_URL", &login_url)
        .env("OPEN_PAGE", format!("file://{}", open_page.display()))
        .env("SHOTS", screenshot_dir())
        .env("IMAGE", "test-img")
        .output()
        .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser run failed:\n{log}");
    assert!(log.contains("all steps passed"), "{log}");
    assert!(home.vms().is_empty(), "the VM was deleted through the UI");
    for shot in [
        "dashboard",
        "create-form",
        "create-stages",
        "vm-list",
        "vm-detail",
        "vm-log",
        "confirm-stop",
        "narrow-dashboard",
        "images",
        "kernels",
        "host",
    ] {
        assert!(
            screenshot_dir().join(format!("{shot}.png")).exists(),
            "{shot}.png"
        );
    }
}

/// Every test home hands its daemon `BANGER_WEB_LISTEN=127.0.0.1:0`, which wins over the
/// config: the UI comes up on a free port, never 7777. A value that is no address stops the
/// daemon with an error naming the variable.
#[test]
fn banger_web_listen_overrides_the_config_and_a_bad_value_names_it() {
    let home = Home::new();
    std::fs::create_dir_all(home.path().join("config")).unwrap();
    std::fs::write(
        home.path().join("config/config.toml"),
        "dns = false\nssh_config = false\nweb_listen = \"127.0.0.1:7777\"\n",
    )
    .unwrap();
    let (address, _) = listening(&home);
    assert!(address.ip().is_loopback(), "{address}");
    assert_ne!(address.port(), 7777);
    home.ok(&["daemon", "stop"]);

    let mut bad = Home::new();
    bad.set_env("BANGER_WEB_LISTEN", "localhost");
    let out = bad.run(&["daemon", "status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("BANGER_WEB_LISTEN"), "{err}");
    assert!(err.contains("\"localhost\""), "{err}");
}
