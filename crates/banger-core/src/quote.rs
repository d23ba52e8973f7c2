//! Quoting: bytes a peer chose (a guest, a VMM, a daemon) in an error message, never more
//! than a bounded prefix, so a hostile answer cannot turn one error line into megabytes; and
//! one word for a POSIX shell ([`shell_word`]), for command lines shown to humans and for
//! the scripts banger runs in a guest.

/// How many bytes of a peer's answer an error message quotes unless told otherwise.
pub const DEFAULT_QUOTE: usize = 512;

/// `bytes` as (lossy UTF-8) text, cut after `max` bytes with a note saying how long it was.
pub fn quote_prefix(bytes: &[u8], max: usize) -> String {
    if bytes.len() <= max {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let head = String::from_utf8_lossy(&bytes[..max]);
    // A multi-byte character cut in two decodes as U+FFFD: drop it.
    format!(
        "{}... ({} bytes in all)",
        head.trim_end_matches('\u{fffd}'),
        bytes.len()
    )
}

/// `word` as one word for a POSIX shell: unchanged when it is made only of characters no
/// shell splits or interprets, else in single quotes (a `'` inside becomes `'\''`).
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_only_when_a_shell_would_read_them() {
        assert_eq!(shell_word("/root/repo"), "/root/repo");
        assert_eq!(shell_word(""), "''");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word("$(x)"), "'$(x)'");
        assert_eq!(shell_word("line\nbreak"), "'line\nbreak'");
    }

    #[test]
    fn short_text_is_kept_whole() {
        assert_eq!(quote_prefix(b"oops", 10), "oops");
        assert_eq!(quote_prefix(b"", 10), "");
        assert_eq!(quote_prefix(b"0123456789", 10), "0123456789");
    }

    #[test]
    fn long_text_is_cut_with_its_length() {
        assert_eq!(
            quote_prefix(b"0123456789ab", 10),
            "0123456789... (12 bytes in all)"
        );
        let huge = vec![b'x'; 1 << 20];
        assert!(quote_prefix(&huge, DEFAULT_QUOTE).len() < DEFAULT_QUOTE + 40);
    }

    #[test]
    fn a_character_cut_in_two_is_dropped() {
        // "é" is two bytes; cutting after one leaves half of it.
        assert_eq!(quote_prefix("aé".as_bytes(), 2), "a... (3 bytes in all)");
    }
}
