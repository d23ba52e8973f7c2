//! Errors of loading catalogs and fetching what they list; each names the document, URL or
//! path and what was wrong with it.

use std::path::PathBuf;

/// A catalog or fetch failure.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A document that does not parse or breaks a rule.
    #[error("catalog {source_name}: {reason}")]
    Document { source_name: String, reason: String },
    /// A catalog location or entry URL that cannot be used.
    #[error("catalog location {value:?}: {reason}")]
    Location { value: String, reason: String },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The request or the body failed.
    #[error("fetch {url}: the connection failed after {received} bytes")]
    Http {
        url: String,
        received: u64,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("fetch {url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    /// A local file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The download could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The catalog declares a file larger than the caller accepts.
    #[error("fetch {url}: the catalog declares {size} bytes, over the limit of {max}")]
    TooLarge { url: String, size: u64, max: u64 },
    /// The server's `Content-Length` is not the declared size.
    #[error("fetch {url}: the server announces {announced} bytes; the catalog declares {declared}")]
    LengthMismatch {
        url: String,
        declared: u64,
        announced: u64,
    },
    /// The server sent more than declared (cut off at once).
    #[error("fetch {url}: the server sent more than the declared {declared} bytes")]
    Longer { url: String, declared: u64 },
    /// The body ended early.
    #[error("fetch {url}: the body ended after {received} of the declared {declared} bytes")]
    Shorter {
        url: String,
        declared: u64,
        received: u64,
    },
    /// The content is not what the catalog says.
    #[error(
        "fetch {url}: sha256 mismatch: the catalog declares {expected}, the download is {actual}"
    )]
    Sha256Mismatch {
        url: String,
        expected: String,
        actual: String,
    },
}
