//! Who may use the web UI, and the headers every answer carries.
//!
//! Any local user can reach a loopback port, and any web page the owner visits can make the
//! browser send requests to it, so every request passes, in order:
//!
//! 1. the **Host allow-list**: `127.0.0.1`, `localhost`, `[::1]`, the listen address and
//!    config `web_hostnames`, each with the listener's port; anything else (DNS rebinding)
//!    gets `403` and nothing else;
//! 2. the **token**: a per-daemon secret (fresh at every start) that `banger ui` puts in the
//!    URL once (`/?token=...`); the answer sets it as an `HttpOnly`, `SameSite=Strict`
//!    cookie and moves on to the same path without it, so it leaves the address bar.
//!    Without a valid cookie, every page but the static assets is `401`;
//! 3. for every method but `GET`/`HEAD`: the **Origin** must be this UI's own
//!    (`http://` + the allowed Host), `Sec-Fetch-Site`, when sent, `same-origin`, and the
//!    form's `csrf` field the per-daemon CSRF token the pages embed; else `403`, before any
//!    handler runs.
//!
//! Every answer carries a Content-Security-Policy that allows only the daemon's own script,
//! styles and connections (no inline script, no third-party origin, no framing), and no
//! CORS header ever: other origins cannot read any answer.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::Web;
use crate::ops::{OpId, new_op_id};

/// The session cookie's name.
pub const COOKIE: &str = "banger_session";

/// The form field every state-changing request carries.
pub const CSRF_FIELD: &str = "csrf";

/// The largest form body the UI reads (its forms are a few hundred bytes).
pub const MAX_FORM_BODY: usize = 64 << 10;

/// Every answer's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The UI's secrets and the names it answers to.
pub struct Guard {
    token: String,
    csrf: String,
    port: u16,
    names: Vec<String>,
    base: String,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("port", &self.port)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// 256 bits from the OS's random source (two v4 UUIDs' random bits and their version
/// nibbles), as 64 hex digits.
fn secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// `a == b` in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

impl Guard {
    /// Fresh secrets for a listener bound at `address`, answering also to `extra` names.
    pub fn new(address: SocketAddr, extra: &[String]) -> Self {
        let ip = match address {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        let mut names: Vec<String> = ["127.0.0.1", "localhost", "[::1]"]
            .into_iter()
            .map(str::to_string)
            .collect();
        let unspecified = address.ip().is_unspecified();
        if !unspecified && !names.contains(&ip) {
            names.push(ip.clone());
        }
        names.extend(extra.iter().map(|n| n.to_ascii_lowercase()));
        let base = if unspecified || address.ip().is_loopback() {
            format!("http://127.0.0.1:{}", address.port())
        } else {
            format!("http://{ip}:{}", address.port())
        };
        Self {
            token: secret(),
            csrf: secret(),
            port: address.port(),
            names,
            base,
        }
    }

    /// The UI's address, without the token.
    pub fn base_url(&self) -> String {
        self.base.clone()
    }

    /// The secret a browser trades for its cookie.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The token every form carries.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether a `Host` header names this UI: an allowed name with the listener's port.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let Some((name, port)) = host.rsplit_once(':') else {
            return false;
        };
        if name.ends_with(']') != name.starts_with('[') || port.parse::<u16>() != Ok(self.port) {
            return false;
        }
        self.names.iter().any(|n| n == name)
    }

    fn cookie_ok(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(k, v)| k == COOKIE && same(v, &self.token))
    }
}

/// A refusal: plain text, with the headers every answer gets.
fn refuse(status: StatusCode, why: &str) -> Response {
    tracing::info!(status = status.as_u16(), why, "web request refused");
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{why}\n"),
    )
        .into_response()
}

/// The checks of the module docs, then the handler; the answer gets [`secure_headers`].
pub async fn protect(State(web): State<Arc<Web>>, req: Request, next: Next) -> Response {
    let mut resp = check(&web, req, next).await;
    secure_headers(resp.headers_mut());
    resp
}

async fn check(web: &Web, req: Request, next: Next) -> Response {
    let g = &web.guard;
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if !g.host_allowed(&host) {
        return refuse(
            StatusCode::FORBIDDEN,
            "this web UI answers only to 127.0.0.1, localhost and its configured names",
        );
    }
    let path = req.uri().path().to_string();
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    if safe && path.starts_with("/assets/") {
        return next.run(req).await;
    }
    let token = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    if let Some(token) = token {
        if !safe || !same(&token, &g.token) {
            return super::pages::unauthorized(StatusCode::UNAUTHORIZED);
        }
        // Trade the token for the cookie, and drop it from the address bar: a page that
        // moves on to the same path by itself. Not a redirect: a link opened from another
        // site (the file `banger ui` writes) starts a cross-site navigation, and a
        // `SameSite=Strict` cookie set in it is not sent along its redirects; this page's
        // own navigation is same-site.
        let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", g.token);
        let mut resp = super::pages::answer(StatusCode::OK, super::pages::signed_in(&path));
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        return resp;
    }
    if !g.cookie_ok(req.headers()) {
        return super::pages::unauthorized(StatusCode::UNAUTHORIZED);
    }
    if safe {
        return next.run(req).await;
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !origin.eq_ignore_ascii_case(&format!("http://{host}")) {
        return refuse(
            StatusCode::FORBIDDEN,
            "refused: a state-changing request must come from this UI's own pages (Origin)",
        );
    }
    let site = req
        .headers()
        .get("sec-fetch-site")
        .and_then(|h| h.to_str().ok());
    if site.is_some_and(|s| s != "same-origin") {
        return refuse(
            StatusCode::FORBIDDEN,
            "refused: a state-changing request must come from this UI's own pages (Sec-Fetch-Site)",
        );
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_FORM_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "refused: the form is larger than the UI reads",
            );
        }
    };
    let csrf_ok = form_urlencoded::parse(&bytes)
        .filter(|(k, _)| k == CSRF_FIELD)
        .map(|(_, v)| same(&v, &g.csrf))
        .collect::<Vec<_>>()
        == [true];
    if !csrf_ok {
        return refuse(
            StatusCode::FORBIDDEN,
            "refused: the form's CSRF token is missing or wrong (reload the page)",
        );
    }
    // A state-changing request is an operation like an API request: an id, a log span, a
    // line among the dashboard's recent operations.
    let op_id = new_op_id();
    let guard = web.state.ops.begin(
        op_id.clone(),
        parts.method.to_string(),
        format!("web {path}"),
    );
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut().insert(OpId(op_id.clone()));
    let span = tracing::info_span!("op", op_id = %op_id, method = %req.method(), path = %path);
    let resp = tracing::Instrument::instrument(next.run(req), span).await;
    guard.finish(resp.status().as_u16());
    resp
}

/// The headers of every answer (module docs). The referrer policy is `same-origin`, not
/// `no-referrer`: under `no-referrer` a browser sends `Origin: null` with the UI's own form
/// posts, which the Origin check must refuse; other origins still get no referrer.
pub fn secure_headers(h: &mut HeaderMap) {
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_must_be_an_allowed_name_with_the_listener_s_port() {
        let g = Guard::new("127.0.0.1:7777".parse().unwrap(), &["box.lan".into()]);
        for ok in [
            "127.0.0.1:7777",
            "localhost:7777",
            "LOCALHOST:7777",
            "[::1]:7777",
            "box.lan:7777",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:7778",
            "evil.example:7777",
            "localhost.evil.example:7777",
            "::1:7777",
            "",
        ] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
        let v6 = Guard::new("[::1]:9000".parse().unwrap(), &[]);
        assert!(v6.host_allowed("[::1]:9000"));
        assert_eq!(v6.base_url(), "http://127.0.0.1:9000");
    }

    #[test]
    fn secrets_are_long_distinct_and_compared_whole() {
        let g = Guard::new("127.0.0.1:1".parse().unwrap(), &[]);
        assert_eq!(g.token().len(), 64);
        assert_ne!(g.token(), g.csrf());
        assert!(same(g.token(), g.token()));
        assert!(!same(g.token(), &g.token()[..63]));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("a=b; {COOKIE}={}", g.token()).parse().unwrap(),
        );
        assert!(g.cookie_ok(&h));
        h.insert(
            header::COOKIE,
            format!("{COOKIE}={}x", g.token()).parse().unwrap(),
        );
        assert!(!g.cookie_ok(&h));
    }
}
