//! The parts of the API's OpenAPI 3.1 document that no handler says: its root ([`ApiDoc`]),
//! the error responses ([`Errors`]) and the reference parameters. The document itself is
//! generated from what the server runs: each handler's `#[utoipa::path]` annotation (method,
//! path template, parameters, bodies) and the API types' `ToSchema` derives, collected by the
//! router builder (`server::api`) as it mounts the routes. Served at `GET /v1/openapi.json`
//! and checked in at `docs/api/openapi.json` (tests keep the two equal, and the document's
//! routes equal to the router's).
//!
//! Annotating a handler takes three things from this module: a reference parameter
//! ([`VmRef`], [`ImageRef`], [`KernelName`]) in `params(...)`, [`Errors`] in
//! `responses(...)` (every route can fail with the typed error body), and for a streamed
//! route [`NDJSON`] as the success content type.

use std::collections::BTreeMap;

use banger_api::error::{ApiError, ErrorBody, ErrorKind};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::{Content, Ref, RefOr};
use utoipa::{IntoParams, Modify, OpenApi};

/// The content type of a streamed long operation's answer: one JSON [`banger_api::types::Event`]
/// per line.
pub const NDJSON: &str = "application/x-ndjson";

/// What a streamed route's `200` says about its lines.
pub const STREAM_DESCRIPTION: &str = "Streamed: `application/x-ndjson`, one JSON event per line \
    (the schema is one line's): `stage` events as the operation proceeds, then exactly one \
    `result` or `error` event, and the stream ends. A blank line is a heartbeat. The status is \
    200 once streaming started, so a failure of the operation itself is the `error` event \
    (the typed error, op id included); closing the connection cancels the operation, which \
    rolls back.";

/// The document's root: what no handler says.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "bangerd",
        description = "The API of banger's per-user daemon: HTTP/1.1 and JSON on the Unix \
            socket `$BANGER_HOME/run/bangerd.sock` (no TCP listener, no authentication: the \
            socket's file mode is the access control). Every response carries the request's \
            operation id in the `x-banger-op` header; every failed request answers the typed \
            error body (`ErrorBody`) with an HTTP status from its kind. Request bodies refuse \
            unknown fields; responses may gain fields.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody, ApiError, ErrorKind)),
    modifiers(&ErrorResponses),
    tags(
        (name = "daemon", description = "The daemon itself."),
        (name = "vms", description = "MicroVMs: create, list, act on, exec in, inspect."),
        (name = "workspaces", description = "A host repository inside a VM, and the work \
            done there as a patch."),
        (name = "images", description = "Root filesystems VMs boot."),
        (name = "kernels", description = "Kernels images boot."),
        (name = "files", description = "Files inside a running guest, read, written and \
            listed by absolute path through its agent."),
        (name = "ssh", description = "How to reach guests with ssh."),
    )
)]
pub struct ApiDoc;

/// `{reference}`: a VM.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct VmRef {
    /// The VM's name, its id, or a prefix of its id that only it has.
    pub reference: String,
}

/// `{reference}`: an image.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ImageRef {
    /// The image's name, its id, or a prefix of its id that only it has.
    pub reference: String,
}

/// `{name}`: a kernel.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct KernelName {
    /// The kernel's name.
    pub name: String,
}

/// Every error status the API answers, each the typed error body: put `Errors` in a route's
/// `responses(...)`. Any route can get any of them: the body limits (`408`, `413`) and the
/// request checks run before every handler, and a handler's failure kinds depend on the
/// services it calls.
#[derive(Debug)]
pub struct Errors;

/// The statuses of [`Errors`]: `(status, component name, description)`.
const ERROR_STATUSES: [(u16, &str, &str); 9] = [
    (
        400,
        "BadRequest",
        "`bad_request`: the request is wrong (a body that is not JSON or not the request's \
         shape, an unknown or missing field, a value out of range); nothing was changed.",
    ),
    (
        404,
        "NotFound",
        "`not_found`: no such VM, image or kernel, or no such route.",
    ),
    (
        408,
        "RequestTimeout",
        "`bad_request`: the request body did not arrive within the body read timeout (10 s).",
    ),
    (
        409,
        "Conflict",
        "`already_exists` (the name is taken) or `conflict` (the object's state forbids it, \
         e.g. a running VM).",
    ),
    (
        413,
        "PayloadTooLarge",
        "`bad_request`: the request body is over the 1 MiB limit.",
    ),
    (
        499,
        "Cancelled",
        "`cancelled`: the operation was cancelled before it finished.",
    ),
    (
        500,
        "Internal",
        "`internal`: an unexpected failure (a bug, or the host failing in a way banger does \
         not classify).",
    ),
    (
        503,
        "Unavailable",
        "`unavailable`: something the operation needs is not there or not answering (a VMM \
         backend, the guest agent, a host tool).",
    ),
    (
        507,
        "InsufficientStorage",
        "`insufficient_storage`: the host's disk or quota is full.",
    ),
];

impl utoipa::IntoResponses for Errors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        ERROR_STATUSES
            .iter()
            .map(|(status, name, _)| {
                (
                    status.to_string(),
                    RefOr::Ref(Ref::from_response_name(*name)),
                )
            })
            .collect()
    }
}

/// Puts the responses [`Errors`] refers to into the document's components.
#[derive(Debug)]
struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        for (_, name, description) in ERROR_STATUSES {
            let body = Content::new(Some(Ref::from_schema_name("ErrorBody")));
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", body)
                .build();
            components
                .responses
                .insert(name.to_string(), RefOr::T(response));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error kind has its status among the documented ones, with the kind named in
    /// its description.
    #[test]
    fn every_error_kind_is_documented_at_its_status() {
        for kind in [
            ErrorKind::BadRequest,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::Conflict,
            ErrorKind::InsufficientStorage,
            ErrorKind::Unavailable,
            ErrorKind::Cancelled,
            ErrorKind::Internal,
        ] {
            let word = serde_json::to_value(kind).unwrap();
            let word = word.as_str().unwrap();
            let documented = ERROR_STATUSES
                .iter()
                .any(|(s, _, d)| *s == kind.http_status() && d.contains(&format!("`{word}`")));
            assert!(
                documented,
                "{kind:?} ({}) is not documented",
                kind.http_status()
            );
        }
    }
}
