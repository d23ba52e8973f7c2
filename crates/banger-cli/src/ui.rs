//! Terminal output: colour only on a TTY and never with `NO_COLOR`, aligned tables, JSON.
//!
//! Every byte for stdout goes through one writer, [`Ui::out`]. Rust starts a program with
//! `SIGPIPE` ignored (and a spawned child gets it back at its default), so a reader that goes
//! away early (`banger vm list --json | head -c 1`) shows up here as an `EPIPE` write error,
//! never as a signal. That writer marks such an error as [`StdoutClosed`]; the CLI turns it
//! into a quiet exit with status 0, as ripgrep does, while a broken pipe anywhere else (the
//! daemon's socket) stays an error.
//!
//! Tables and key/value lists escape every cell ([`escape::Mode::Cell`]): a value from a
//! guest or an image can neither send an escape sequence nor start a fake row. Colour is
//! added by banger after escaping, through [`Cell`].

use std::io::{self, Write};

use serde::Serialize;

use crate::escape::{self, Mode};

/// Where output goes and how it is styled.
pub struct Ui {
    out: Box<dyn Write>,
    err: Box<dyn Write>,
    color_out: bool,
    color_err: bool,
    tty_out: bool,
}

impl std::fmt::Debug for Ui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ui")
            .field("color_out", &self.color_out)
            .field("color_err", &self.color_err)
            .finish()
    }
}

/// A style for [`Ui::paint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Bold,
    Dim,
    Green,
    Yellow,
    Red,
}

impl Style {
    fn code(self) -> &'static str {
        match self {
            Self::Bold => "1",
            Self::Dim => "2",
            Self::Green => "32",
            Self::Yellow => "33",
            Self::Red => "31",
        }
    }
}

/// Wraps `text` in the ANSI codes for `style` when `on`.
pub fn paint(on: bool, style: Style, text: &str) -> String {
    if on {
        format!("\x1b[{}m{text}\x1b[0m", style.code())
    } else {
        text.to_string()
    }
}

impl Ui {
    /// The process's stdout/stderr; colour decided from TTY-ness and `no_color`.
    pub fn stdio(no_color: bool) -> Self {
        use std::io::IsTerminal;
        Self {
            color_out: !no_color && io::stdout().is_terminal(),
            color_err: !no_color && io::stderr().is_terminal(),
            tty_out: io::stdout().is_terminal(),
            out: Box::new(PipeAware(io::stdout())),
            err: Box::new(io::stderr()),
        }
    }

    /// Whether stdout is a terminal (untrusted text printed raw must then be escaped).
    pub fn stdout_is_terminal(&self) -> bool {
        self.tty_out
    }

    /// A table cell styled for stdout: coloured only when stdout gets colour.
    pub fn cell(&self, style: Style, text: impl Into<String>) -> Cell {
        Cell::plain(String::new()).then(text, self.color_out.then_some(style))
    }

    pub fn out(&mut self) -> &mut dyn Write {
        &mut self.out
    }

    pub fn err(&mut self) -> &mut dyn Write {
        &mut self.err
    }

    /// Styles text for stdout.
    pub fn paint(&self, style: Style, text: &str) -> String {
        paint(self.color_out, style, text)
    }

    /// Styles text for stderr.
    pub fn paint_err(&self, style: Style, text: &str) -> String {
        paint(self.color_err, style, text)
    }

    /// Pretty JSON on stdout.
    pub fn json<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
        writeln!(self.out, "{text}")
    }

    /// A line on stdout.
    pub fn line(&mut self, text: &str) -> io::Result<()> {
        writeln!(self.out, "{text}")
    }

    /// A line on stderr (notices, warnings).
    pub fn note(&mut self, text: &str) -> io::Result<()> {
        writeln!(self.err, "{text}")
    }
}

/// Why a write to stdout failed when its reader went away: the payload of the
/// [`io::ErrorKind::BrokenPipe`] error [`Ui::out`] returns then.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub struct StdoutClosed;

impl StdoutClosed {
    /// Whether `e` is stdout's reader going away (and not a broken pipe elsewhere).
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<StdoutClosed>())
    }
}

/// A writer whose broken-pipe errors say [`StdoutClosed`].
struct PipeAware<W>(W);

impl<W: Write> PipeAware<W> {
    fn mark<T>(r: io::Result<T>) -> io::Result<T> {
        r.map_err(|e| {
            if e.kind() == io::ErrorKind::BrokenPipe {
                io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed)
            } else {
                e
            }
        })
    }
}

impl<W: Write> Write for PipeAware<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Self::mark(self.0.write(buf))
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Self::mark(self.0.write_all(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Self::mark(self.0.flush())
    }
}

/// Visible width of a string, ignoring ANSI escape sequences.
pub fn visible_width(s: &str) -> usize {
    let mut width = 0;
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => width += 1,
        }
    }
    width
}

/// One cell of a table or value of a key/value list: text in parts, each escaped and then
/// painted with its style (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    parts: Vec<(String, Option<Style>)>,
}

impl Cell {
    pub fn plain(text: impl Into<String>) -> Self {
        Self {
            parts: vec![(text.into(), None)],
        }
    }

    /// This cell followed by `text` in `style`.
    pub fn then(mut self, text: impl Into<String>, style: Option<Style>) -> Self {
        self.parts.push((text.into(), style));
        self
    }

    /// This cell followed by `other`.
    pub fn append(mut self, other: Cell) -> Self {
        self.parts.extend(other.parts);
        self
    }

    /// The escaped, painted text.
    fn render(&self) -> String {
        self.parts
            .iter()
            .map(|(text, style)| {
                let text = escape::escape(text, Mode::Cell);
                match style {
                    Some(style) => paint(true, *style, &text),
                    None => text.into_owned(),
                }
            })
            .collect()
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Self::plain(text)
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Self::plain(text)
    }
}

/// Renders rows aligned under headers, columns separated by two spaces, no trailing blanks.
/// Every cell is escaped (see the module docs).
pub fn table<C: Clone + Into<Cell>>(headers: &[&str], rows: &[Vec<C>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| c.clone().into().render()).collect())
        .collect();
    let cols = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(visible_width(cell));
        }
    }
    let mut out = String::new();
    let render = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
        let mut line = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < cols {
                line.push_str(&" ".repeat(widths[i].saturating_sub(visible_width(cell))));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    render(&mut headers.iter().copied(), &mut out);
    for row in &rows {
        render(&mut row.iter().map(String::as_str), &mut out);
    }
    out
}

/// Key/value lines with the keys padded to one width; every value is escaped.
pub fn key_values<C: Clone + Into<Cell>>(pairs: &[(&str, C)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<w$}  {}\n", v.clone().into().render()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["NAME", "STATE", "IP"],
            &[
                vec!["web".into(), "running".into(), "172.30.0.2".into()],
                vec!["database-1".into(), "stopped".into(), String::new()],
            ],
        );
        assert_eq!(
            t,
            "NAME        STATE    IP\nweb         running  172.30.0.2\ndatabase-1  stopped\n"
        );
    }

    #[test]
    fn table_ignores_colour_codes_in_width() {
        let red = paint(true, Style::Red, "FAIL");
        let t = table(
            &["S", "X"],
            &[
                vec![Cell::plain("").then("FAIL", Some(Style::Red)), "a".into()],
                vec!["PASS".into(), "b".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[1], format!("{red}  a"));
        assert_eq!(lines[2], "PASS  b");
    }

    #[test]
    fn adversarial_table_cells_cannot_add_rows_or_escape_sequences() {
        let t = table(
            &["PROCESS", "COMMAND"],
            &[vec![
                "x\x1b[2J".to_string(),
                "sleep 1\nroot  /bin/evil\r".to_string(),
            ]],
        );
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(!t.contains('\x1b') && !t.contains('\r'), "{t:?}");
        assert!(t.contains("x\\x1b[2J  sleep 1\\nroot  /bin/evil\\r"), "{t}");
    }

    #[test]
    fn adversarial_key_values_escape_values_but_keep_banger_colour() {
        let kv = key_values(&[
            ("hostname", Cell::plain("evil\u{202e}\x1b]0;title\x07")),
            (
                "status",
                Cell::plain("").then("healthy", Some(Style::Green)),
            ),
        ]);
        assert_eq!(
            kv,
            "hostname  evil\\u{202e}\\x1b]0;title\\x07\nstatus    \x1b[32mhealthy\x1b[0m\n"
        );
    }

    #[test]
    fn paint_only_when_on() {
        assert_eq!(paint(false, Style::Dim, "x"), "x");
        assert_eq!(paint(true, Style::Dim, "x"), "\x1b[2mx\x1b[0m");
        assert_eq!(visible_width(&paint(true, Style::Bold, "abc")), 3);
    }

    /// A writer whose reader has gone away.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn broken_pipe_on_stdout_is_marked_and_other_errors_are_not() {
        let mut out = PipeAware(Closed);
        let e = out.write_all(b"x").unwrap_err();
        assert!(StdoutClosed::is(&e), "{e:?}");
        assert!(StdoutClosed::is(&out.flush().unwrap_err()));
        // A broken pipe that did not come through stdout's writer is not the reader leaving.
        assert!(!StdoutClosed::is(&io::ErrorKind::BrokenPipe.into()));
        let mut full = PipeAware(&mut [0u8; 1][..]);
        let e = full.write_all(b"xy").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
        assert!(!StdoutClosed::is(&e));
    }

    #[test]
    fn key_values_pad() {
        assert_eq!(
            key_values(&[("pid", "1".to_string()), ("socket", "/s".to_string())]),
            "pid     1\nsocket  /s\n"
        );
    }
}
