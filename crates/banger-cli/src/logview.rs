//! `vm logs`: printing a VM's console and VMM logs, and following them (`-f`) across the
//! daemon's rotations.
//!
//! The daemon caps a log by copy-then-truncate (`<log>.1` is replaced by a rename, then the live
//! file is truncated to zero), so the live file keeps its inode but shrinks. A follower that
//! only remembered an offset would wait, silent, until the log grew past its old length again
//! and then print from the middle of new text. [`Tail`] notices a rotation either way — the
//! live file is shorter than what was printed, or `<log>.1` is a new file — and starts again
//! at the top of the live file.
//!
//! What a guest wrote goes to a pipe or a file byte for byte; on a terminal it is escaped
//! ([`Mode::Text`]): lines and tabs pass, escape sequences and a lone `\r` do not.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use banger_core::logs::rotated_path;

use crate::escape::{Mode, StreamEscaper};

/// At most this much of a log is read per poll, so a flood is printed in bounded pieces.
const READ_CHUNK: u64 = 1 << 20;

/// Identity of a file: device and inode.
type FileId = (u64, u64);

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Reads up to `max` bytes of `path` from `offset`, and the file's length; a missing file is
/// empty.
fn read_at(path: &Path, offset: u64, max: u64) -> io::Result<(Vec<u8>, u64)> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if offset >= len {
        return Ok((Vec::new(), len));
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut data = Vec::new();
    f.take(max.min(len - offset)).read_to_end(&mut data)?;
    Ok((data, len))
}

/// What a poll of a [`Tail`] saw besides new bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Nothing but (possibly) new bytes.
    Grew,
    /// The log was rotated since the last poll; printing restarted at its top. What the guest
    /// wrote between the last poll and the rotation is in `<log>.1`, not printed again.
    Rotated,
}

/// One log being printed: where it is, how far it was printed, and how.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    offset: u64,
    rotated: Option<FileId>,
    /// A new `<log>.1` was seen while the live file had not shrunk (yet).
    rename_seen: bool,
    escaper: Option<StreamEscaper>,
}

impl Tail {
    /// A log at `path`, printed escaped when `escape` (stdout is a terminal), else raw.
    pub fn new(path: PathBuf, escape: bool) -> Self {
        Self {
            path,
            offset: 0,
            rotated: None,
            rename_seen: false,
            escaper: escape.then(|| StreamEscaper::new(Mode::Text)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, out: &mut dyn Write, data: &[u8]) -> io::Result<()> {
        match &mut self.escaper {
            Some(e) => out.write_all(e.push(data).as_bytes()),
            None => out.write_all(data),
        }
    }

    fn flush_escaper(&mut self, out: &mut dyn Write) -> io::Result<()> {
        if let Some(e) = &mut self.escaper {
            out.write_all(e.finish().as_bytes())?;
        }
        Ok(())
    }

    /// Whether there is anything to print (the log or its older part is not empty).
    pub fn is_empty(&self) -> bool {
        let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        len(&rotated_path(&self.path)) == 0 && len(&self.path) == 0
    }

    /// Prints what the log holds now: its older part (`<log>.1`) and then the live file.
    pub fn dump(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let rotated = rotated_path(&self.path);
        self.rotated = file_id(&rotated);
        let mut offset = 0;
        loop {
            let (data, _) = read_at(&rotated, offset, READ_CHUNK)?;
            if data.is_empty() {
                break;
            }
            offset += data.len() as u64;
            self.write(out, &data)?;
        }
        // The older part ended where the live file begins: nothing is carried across.
        self.flush_escaper(out)?;
        self.drain(out)
    }

    /// Prints the live file from the offset to its current end.
    fn drain(&mut self, out: &mut dyn Write) -> io::Result<()> {
        loop {
            let (data, _) = read_at(&self.path, self.offset, READ_CHUNK)?;
            if data.is_empty() {
                return Ok(());
            }
            self.offset += data.len() as u64;
            self.write(out, &data)?;
        }
    }

    /// Prints what was appended since the last call, restarting at the top after a rotation.
    pub fn poll(&mut self, out: &mut dyn Write) -> io::Result<Event> {
        let rotated = file_id(&rotated_path(&self.path));
        let len = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        let renamed = rotated.is_some() && rotated != self.rotated;
        if renamed && len >= self.offset && !self.rename_seen {
            // `<log>.1` is renamed in just before the live file is truncated: wait one poll
            // for the truncate rather than print the old file's tail as new text.
            self.rename_seen = true;
            return Ok(Event::Grew);
        }
        let event = if len < self.offset || renamed {
            self.rotated = rotated;
            self.offset = 0;
            self.flush_escaper(out)?;
            Event::Rotated
        } else {
            Event::Grew
        };
        self.rename_seen = false;
        self.drain(out)?;
        Ok(event)
    }

    /// Prints what is held back (an incomplete character at the end), at the end of output.
    pub fn finish(&mut self, out: &mut dyn Write) -> io::Result<()> {
        self.flush_escaper(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    /// A whole log's bytes as printed on a terminal.
    fn escaped(bytes: &[u8]) -> Vec<u8> {
        crate::escape::escape_bytes(bytes, Mode::Text).into_bytes()
    }

    fn append(path: &Path, data: &[u8]) {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(data)
            .unwrap();
    }

    /// What the daemon's cap does: newest half into `<log>.1` by rename, then truncate.
    fn rotate(path: &Path) {
        let data = std::fs::read(path).unwrap();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &data[data.len() / 2..]).unwrap();
        std::fs::rename(&tmp, rotated_path(path)).unwrap();
        OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(0)
            .unwrap();
    }

    #[test]
    fn a_pipe_gets_the_log_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let hostile = b"\x1b]8;;http://evil/\x07click\x1b]8;;\x07\r\x1b[2Kok \xff\x9b\n";
        append(&log, hostile);
        let mut out = Vec::new();
        let mut t = Tail::new(log.clone(), false);
        t.dump(&mut out).unwrap();
        t.finish(&mut out).unwrap();
        assert_eq!(out, hostile);
    }

    #[test]
    fn adversarial_a_terminal_gets_no_escape_sequence_from_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        append(
            &log,
            b"\x1b]8;;http://evil/\x07click\x1b]8;;\x07\nfake ok\r\x1b[2KFAILED\n\x9b2J \xe2\x80\xae\n",
        );
        let mut out = Vec::new();
        let mut t = Tail::new(log.clone(), true);
        t.dump(&mut out).unwrap();
        t.finish(&mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "\\x1b]8;;http://evil/\\x07click\\x1b]8;;\\x07\nfake ok\\r\\x1b[2KFAILED\n\\x9b2J \\u{202e}\n"
        );
        assert_eq!(escaped(&std::fs::read(&log).unwrap()), out.as_bytes());
    }

    #[test]
    fn dump_prints_the_older_part_first() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(rotated_path(&log), b"old\n").unwrap();
        std::fs::write(&log, b"new\n").unwrap();
        let mut out = Vec::new();
        Tail::new(log, false).dump(&mut out).unwrap();
        assert_eq!(out, b"old\nnew\n");
    }

    #[test]
    fn follow_prints_what_is_appended_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut t = Tail::new(log.clone(), false);
        let mut out = Vec::new();
        t.dump(&mut out).unwrap();
        assert!(out.is_empty() && t.is_empty());
        append(&log, b"one\n");
        assert_eq!(t.poll(&mut out).unwrap(), Event::Grew);
        assert_eq!(t.poll(&mut out).unwrap(), Event::Grew);
        append(&log, b"two\n");
        t.poll(&mut out).unwrap();
        assert_eq!(out, b"one\ntwo\n");
    }

    #[test]
    fn adversarial_log_follow_survives_a_truncate_to_a_shorter_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        append(&log, &b"x".repeat(4096));
        let mut t = Tail::new(log.clone(), false);
        let mut out = Vec::new();
        t.dump(&mut out).unwrap();
        rotate(&log);
        append(&log, b"after\n");
        out.clear();
        assert_eq!(t.poll(&mut out).unwrap(), Event::Rotated);
        assert_eq!(out, b"after\n");
        append(&log, b"more\n");
        assert_eq!(t.poll(&mut out).unwrap(), Event::Grew);
        assert_eq!(out, b"after\nmore\n");
    }

    #[test]
    fn adversarial_log_follow_survives_a_truncate_then_regrowth_past_the_old_offset() {
        // A flooding guest refilled the log beyond where the follower was before it looked:
        // only the new `<log>.1` shows the rotation; an offset alone would print mid-text.
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        append(&log, b"old text\n");
        let mut t = Tail::new(log.clone(), true);
        let mut out = Vec::new();
        t.dump(&mut out).unwrap();
        rotate(&log);
        let flood = b"new line \x1b[31m 0123456789\n".repeat(4);
        append(&log, &flood);
        out.clear();
        // The first look only sees the new `<log>.1`; the next one restarts.
        assert_eq!(t.poll(&mut out).unwrap(), Event::Grew);
        assert!(out.is_empty());
        assert_eq!(t.poll(&mut out).unwrap(), Event::Rotated);
        assert_eq!(out, escaped(&flood));
        // A second rotation is noticed again (a new `<log>.1` each time).
        rotate(&log);
        append(&log, &flood);
        out.clear();
        t.poll(&mut out).unwrap();
        assert_eq!(t.poll(&mut out).unwrap(), Event::Rotated);
        assert_eq!(out, escaped(&flood));
    }

    #[test]
    fn a_character_split_between_polls_is_escaped_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut t = Tail::new(log.clone(), true);
        let mut out = Vec::new();
        t.dump(&mut out).unwrap();
        let text = "日\x1b\n".as_bytes();
        append(&log, &text[..2]);
        t.poll(&mut out).unwrap();
        append(&log, &text[2..]);
        t.poll(&mut out).unwrap();
        t.finish(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "日\\x1b\n");
    }
}
