//! Reading what the guest's export script ([`crate::script::export_script`]) writes: the
//! base used, the changed files and a binary patch `git apply` takes.
//!
//! # Framing
//!
//! ```text
//! banger-export 1\n
//! base <commit id>\n
//! files <N>\n  then N bytes: `git diff --name-status -z --find-renames` against the base
//! patch <M>\n  then M bytes: `git diff --binary --find-renames` against the base
//! end\n
//! ```
//!
//! Lengths are decimal byte counts. Header lines are at most 128 bytes and the file list at
//! most [`MAX_FILE_LIST`]; the patch is copied to the caller's writer as it arrives, so it
//! can be any size without being held in memory.

use std::io::{self, BufRead, BufReader, Read, Write};

use banger_core::quote::quote_prefix;
use serde::Serialize;

/// The largest file list read.
pub const MAX_FILE_LIST: u64 = 64 << 20;
const MAX_LINE: u64 = 128;
const MAGIC: &str = "banger-export 1";

/// How a file changed since the base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Change {
    /// New since the base.
    Added,
    /// Content or mode changed.
    Modified,
    /// Gone since the base.
    Deleted,
    /// Moved from `from` (`similarity` percent alike).
    Renamed {
        /// The old path.
        from: String,
        /// How alike the two are, in percent.
        similarity: u8,
    },
    /// Copied from `from`.
    Copied {
        /// The source path.
        from: String,
        /// How alike the two are, in percent.
        similarity: u8,
    },
    /// Changed kind (file, symlink, submodule).
    TypeChanged,
    /// Unmerged in the guest.
    Unmerged,
}

/// One changed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangedFile {
    /// Its path now (the new one for a rename), relative to the repository root.
    pub path: String,
    /// How it changed.
    #[serde(flatten)]
    pub change: Change,
}

/// An export whose patch went to a writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    /// The commit the patch is against.
    pub base: String,
    /// What changed.
    pub files: Vec<ChangedFile>,
    /// The patch's length in bytes.
    pub patch_bytes: u64,
}

/// An export held in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The commit the patch is against.
    pub base: String,
    /// What changed.
    pub files: Vec<ChangedFile>,
    /// The binary patch (`git apply` takes it; empty when nothing changed).
    pub patch: Vec<u8>,
}

/// The export's bytes do not follow the framing.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the export failed.
    #[error("cannot read the export")]
    Read(#[source] io::Error),
    /// Writing the patch failed.
    #[error("cannot write the patch")]
    Write(#[source] io::Error),
    /// A line is not what the framing says comes there.
    #[error("malformed export: expected {expected}, got {got:?}")]
    Framing {
        /// What was expected.
        expected: &'static str,
        /// The start of what came.
        got: String,
    },
    /// The export ended early.
    #[error("the export ended inside its {0}")]
    Truncated(&'static str),
    /// The file list is over [`MAX_FILE_LIST`].
    #[error("the export's file list is {0} bytes, over the {MAX_FILE_LIST} allowed")]
    FileListTooLarge(u64),
    /// An entry of the file list is not `git diff --name-status -z`.
    #[error("malformed file list entry {0:?}")]
    FileList(String),
}

/// Reads an export from `reader`, copying its patch to `patch`.
pub fn read_export<R: Read, W: Write>(
    reader: R,
    patch: &mut W,
) -> Result<ExportSummary, ExportError> {
    let mut reader = BufReader::new(reader);
    expect_line(&mut reader, "the banger-export header", |l| {
        (l == MAGIC).then_some(())
    })?;
    let base = expect_line(&mut reader, "a base line", |l| {
        let id = l.strip_prefix("base ")?;
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })?;
    let files_len = length(&mut reader, "files")?;
    if files_len > MAX_FILE_LIST {
        return Err(ExportError::FileListTooLarge(files_len));
    }
    let mut list = Vec::new();
    copy_exact(&mut reader, &mut list, files_len, "file list").map_err(|e| match e {
        Copy::Read(e) => e,
        Copy::Write(e) => ExportError::Write(e),
    })?;
    let files = parse_file_list(&list)?;
    let patch_bytes = length(&mut reader, "patch")?;
    copy_exact(&mut reader, patch, patch_bytes, "patch").map_err(|e| match e {
        Copy::Read(e) => e,
        Copy::Write(e) => ExportError::Write(e),
    })?;
    expect_line(&mut reader, "the end line", |l| (l == "end").then_some(()))?;
    Ok(ExportSummary {
        base,
        files,
        patch_bytes,
    })
}

/// Parses an export held in memory.
pub fn parse_export(bytes: &[u8]) -> Result<Export, ExportError> {
    let mut patch = Vec::new();
    let summary = read_export(bytes, &mut patch)?;
    Ok(Export {
        base: summary.base,
        files: summary.files,
        patch,
    })
}

fn expect_line<R: BufRead, T>(
    reader: &mut R,
    expected: &'static str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, ExportError> {
    let mut line = Vec::new();
    reader
        .by_ref()
        .take(MAX_LINE)
        .read_until(b'\n', &mut line)
        .map_err(ExportError::Read)?;
    let framing = |line: &[u8]| ExportError::Framing {
        expected,
        got: quote_prefix(line, 64),
    };
    let Some(text) = line.strip_suffix(b"\n") else {
        return Err(framing(&line));
    };
    std::str::from_utf8(text)
        .ok()
        .and_then(parse)
        .ok_or_else(|| framing(text))
}

fn length<R: BufRead>(reader: &mut R, word: &'static str) -> Result<u64, ExportError> {
    let expected = match word {
        "files" => "a files line",
        _ => "a patch line",
    };
    expect_line(reader, expected, |l| {
        let n = l.strip_prefix(word)?.strip_prefix(' ')?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse().ok()
    })
}

enum Copy {
    Read(ExportError),
    Write(io::Error),
}

fn copy_exact<R: Read, W: Write>(
    reader: &mut R,
    out: &mut W,
    len: u64,
    what: &'static str,
) -> Result<(), Copy> {
    let mut left = len;
    let mut buf = [0u8; 64 * 1024];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match reader.read(&mut buf[..want]) {
            Ok(0) => return Err(Copy::Read(ExportError::Truncated(what))),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Copy::Read(ExportError::Read(e))),
        };
        out.write_all(&buf[..n]).map_err(Copy::Write)?;
        left -= n as u64;
    }
    Ok(())
}

/// Parses `git diff --name-status -z` output: `X\0path\0`, or `R<score>\0old\0new\0` for
/// renames and copies.
pub fn parse_file_list(list: &[u8]) -> Result<Vec<ChangedFile>, ExportError> {
    let text =
        std::str::from_utf8(list).map_err(|_| ExportError::FileList(quote_prefix(list, 64)))?;
    let mut fields = text.split('\0');
    let mut files = Vec::new();
    while let Some(status) = fields.next() {
        if status.is_empty() {
            continue;
        }
        let bad = || ExportError::FileList(status.to_string());
        let mut next = || fields.next().filter(|f| !f.is_empty()).ok_or_else(bad);
        let (letter, score) = status.split_at(1);
        let similarity = || -> Result<u8, ExportError> {
            score.parse().ok().filter(|s| *s <= 100).ok_or_else(bad)
        };
        let (path, change) = match letter {
            "A" => (next()?, Change::Added),
            "M" => (next()?, Change::Modified),
            "D" => (next()?, Change::Deleted),
            "T" => (next()?, Change::TypeChanged),
            "U" => (next()?, Change::Unmerged),
            "R" | "C" => {
                let similarity = similarity()?;
                let from = next()?.to_string();
                let to = next()?;
                let change = if letter == "R" {
                    Change::Renamed { from, similarity }
                } else {
                    Change::Copied { from, similarity }
                };
                (to, change)
            }
            _ => return Err(bad()),
        };
        files.push(ChangedFile {
            path: path.to_string(),
            change,
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(files: &[u8], patch: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "banger-export 1\nbase {}\nfiles {}\n",
            "ab".repeat(20),
            files.len()
        )
        .into_bytes();
        out.extend_from_slice(files);
        out.extend_from_slice(format!("patch {}\n", patch.len()).as_bytes());
        out.extend_from_slice(patch);
        out.extend_from_slice(b"end\n");
        out
    }

    #[test]
    fn reads_base_files_and_a_binary_patch() {
        let list = b"M\0a.txt\0R093\0old name\0new name\0D\0gone\0A\0bin\0";
        let patch = b"diff --git a/bin b/bin\n\0\xff\n";
        let export = parse_export(&framed(list, patch)).unwrap();
        assert_eq!(export.base, "ab".repeat(20));
        assert_eq!(export.patch, patch);
        assert_eq!(
            export.files,
            vec![
                ChangedFile {
                    path: "a.txt".into(),
                    change: Change::Modified
                },
                ChangedFile {
                    path: "new name".into(),
                    change: Change::Renamed {
                        from: "old name".into(),
                        similarity: 93
                    }
                },
                ChangedFile {
                    path: "gone".into(),
                    change: Change::Deleted
                },
                ChangedFile {
                    path: "bin".into(),
                    change: Change::Added
                },
            ]
        );
        let json = serde_json::to_value(&export.files[1]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"path": "new name", "kind": "renamed", "from": "old name", "similarity": 93})
        );
    }

    #[test]
    fn an_empty_export_is_an_empty_patch() {
        let export = parse_export(&framed(b"", b"")).unwrap();
        assert!(export.files.is_empty() && export.patch.is_empty());
    }

    #[test]
    fn malformed_exports_say_what_was_expected() {
        let err = parse_export(b"hello\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed export: expected the banger-export header, got \"hello\""
        );
        let mut cut = framed(b"M\0a\0", b"0123456789");
        cut.truncate(cut.len() - 8);
        assert!(matches!(
            parse_export(&cut),
            Err(ExportError::Truncated("patch"))
        ));
        let huge = format!("banger-export 1\nbase ab\nfiles {}\n", MAX_FILE_LIST + 1);
        assert!(matches!(
            parse_export(huge.as_bytes()),
            Err(ExportError::FileListTooLarge(_))
        ));
        let no_end = {
            let mut f = framed(b"", b"");
            f.truncate(f.len() - 4);
            f
        };
        assert!(matches!(
            parse_export(&no_end),
            Err(ExportError::Framing {
                expected: "the end line",
                ..
            })
        ));
        assert!(matches!(
            parse_export(&framed(b"Q\0x\0", b"")),
            Err(ExportError::FileList(_))
        ));
        assert!(matches!(
            parse_export(b"banger-export 1\nbase xyz\n"),
            Err(ExportError::Framing {
                expected: "a base line",
                ..
            })
        ));
    }
}
