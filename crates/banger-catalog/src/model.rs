//! The catalog document: a `version` and the image and kernel entries it lists.
//!
//! ```json
//! {
//!   "version": 1,
//!   "images": [{"name": "debian-bookworm", "arch": "x86_64", "url": "debian-bookworm.tar.zst",
//!               "sha256": "…64 hex digits…", "size": 123456789, "description": "…",
//!               "kernel_ref": "debian-6.1"}],
//!   "kernels": [{"name": "debian-6.1", "arch": "x86_64", "url": "https://…/k.tar.zst",
//!                "sha256": "…", "size": 12345678, "description": "…"}]
//! }
//! ```
//!
//! Unknown fields are refused (a typo is an error, not a silently ignored key), and so is a
//! `version` other than [`CATALOG_VERSION`]: a newer document may mean something this
//! banger cannot read. Names follow banger's image and kernel name rules, `sha256` is 64 hex
//! digits, `size` is the exact length of the file in bytes. `url` is `http(s)://…`, or
//! relative to the document itself (see [`crate::Location::join`]).

use serde::{Deserialize, Serialize};

use crate::CatalogError;

/// The only document version this banger reads.
pub const CATALOG_VERSION: u32 = 1;

/// The largest catalog document read (bytes).
pub const MAX_DOCUMENT: u64 = 4 << 20;

/// A catalog document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// The document's format version ([`CATALOG_VERSION`]).
    pub version: u32,
    /// Image bundles (`.tar.zst`, see `banger-image`'s `bundle`).
    #[serde(default)]
    pub images: Vec<ImageEntry>,
    /// Kernel tarballs (a tree `kernel import` accepts, as a tar, gzip or zstd stream).
    #[serde(default)]
    pub kernels: Vec<KernelEntry>,
}

/// One image of a catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// The image name.
    pub name: String,
    /// Its architecture (`x86_64`).
    pub arch: String,
    /// Where its bundle is: absolute `http(s)://`, or relative to the document.
    pub url: String,
    /// The bundle's sha256, lowercase hex.
    pub sha256: String,
    /// The bundle's size in bytes.
    pub size: u64,
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// The kernel it boots with (a kernel catalog name), as its manifest says.
    pub kernel_ref: String,
}

/// One kernel of a catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelEntry {
    /// The kernel name.
    pub name: String,
    /// Its architecture (`x86_64`).
    pub arch: String,
    /// Where its tarball is: absolute `http(s)://`, or relative to the document.
    pub url: String,
    /// The tarball's sha256, lowercase hex.
    pub sha256: String,
    /// The tarball's size in bytes.
    pub size: u64,
    /// One line for humans.
    #[serde(default)]
    pub description: String,
}

/// Whether `s` is a sha256 in lowercase hex.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_common(
    kind: &'static str,
    name: &str,
    url: &str,
    sha256: &str,
    size: u64,
) -> Result<(), String> {
    if url.trim().is_empty() || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{kind} {name:?}: url {url:?} is empty or has spaces"
        ));
    }
    if !is_sha256(sha256) {
        return Err(format!(
            "{kind} {name:?}: sha256 {sha256:?} is not 64 lowercase hex digits"
        ));
    }
    if size == 0 {
        return Err(format!("{kind} {name:?}: size is 0"));
    }
    Ok(())
}

impl Catalog {
    /// An empty document of the current version.
    pub fn empty() -> Self {
        Self {
            version: CATALOG_VERSION,
            images: Vec::new(),
            kernels: Vec::new(),
        }
    }

    /// Parses and checks a document; `source` (a path or URL) names it in errors.
    pub fn parse(source: &str, bytes: &[u8]) -> Result<Self, CatalogError> {
        let bad = |reason: String| CatalogError::Document {
            source_name: source.to_string(),
            reason,
        };
        // The version first, so a newer document says so instead of failing on a new field.
        #[derive(Deserialize)]
        struct Versioned {
            version: Option<serde_json::Value>,
        }
        let v: Versioned = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        match v.version {
            None => return Err(bad("no \"version\" field".to_string())),
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(CATALOG_VERSION.into()) => {}
            Some(other) => {
                return Err(bad(format!(
                    "version {other} is not supported (this banger reads version {CATALOG_VERSION})"
                )));
            }
        }
        let doc: Catalog = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        doc.validate().map_err(bad)?;
        Ok(doc)
    }

    /// Checks every entry (names, URLs, digests, sizes, no name twice per kind).
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for e in &self.images {
            banger_core::names::validate_image_name(&e.name)
                .map_err(|err| format!("image {:?}: {err}", e.name))?;
            banger_core::names::validate_kernel_name(&e.kernel_ref)
                .map_err(|err| format!("image {:?}: kernel_ref: {err}", e.name))?;
            check_common("image", &e.name, &e.url, &e.sha256, e.size)?;
            if !seen.insert(e.name.as_str()) {
                return Err(format!("image {:?} is listed twice", e.name));
            }
        }
        seen.clear();
        for e in &self.kernels {
            banger_core::names::validate_kernel_name(&e.name)
                .map_err(|err| format!("kernel {:?}: {err}", e.name))?;
            check_common("kernel", &e.name, &e.url, &e.sha256, e.size)?;
            if !seen.insert(e.name.as_str()) {
                return Err(format!("kernel {:?} is listed twice", e.name));
            }
        }
        Ok(())
    }

    /// The document as pretty JSON, with a final newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// The catalog embedded in banger: empty, because no image or kernel is published at a
/// fixed address yet (an embedded entry must point at something that exists).
pub const EMBEDDED: &str = include_str!("embedded.json");

/// The embedded catalog, parsed.
pub fn embedded() -> Catalog {
    Catalog::parse("the embedded catalog", EMBEDDED.as_bytes()).unwrap_or_else(|_| Catalog::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn doc(images: &str) -> String {
        format!(r#"{{"version":1,"images":[{images}],"kernels":[]}}"#)
    }

    fn image(name: &str) -> String {
        format!(
            r#"{{"name":"{name}","arch":"x86_64","url":"{name}.tar.zst","sha256":"{SHA}","size":10,"description":"d","kernel_ref":"k1"}}"#
        )
    }

    #[test]
    fn the_embedded_catalog_is_a_valid_empty_document() {
        let c = Catalog::parse("embedded", EMBEDDED.as_bytes()).unwrap();
        assert_eq!(c, Catalog::empty());
    }

    #[test]
    fn a_valid_document_parses_with_its_entries() {
        let c = Catalog::parse("x", doc(&image("img-a")).as_bytes()).unwrap();
        assert_eq!(c.images.len(), 1);
        assert_eq!(c.images[0].kernel_ref, "k1");
        let again = Catalog::parse("x", c.to_json().as_bytes()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn an_unknown_version_is_refused_naming_it() {
        let e = Catalog::parse("cat.json", br#"{"version":2,"images":[],"future":1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cat.json") && e.contains("version 2"), "{e}");
        let e = Catalog::parse("cat.json", br#"{"images":[]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no \"version\""), "{e}");
    }

    #[test]
    fn malformed_documents_are_refused_with_the_reason() {
        for (bytes, want) in [
            ("not json".to_string(), "expected"),
            (r#"{"version":1,"imagez":[]}"#.to_string(), "imagez"),
            (doc(&image("../etc")), "image \"../etc\""),
            (
                doc(&image("a").replace(SHA, "abc")),
                "sha256 \"abc\" is not 64",
            ),
            (
                doc(&image("a").replace("\"size\":10", "\"size\":0")),
                "size is 0",
            ),
            (
                doc(&format!("{},{}", image("a"), image("a"))),
                "listed twice",
            ),
        ] {
            let e = Catalog::parse("c", bytes.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{bytes}: {e}");
        }
    }
}
