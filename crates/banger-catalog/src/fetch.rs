//! Where catalogs and their files are ([`Location`]), and reading them with a bound:
//! [`read_document`] for catalog documents, [`fetch_verified`] for bundles and tarballs.
//!
//! [`fetch_verified`] streams into a temporary file in the directory it is given, hashing
//! every byte as it arrives, and checks, in this order: the declared size against the
//! caller's cap (before anything is requested), the HTTP status, a `Content-Length` against
//! the declared size, every chunk against the declared size (a server sending more is cut
//! off at once), a body that ends early or breaks, and the sha256. Any failure removes the
//! temporary file, so nothing is left behind; the caller gets a [`tempfile::TempPath`] that
//! deletes the file when dropped.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Catalog, CatalogError, MAX_DOCUMENT};

/// A catalog's or a file's place: a local path or an `http(s)://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An absolute path on the host.
    File(PathBuf),
    /// An `http://` or `https://` URL.
    Http(reqwest::Url),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Http(u) => write!(f, "{u}"),
        }
    }
}

fn bad_location(value: &str, reason: &str) -> CatalogError {
    CatalogError::Location {
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn http_url(value: &str) -> Result<reqwest::Url, CatalogError> {
    let url = reqwest::Url::parse(value).map_err(|e| bad_location(value, &e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad_location(
            value,
            "only http:// and https:// URLs are fetched",
        ));
    }
    Ok(url)
}

fn has_scheme(value: &str) -> bool {
    value.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    }) && value.contains("://")
}

impl Location {
    /// A configured catalog: an `http(s)://` URL or an absolute path.
    pub fn parse(value: &str) -> Result<Self, CatalogError> {
        if has_scheme(value) {
            return Ok(Self::Http(http_url(value)?));
        }
        let path = PathBuf::from(value);
        if !path.is_absolute() {
            return Err(bad_location(
                value,
                "a catalog is an http:// or https:// URL or an absolute path",
            ));
        }
        Ok(Self::File(path))
    }

    /// An entry's `url`, resolved against this document's location: absolute
    /// `http(s)://` URLs stand alone; anything else is relative to the document (a
    /// document on the web cannot name a host file).
    pub fn join(&self, url: &str) -> Result<Self, CatalogError> {
        if has_scheme(url) {
            return Ok(Self::Http(http_url(url)?));
        }
        match self {
            Self::Http(base) => {
                let joined = base
                    .join(url)
                    .map_err(|e| bad_location(url, &e.to_string()))?;
                Ok(Self::Http(http_url(joined.as_str())?))
            }
            Self::File(doc) => {
                let rel = Path::new(url);
                if rel.is_absolute() {
                    return Ok(Self::File(rel.to_path_buf()));
                }
                let dir = doc.parent().unwrap_or(Path::new("/"));
                Ok(Self::File(dir.join(rel)))
            }
        }
    }
}

/// What a fetched file must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// Its sha256, lowercase hex.
    pub sha256: String,
    /// Its exact size in bytes.
    pub size: u64,
}

/// An HTTP client for catalogs: rustls, with connect and read timeouts, so a stalled
/// server fails a pull instead of hanging it.
pub fn http_client(user_agent: &str) -> Result<reqwest::Client, CatalogError> {
    reqwest::Client::builder()
        .user_agent(user_agent)
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(CatalogError::Client)
}

/// A body being read: an HTTP response or a local file.
enum Body {
    Http(reqwest::Response),
    File(tokio::fs::File, Vec<u8>),
}

impl Body {
    async fn open(client: &reqwest::Client, from: &Location) -> Result<Self, CatalogError> {
        match from {
            Location::File(path) => {
                let file =
                    tokio::fs::File::open(path)
                        .await
                        .map_err(|source| CatalogError::Read {
                            path: path.clone(),
                            source,
                        })?;
                Ok(Self::File(file, vec![0; 1 << 20]))
            }
            Location::Http(url) => {
                let resp =
                    client
                        .get(url.clone())
                        .send()
                        .await
                        .map_err(|source| CatalogError::Http {
                            url: url.to_string(),
                            received: 0,
                            source: source.without_url(),
                        })?;
                if !resp.status().is_success() {
                    return Err(CatalogError::Status {
                        url: url.to_string(),
                        status: resp.status().as_u16(),
                    });
                }
                Ok(Self::Http(resp))
            }
        }
    }

    /// The length the server announced, if any.
    fn announced(&self) -> Option<u64> {
        match self {
            Self::Http(r) => r.content_length(),
            Self::File(..) => None,
        }
    }

    async fn chunk(
        &mut self,
        from: &Location,
        received: u64,
    ) -> Result<Option<Vec<u8>>, CatalogError> {
        match self {
            Self::Http(r) => r
                .chunk()
                .await
                .map(|c| c.map(|b| b.to_vec()))
                .map_err(|source| CatalogError::Http {
                    url: from.to_string(),
                    received,
                    source: source.without_url(),
                }),
            Self::File(f, buf) => {
                let n = f.read(buf).await.map_err(|source| CatalogError::Read {
                    path: PathBuf::from(from.to_string()),
                    source,
                })?;
                Ok((n > 0).then(|| buf[..n].to_vec()))
            }
        }
    }
}

/// Reads a catalog document (at most [`MAX_DOCUMENT`] bytes) and parses it.
pub async fn read_document(
    client: &reqwest::Client,
    from: &Location,
) -> Result<Catalog, CatalogError> {
    let mut body = Body::open(client, from).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = body.chunk(from, bytes.len() as u64).await? {
        if (bytes.len() + chunk.len()) as u64 > MAX_DOCUMENT {
            return Err(CatalogError::Document {
                source_name: from.to_string(),
                reason: format!("larger than {MAX_DOCUMENT} bytes"),
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Catalog::parse(&from.to_string(), &bytes)
}

/// Fetches `from` into a new temporary file in `dir`, verified against `expect` (see the
/// module docs); refused before any request when `expect.size` exceeds `max`.
/// `progress` gets (bytes so far, total) after each chunk.
pub async fn fetch_verified(
    client: &reqwest::Client,
    from: &Location,
    dir: &Path,
    expect: &Expect,
    max: u64,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<tempfile::TempPath, CatalogError> {
    let url = from.to_string();
    if expect.size > max {
        return Err(CatalogError::TooLarge {
            url,
            size: expect.size,
            max,
        });
    }
    let mut body = Body::open(client, from).await?;
    if let Some(announced) = body.announced()
        && announced != expect.size
    {
        return Err(CatalogError::LengthMismatch {
            url,
            declared: expect.size,
            announced,
        });
    }
    let tmp = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempfile_in(dir)
        .map_err(|source| CatalogError::Write {
            path: dir.to_path_buf(),
            source,
        })?
        .into_temp_path();
    let write_err = |source| CatalogError::Write {
        path: tmp.to_path_buf(),
        source,
    };
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&tmp)
        .await
        .map_err(write_err)?;
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut reported = 0u64;
    while let Some(chunk) = body.chunk(from, received).await? {
        received += chunk.len() as u64;
        if received > expect.size {
            return Err(CatalogError::Longer {
                url,
                declared: expect.size,
            });
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(write_err)?;
        if received - reported >= 8 << 20 || received == expect.size {
            reported = received;
            progress(received, expect.size);
        }
    }
    if received < expect.size {
        return Err(CatalogError::Shorter {
            url,
            declared: expect.size,
            received,
        });
    }
    out.sync_all().await.map_err(write_err)?;
    drop(out);
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if actual != expect.sha256 {
        return Err(CatalogError::Sha256Mismatch {
            url,
            expected: expect.sha256.clone(),
            actual,
        });
    }
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves one canned answer per connection, then closes it (`head` then `body`).
    async fn serve(answer: Vec<u8>) -> reqwest::Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let _ = sock.write_all(&answer).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        reqwest::Url::parse(&format!("http://{addr}/file")).unwrap()
    }

    fn ok_answer(content_length: Option<usize>, body: &[u8]) -> Vec<u8> {
        let mut a = b"HTTP/1.1 200 OK\r\nconnection: close\r\n".to_vec();
        if let Some(n) = content_length {
            a.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
        }
        a.extend_from_slice(b"\r\n");
        a.extend_from_slice(body);
        a
    }

    fn sha(b: &[u8]) -> String {
        Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    }

    async fn fetch(
        url: reqwest::Url,
        expect: Expect,
        dir: &Path,
    ) -> Result<tempfile::TempPath, CatalogError> {
        let client = http_client("test").unwrap();
        fetch_verified(
            &client,
            &Location::Http(url),
            dir,
            &expect,
            1 << 30,
            &mut |_, _| {},
        )
        .await
    }

    fn leftovers(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    const BODY: &[u8] = b"the bundle's bytes, all of them";

    #[tokio::test]
    async fn a_matching_download_is_kept_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let url = serve(ok_answer(Some(BODY.len()), BODY)).await;
        let got = fetch(
            url,
            Expect {
                sha256: sha(BODY),
                size: BODY.len() as u64,
            },
            dir.path(),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&got).unwrap(), BODY);
        drop(got);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn each_broken_download_is_refused_naming_why_and_leaves_nothing() {
        let good = Expect {
            sha256: sha(BODY),
            size: BODY.len() as u64,
        };
        let mut tampered = BODY.to_vec();
        tampered[0] ^= 1;
        let cases: Vec<(&str, Vec<u8>, Expect, &str)> = vec![
            ("sha256 mismatch", ok_answer(Some(BODY.len()), &tampered), good.clone(), "sha256 mismatch"),
            (
                "declared size lies (bigger body)",
                ok_answer(None, BODY),
                Expect { sha256: sha(BODY), size: 5 },
                "more than the declared 5 bytes",
            ),
            (
                "declared size lies (shorter body)",
                ok_answer(None, BODY),
                Expect { sha256: sha(BODY), size: 1000 },
                "ended after 31 of the declared 1000 bytes",
            ),
            (
                "content-length disagrees",
                ok_answer(Some(BODY.len()), BODY),
                Expect { sha256: sha(BODY), size: 99 },
                "announces 31 bytes; the catalog declares 99",
            ),
            (
                "server error",
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(),
                good.clone(),
                "HTTP status 500",
            ),
            (
                "closed mid-body",
                ok_answer(Some(BODY.len()), &BODY[..10]),
                good.clone(),
                "after 10 bytes",
            ),
        ];
        for (case, answer, expect, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let url = serve(answer).await;
            let e = fetch(url.clone(), expect, dir.path()).await.unwrap_err();
            let msg = banger_core::error::chain(&e);
            assert!(
                msg.contains(want) && msg.contains(url.as_str()),
                "{case}: {msg}"
            );
            assert!(
                leftovers(dir.path()).is_empty(),
                "{case}: {:?}",
                leftovers(dir.path())
            );
        }
    }

    #[tokio::test]
    async fn a_declared_size_over_the_cap_is_refused_before_any_request() {
        let dir = tempfile::tempdir().unwrap();
        let client = http_client("test").unwrap();
        // Nothing listens there: the cap is checked first.
        let from = Location::parse("http://127.0.0.1:9/big").unwrap();
        let e = fetch_verified(
            &client,
            &from,
            dir.path(),
            &Expect {
                sha256: sha(b""),
                size: 10 << 30,
            },
            1 << 30,
            &mut |_, _| {},
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("over the limit of 1073741824"),
            "{e}"
        );
    }

    #[test]
    fn locations_resolve_entries_relative_to_their_document() {
        let web = Location::parse("https://example.test/team/catalog.json").unwrap();
        assert_eq!(
            web.join("img.tar.zst").unwrap().to_string(),
            "https://example.test/team/img.tar.zst"
        );
        assert_eq!(
            web.join("/etc/passwd").unwrap().to_string(),
            "https://example.test/etc/passwd",
            "a web document never names a host file"
        );
        let file = Location::parse("/srv/cat/catalog.json").unwrap();
        assert_eq!(
            file.join("a.tar.zst").unwrap(),
            Location::File("/srv/cat/a.tar.zst".into())
        );
        assert_eq!(file.join("http://h/x").unwrap().to_string(), "http://h/x");
        assert!(Location::parse("relative/catalog.json").is_err());
        assert!(Location::parse("ftp://h/c.json").is_err());
        assert!(web.join("file:///etc/passwd").is_err());
    }

    #[tokio::test]
    async fn a_local_document_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, br#"{"version":3}"#).unwrap();
        let client = http_client("test").unwrap();
        let e = read_document(&client, &Location::File(path.clone()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("version 3"), "{e}");
        std::fs::write(&path, Catalog::empty().to_json()).unwrap();
        let c = read_document(&client, &Location::File(path)).await.unwrap();
        assert_eq!(c, Catalog::empty());
    }
}
