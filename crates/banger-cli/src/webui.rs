//! `banger ui`: the daemon's web UI link, opened in the user's browser when there is one.

use std::ffi::OsString;
use std::process::{Command, Stdio};

use banger_api::types::WebListener;

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
        let spawned = Command::new(&program)
            .arg(&login)
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
