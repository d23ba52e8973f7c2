//! `banger ui`: the daemon's web UI link, opened in the user's browser when there is one.
//!
//! The link carries the daemon's token, and a program's arguments are readable by every
//! local user (`/proc/PID/cmdline`), so the browser is never given the link itself: it gets
//! a page in the private runtime dir (mode 0600, [`OPEN_PAGE`]) that forwards to the link,
//! as Jupyter does. Printed, the link only reaches the user's terminal.

use std::ffi::OsString;
use std::process::{Command, Stdio};

use banger_api::types::WebListener;

use banger_core::private::{self, FileMode};

use crate::error::CliError;
use crate::ui::Style;
use crate::{Ctx, args::UiArgs, connect};

/// The `web ui` line of `banger daemon status`.
pub fn listener_line(l: &WebListener) -> String {
    match l {
        WebListener::Off => "off (config web = false)".to_string(),
        WebListener::Listening { address, url, .. } => {
            format!("{url} (tcp {address}; open it with: banger ui)")
        }
        WebListener::Failed { error } => format!("not serving: {error}"),
    }
}

/// The program that opens a link: `$BROWSER` (its first word), else `xdg-open` when there is a
/// display (`DISPLAY` or `WAYLAND_DISPLAY`); `None`: print the link instead.
pub fn opener(
    browser: Option<OsString>,
    display: Option<OsString>,
    wayland: Option<OsString>,
) -> Option<String> {
    if let Some(b) = browser
        .and_then(|b| b.into_string().ok())
        .and_then(|b| b.split_whitespace().next().map(str::to_string))
    {
        return Some(b);
    }
    let shown = |v: &Option<OsString>| v.as_ref().is_some_and(|v| !v.is_empty());
    (shown(&display) || shown(&wayland)).then(|| "xdg-open".to_string())
}

/// The page in the runtime dir that forwards the browser to the login link.
pub const OPEN_PAGE: &str = "ui-open.html";

/// A page that sends the browser to `link` (escaped for an attribute and text).
pub fn forward_page(link: &str) -> String {
    let esc = link
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"0;url={esc}\"><title>banger</title></head>\
         <body><p><a href=\"{esc}\">Open banger's web UI</a></p></body></html>\n"
    )
}

/// Writes [`forward_page`] for `link` into `dir` (mode 0600, never through a symlink).
fn write_forward_page(dir: &std::path::Path, link: &str) -> Result<std::path::PathBuf, CliError> {
    use std::io::Write;
    let path = dir.join(OPEN_PAGE);
    let mut f = private::open_file(&path, FileMode::ReadWrite, crate::uid())?;
    let written = f
        .set_len(0)
        .and_then(|()| f.write_all(forward_page(link).as_bytes()));
    written.map_err(|source| CliError::OutputFile {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Opens (or prints) the UI's link.
pub async fn run(ctx: &mut Ctx, args: &UiArgs) -> Result<u8, CliError> {
    let (_client, st) = connect(ctx).await?;
    let (url, login) = match st.web {
        WebListener::Listening { url, login_url, .. } => (url, login_url),
        WebListener::Off => {
            return Err(CliError::Usage(
                "the web UI is off (config web = false); set web = true and restart the daemon (banger daemon stop)".into(),
            ));
        }
        WebListener::Failed { error } => {
            return Err(CliError::Usage(format!(
                "the web UI is not served: {error}"
            )));
        }
    };
    let program = if args.print {
        None
    } else {
        opener(
            std::env::var_os("BROWSER"),
            std::env::var_os("DISPLAY"),
            std::env::var_os("WAYLAND_DISPLAY"),
        )
    };
    if let Some(program) = program {
        let page = write_forward_page(&ctx.layout()?.runtime_dir, &login)?;
        let spawned = Command::new(&program)
            .arg(&page)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(_) => {
                ctx.ui
                    .line(&format!("opened {url} in your browser ({program})"))?;
                return Ok(0);
            }
            Err(e) => {
                let why = format!("cannot run {program} ({e}); open this link yourself:");
                ctx.ui.note(&ctx.ui.paint_err(Style::Yellow, &why))?;
            }
        }
    }
    ctx.ui.line(&login)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_variable_wins_then_xdg_open_with_a_display_else_printing() {
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(
            opener(s("firefox --new-tab"), None, None).as_deref(),
            Some("firefox")
        );
        assert_eq!(opener(None, s(":0"), None).as_deref(), Some("xdg-open"));
        assert_eq!(
            opener(None, None, s("wayland-0")).as_deref(),
            Some("xdg-open")
        );
        assert_eq!(opener(None, s(""), None), None);
        assert_eq!(opener(s(""), None, None), None);
    }

    #[test]
    fn the_forward_page_escapes_the_link() {
        let page = forward_page("http://127.0.0.1:1/?token=a&b=\"<x>");
        assert!(
            page.contains("url=http://127.0.0.1:1/?token=a&amp;b=&quot;&lt;x&gt;\""),
            "{page}"
        );
        assert!(!page.contains("<x>"));
    }

    #[test]
    fn status_names_the_url_or_why_there_is_none() {
        let l = WebListener::Listening {
            address: "127.0.0.1:7777".parse().unwrap(),
            url: "http://127.0.0.1:7777".into(),
            login_url: "http://127.0.0.1:7777/?token=s".into(),
        };
        let line = listener_line(&l);
        assert!(
            line.starts_with("http://127.0.0.1:7777 ") && !line.contains("token"),
            "{line}"
        );
        let f = listener_line(&WebListener::Failed {
            error: "taken".into(),
        });
        assert_eq!(f, "not serving: taken");
    }
}
