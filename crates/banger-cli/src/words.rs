//! The command words after `--` (`vm run`, `vm exec`, `vm ssh`), read one way everywhere.
//!
//! Several words are an argv, passed exactly: `banger vm exec web -- printf '%s\n' 'a b'`
//! runs `printf` with the two arguments as typed. A single word that contains white space or
//! shell syntax is a command line for the guest's `/bin/sh -c`, as `ssh host 'a && b'` does:
//! `banger vm exec web -- 'cd /tmp && ls'`. A single plain word (`uname`) is a program.

/// What the words after `--` ask the guest to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandWords {
    /// A program and its arguments, passed exactly.
    Argv(Vec<String>),
    /// A command line for `/bin/sh -c`.
    Shell(String),
}

/// The bytes that make a single word a shell command line: white space, quotes, and the
/// shell's operators, expansions and globs.
const SHELL_SYNTAX: &[u8] = b" \t\n|&;<>()$`\\\"'*?[]#~{}!";

impl CommandWords {
    /// Reads the words after `--`; `None` when there are none.
    pub fn parse(words: &[String]) -> Option<Self> {
        match words {
            [] => None,
            [one] if one.bytes().any(|b| SHELL_SYNTAX.contains(&b)) => {
                Some(Self::Shell(one.clone()))
            }
            many => Some(Self::Argv(many.to_vec())),
        }
    }

    /// The argv to execute directly (the agent's exec takes no shell).
    pub fn argv(&self) -> Vec<String> {
        match self {
            Self::Argv(argv) => argv.clone(),
            Self::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
        }
    }

    /// The command line for ssh, which hands it to the login shell: a shell line as it is,
    /// an argv with every word quoted.
    pub fn remote_line(&self) -> String {
        match self {
            Self::Shell(line) => line.clone(),
            Self::Argv(argv) => argv.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" "),
        }
    }
}

/// Shell-quotes one word for the remote shell.
pub fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn several_words_are_an_argv_passed_exactly() {
        let c = CommandWords::parse(&words(&["printf", "%s|", "a b", "it's"])).unwrap();
        assert_eq!(c.argv(), words(&["printf", "%s|", "a b", "it's"]));
        assert_eq!(c.remote_line(), r"printf '%s|' 'a b' 'it'\''s'");
    }

    #[test]
    fn one_word_with_shell_syntax_is_a_shell_line() {
        for line in [
            "echo kept > /root/f",
            "a&&b",
            "exit 7",
            "ls *.rs",
            "echo $HOME",
        ] {
            let c = CommandWords::parse(&words(&[line])).unwrap();
            assert_eq!(c, CommandWords::Shell(line.into()));
            assert_eq!(c.argv(), words(&["/bin/sh", "-c", line]));
            assert_eq!(c.remote_line(), line);
        }
    }

    #[test]
    fn one_plain_word_is_a_program_and_none_is_nothing() {
        let c = CommandWords::parse(&words(&["/usr/bin/uname"])).unwrap();
        assert_eq!(c, CommandWords::Argv(words(&["/usr/bin/uname"])));
        assert_eq!(CommandWords::parse(&[]), None);
    }

    #[test]
    fn quoting_keeps_words() {
        assert_eq!(quote("uname"), "uname");
        assert_eq!(quote("exit 7"), "'exit 7'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
