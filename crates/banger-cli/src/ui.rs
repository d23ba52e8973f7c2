//! Terminal output: colour only on a TTY and never with `NO_COLOR`, aligned tables, JSON.

use std::io::{self, Write};

use serde::Serialize;

/// Where output goes and how it is styled.
pub struct Ui {
    out: Box<dyn Write>,
    err: Box<dyn Write>,
    color_out: bool,
    color_err: bool,
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
            out: Box::new(io::stdout()),
            err: Box::new(io::stderr()),
        }
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

/// Renders rows aligned under headers, columns separated by two spaces, no trailing blanks.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cols = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
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
    for row in rows {
        render(&mut row.iter().map(String::as_str), &mut out);
    }
    out
}

/// Key/value lines with the keys padded to one width.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<w$}  {v}\n"))
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
                vec![red.clone(), "a".into()],
                vec!["PASS".into(), "b".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[1], format!("{red}  a"));
        assert_eq!(lines[2], "PASS  b");
    }

    #[test]
    fn paint_only_when_on() {
        assert_eq!(paint(false, Style::Dim, "x"), "x");
        assert_eq!(paint(true, Style::Dim, "x"), "\x1b[2mx\x1b[0m");
        assert_eq!(visible_width(&paint(true, Style::Bold, "abc")), 3);
    }

    #[test]
    fn key_values_pad() {
        assert_eq!(
            key_values(&[("pid", "1".into()), ("socket", "/s".into())]),
            "pid     1\nsocket  /s\n"
        );
    }
}
