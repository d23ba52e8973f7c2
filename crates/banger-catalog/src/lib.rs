//! Image and kernel catalogs: the JSON document ([`model`]), where documents and the files
//! they list are ([`Location`]), and reading them with bounds and verification
//! ([`fetch`]). The daemon loads the embedded document plus config `catalogs` and pulls
//! from them; this crate does no registration, prints nothing and reads no environment.

mod error;
pub mod fetch;
pub mod model;

pub use error::CatalogError;
pub use fetch::{Expect, Location, fetch_verified, http_client, read_document};
pub use model::{
    CATALOG_VERSION, Catalog, EMBEDDED, ImageEntry, KernelEntry, MAX_DOCUMENT, embedded,
};
