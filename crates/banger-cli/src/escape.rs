//! Making untrusted text safe to print: what a guest, an image or a bundle chose (process
//! names and command lines, console output, manifest fields) must not drive the user's
//! terminal or fake output lines.
//!
//! Escaped are the C0 controls (ESC starts every terminal escape sequence; `\r` and `\b`
//! overwrite what was printed), DEL, the C1 controls (U+0080–U+009F: a terminal may read U+009B
//! as CSI), the Unicode bidirectional controls (they reorder what the user sees: "Trojan
//! Source"), the line and paragraph separators, and bytes that are not UTF-8. They become
//! `\n`, `\r`, `\t`, `\x1b`, `\u{202e}` or `\xff`: visible, and unambiguous enough to read.
//!
//! [`Mode::Cell`] is for one table cell or value: everything above is escaped, newlines and
//! tabs included, so text cannot start a fake row. [`Mode::Text`] is for multi-line output
//! (`vm logs`): newlines, tabs and `\r\n` line ends pass, a lone `\r` does not.

use std::borrow::Cow;
use std::fmt::Write as _;

/// What the escaped text is printed as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One table cell or key/value: one line, no tabs.
    Cell,
    /// Lines of output: `\n`, `\t` and `\r\n` are kept.
    Text,
}

/// Whether `c` is escaped in every mode (what [`Mode::Text`] keeps is decided by the caller).
fn dangerous(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        // Bidirectional controls: ALM, LRM, RLM, LRE..RLO, LRI..PDI.
        | '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        // Line and paragraph separators.
        | '\u{2028}' | '\u{2029}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// `text` with every dangerous character escaped for `mode`; borrowed when nothing was.
pub fn escape(text: &str, mode: Mode) -> Cow<'_, str> {
    if !text.chars().any(dangerous) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    escape_str(&mut out, text, mode, true);
    Cow::Owned(out)
}

/// Escapes `text` into `out`. A `\r` ending `text` is kept in [`Mode::Text`] only when
/// `ends_input` is false and the caller will see whether a `\n` follows: then it is not
/// written, and the returned length excludes it.
fn escape_str(out: &mut String, text: &str, mode: Mode, ends_input: bool) -> usize {
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let keep = match (mode, c) {
            (Mode::Text, '\n' | '\t') => true,
            (Mode::Text, '\r') => match chars.peek() {
                Some((_, '\n')) => true,
                Some(_) => false,
                None if !ends_input => return i,
                None => false,
            },
            _ => !dangerous(c),
        };
        if keep {
            out.push(c);
        } else {
            push_escaped(out, c);
        }
    }
    text.len()
}

/// Escapes raw bytes (a log): valid UTF-8 as [`escape`] does, other bytes as `\xNN`.
/// Returns how many bytes of `bytes` were used: all of them when `ends_input`, else all but
/// an incomplete character or a `\r` at the very end, which the next call gets again.
fn escape_bytes_into(out: &mut String, mut bytes: &[u8], mode: Mode, ends_input: bool) -> usize {
    let total = bytes.len();
    loop {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                let used = escape_str(out, text, mode, ends_input);
                return total - bytes.len() + used;
            }
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                // `valid_up_to` ends the valid prefix, so this never falls back to "".
                let text = std::str::from_utf8(valid).unwrap_or_default();
                // What follows `text` is not a `\n`, so a final `\r` in it is lone.
                escape_str(out, text, mode, true);
                match e.error_len() {
                    Some(n) => {
                        for b in &rest[..n] {
                            let _ = write!(out, "\\x{b:02x}");
                        }
                        bytes = &rest[n..];
                    }
                    None if !ends_input => return total - rest.len(),
                    None => {
                        for b in rest {
                            let _ = write!(out, "\\x{b:02x}");
                        }
                        return total;
                    }
                }
            }
        }
    }
}

/// Escapes a whole byte string (a complete log).
pub fn escape_bytes(bytes: &[u8], mode: Mode) -> String {
    let mut out = String::with_capacity(bytes.len());
    escape_bytes_into(&mut out, bytes, mode, true);
    out
}

/// Escapes a byte stream that arrives in pieces (`vm logs -f`): a character or a `\r\n`
/// split between two pieces is escaped as if it had come whole.
#[derive(Debug)]
pub struct StreamEscaper {
    mode: Mode,
    carry: Vec<u8>,
}

impl StreamEscaper {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            carry: Vec::new(),
        }
    }

    /// The escaped text of `piece`, holding back at most a few bytes for the next one.
    pub fn push(&mut self, piece: &[u8]) -> String {
        self.carry.extend_from_slice(piece);
        let mut out = String::with_capacity(self.carry.len());
        let used = escape_bytes_into(&mut out, &self.carry, self.mode, false);
        self.carry.drain(..used);
        out
    }

    /// What is held back, escaped as the end of the stream.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.carry);
        escape_bytes(&rest, self.mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(
            escape("nginx: master process", Mode::Cell),
            Cow::Borrowed(_)
        ));
        assert_eq!(escape("naïve café ✓ 日本", Mode::Cell), "naïve café ✓ 日本");
    }

    #[test]
    fn adversarial_escape_sequences_never_pass() {
        for (input, want) in [
            ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),
            ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),
            ("\x1bP+q\x1b\\", "\\x1bP+q\\x1b\\"),
            ("ok\x08\x08\x08no", "ok\\x08\\x08\\x08no"),
            ("del\x7f", "del\\x7f"),
            ("\u{9b}31m", "\\u{9b}31m"),
            ("\u{85}next", "\\u{85}next"),
            ("\0nul", "\\x00nul"),
        ] {
            assert_eq!(escape(input, Mode::Cell), want, "{input:?}");
            assert_eq!(escape(input, Mode::Text), want, "{input:?}");
        }
    }

    #[test]
    fn adversarial_hyperlinks_and_carriage_return_overwrites_never_pass() {
        // OSC 8: a link whose visible text hides where it points.
        let link = "\x1b]8;;http://evil.example/\x07docs\x1b]8;;\x07";
        let want = "\\x1b]8;;http://evil.example/\\x07docs\\x1b]8;;\\x07";
        assert_eq!(escape(link, Mode::Cell), want);
        assert_eq!(escape(link, Mode::Text), want);
        // `\r` returns to the line start: "FAILED" would be overprinted by "OK    ".
        let overwrite = "check: FAILED\rcheck: OK    \n";
        assert_eq!(
            escape(overwrite, Mode::Text),
            "check: FAILED\\rcheck: OK    \n"
        );
        assert_eq!(
            escape(overwrite, Mode::Cell),
            "check: FAILED\\rcheck: OK    \\n"
        );
    }

    #[test]
    fn adversarial_bidi_overrides_and_separators_are_escaped() {
        assert_eq!(
            escape("user\u{202e}gnp.exe", Mode::Cell),
            "user\\u{202e}gnp.exe"
        );
        for c in [
            '\u{61c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202d}', '\u{2066}', '\u{2069}',
            '\u{2028}', '\u{2029}',
        ] {
            let text = format!("a{c}b");
            let out = escape(&text, Mode::Text);
            assert!(!out.contains(c), "{c:?} passed: {out}");
            assert_eq!(out, format!("a\\u{{{:x}}}b", c as u32));
        }
    }

    #[test]
    fn adversarial_a_cell_cannot_fake_a_row() {
        let fake = "python3\ntcp  web.vm:22  sshd  /usr/sbin/sshd\r\tx";
        let out = escape(fake, Mode::Cell);
        assert!(
            !out.contains('\n') && !out.contains('\r') && !out.contains('\t'),
            "{out}"
        );
        assert_eq!(out, "python3\\ntcp  web.vm:22  sshd  /usr/sbin/sshd\\r\\tx");
    }

    #[test]
    fn text_keeps_lines_tabs_and_crlf_but_not_a_lone_cr() {
        assert_eq!(escape("a\tb\r\nc\n", Mode::Text), "a\tb\r\nc\n");
        assert_eq!(escape("50%\r100%\n", Mode::Text), "50%\\r100%\n");
        assert_eq!(escape("end\r", Mode::Text), "end\\r");
    }

    #[test]
    fn adversarial_bytes_that_are_not_utf8_are_shown_as_hex() {
        assert_eq!(
            escape_bytes(b"ok \xff\xfe done", Mode::Text),
            "ok \\xff\\xfe done"
        );
        // A raw C1 byte (an 8-bit CSI) is not UTF-8 on its own.
        assert_eq!(escape_bytes(b"\x9b31m", Mode::Text), "\\x9b31m");
        assert_eq!(escape_bytes(b"cut \xe6\x97", Mode::Text), "cut \\xe6\\x97");
        assert_eq!(escape_bytes("日本\n".as_bytes(), Mode::Text), "日本\n");
    }

    #[test]
    fn a_stream_split_anywhere_escapes_like_the_whole() {
        let whole: &[u8] = &[
            "boot \x1b[32mOK\x1b[0m 日本\r\nlone\rcr ".as_bytes(),
            b"\xff end\r\n",
        ]
        .concat();
        let want = escape_bytes(whole, Mode::Text);
        for split in 0..=whole.len() {
            let mut s = StreamEscaper::new(Mode::Text);
            let mut got = s.push(&whole[..split]);
            got.push_str(&s.push(&whole[split..]));
            got.push_str(&s.finish());
            assert_eq!(got, want, "split at {split}");
        }
        // One byte at a time, too.
        let mut s = StreamEscaper::new(Mode::Text);
        let mut got: String = whole.iter().map(|b| s.push(&[*b])).collect();
        got.push_str(&s.finish());
        assert_eq!(got, want);
    }
}
