//! The agent's file endpoints: reading a file (size-capped), writing one (atomically, with a
//! mode, parents made on request) and listing a directory, all by absolute guest path.
//!
//! Each is a `POST` with a JSON body ([`ReadFile`], [`WriteFile`], [`ListDir`]) answered with
//! JSON ([`FileContent`], [`Written`], [`DirListing`]) or an [`ErrorBody`](crate::wire::ErrorBody)
//! whose status says what went wrong: `400` a bad request (a relative path, a directory read
//! as a file, a body too large), `404` a path that does not exist, `409` a path of the wrong
//! kind for a write (a directory, a missing parent without `create_parents`), `500` anything
//! else. File contents travel as standard base64.

use serde::{Deserialize, Serialize};

/// `POST`: read a file.
pub const FILE_READ_PATH: &str = "/files/read";
/// `POST`: write a file.
pub const FILE_WRITE_PATH: &str = "/files/write";
/// `POST`: list a directory.
pub const FILE_LIST_PATH: &str = "/files/list";

/// Most bytes of a file one read returns (a larger file is returned cut, `truncated`).
pub const MAX_READ_BYTES: u64 = 1 << 20;

/// Most bytes one write carries: the daemon reads request bodies of at most 1 MiB, and the
/// base64 of this fits with room to spare.
pub const MAX_WRITE_BYTES: usize = 512 << 10;

/// Most entries one listing returns (the rest are counted, `truncated`).
pub const MAX_LIST_ENTRIES: usize = 10_000;

/// Largest request body the agent reads for a file endpoint: a write's base64 and its fields.
pub const MAX_FILE_REQUEST: usize = MAX_WRITE_BYTES * 4 / 3 + (64 << 10);

/// The mode a new file gets when the write names none.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// A guest path the file endpoints refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestPathError {
    #[error(
        "guest path {0:?} is relative: give an absolute path inside the guest (e.g. /root/...)"
    )]
    Relative(String),
    #[error("the guest path is empty: give an absolute path inside the guest (e.g. /root/...)")]
    Empty,
    #[error("guest path {0:?} contains a NUL byte")]
    Nul(String),
}

/// Checks that `path` is an absolute guest path: both the daemon (before calling the agent)
/// and the agent (before touching the disk) refuse anything else.
pub fn check_guest_path(path: &str) -> Result<(), GuestPathError> {
    if path.is_empty() {
        return Err(GuestPathError::Empty);
    }
    if path.contains('\0') {
        return Err(GuestPathError::Nul(path.to_string()));
    }
    if !path.starts_with('/') {
        return Err(GuestPathError::Relative(path.to_string()));
    }
    Ok(())
}

/// `POST /files/read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadFile {
    pub path: String,
    /// Most bytes to return, at most (and by default) [`MAX_READ_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// The answer to `POST /files/read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileContent {
    pub path: String,
    /// The file's whole size.
    pub size: u64,
    /// The file's permission bits.
    pub mode: u32,
    /// The bytes read: the whole file, or its first `max_bytes` when `truncated`.
    #[serde(with = "base64_bytes")]
    pub content: Vec<u8>,
    pub truncated: bool,
}

/// `POST /files/write`: the file is replaced whole (a temporary file in the same directory,
/// synced, renamed over it), so a reader never sees half of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteFile {
    pub path: String,
    #[serde(with = "base64_bytes")]
    pub content: Vec<u8>,
    /// Permission bits (`0o644`); by default the replaced file's, or [`DEFAULT_FILE_MODE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Make missing parent directories (mode 0755).
    #[serde(default)]
    pub create_parents: bool,
}

/// The answer to `POST /files/write`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    pub path: String,
    pub bytes: u64,
    pub mode: u32,
}

/// `POST /files/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListDir {
    pub path: String,
}

/// What a directory entry is (a symlink is not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub kind: EntryKind,
    /// Bytes (of the link itself for a symlink).
    pub size: u64,
    pub mode: u32,
}

/// The answer to `POST /files/list`: entries sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirListing {
    pub path: String,
    pub entries: Vec<DirEntry>,
    /// More than [`MAX_LIST_ENTRIES`] entries: the first ones by name are listed.
    pub truncated: bool,
}

/// Bytes as one standard base64 string.
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_paths_pass() {
        assert_eq!(check_guest_path("/root/a"), Ok(()));
        assert_eq!(
            check_guest_path("root/a"),
            Err(GuestPathError::Relative("root/a".into()))
        );
        assert!(
            check_guest_path("./a")
                .unwrap_err()
                .to_string()
                .contains("absolute path inside the guest")
        );
        assert_eq!(check_guest_path(""), Err(GuestPathError::Empty));
        assert!(matches!(
            check_guest_path("/a\0b"),
            Err(GuestPathError::Nul(_))
        ));
    }

    #[test]
    fn a_write_carries_its_content_as_base64_and_refuses_unknown_fields() {
        let w = WriteFile {
            path: "/root/x".into(),
            content: b"\x00\xffhi".to_vec(),
            mode: Some(0o600),
            create_parents: true,
        };
        let v = serde_json::to_value(&w).unwrap();
        assert_eq!(v["content"], "AP9oaQ==");
        assert_eq!(serde_json::from_value::<WriteFile>(v).unwrap(), w);
        let err = serde_json::from_str::<WriteFile>(r#"{"path":"/a","content":"","owner":0}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `owner`"), "{err}");
    }

    #[test]
    fn the_largest_write_fits_the_request_cap_and_the_daemon_body_limit() {
        let w = WriteFile {
            path: "/".to_string() + &"p".repeat(4000),
            content: vec![0xAB; MAX_WRITE_BYTES],
            mode: Some(0o777),
            create_parents: true,
        };
        let len = serde_json::to_vec(&w).unwrap().len();
        assert!(len <= MAX_FILE_REQUEST, "{len}");
        assert!(len < 1 << 20, "{len}");
    }
}
