//! Errors as they cross the API: a kind (which maps to an HTTP status and to the short word
//! the CLI prints), a message with the context, and the operation id.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The class of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    AlreadyExists,
    Conflict,
    /// The host has no room: a full disk or quota (`ENOSPC`, `EDQUOT`).
    InsufficientStorage,
    Unavailable,
    Cancelled,
    Internal,
}

impl ErrorKind {
    /// The short word the CLI prints before the message.
    pub fn word(self) -> &'static str {
        match self {
            Self::BadRequest => "bad request",
            Self::NotFound => "not found",
            Self::AlreadyExists => "already exists",
            Self::Conflict => "conflict",
            Self::InsufficientStorage => "insufficient storage",
            Self::Unavailable => "unavailable",
            Self::Cancelled => "cancelled",
            Self::Internal => "internal error",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::NotFound => 404,
            Self::AlreadyExists | Self::Conflict => 409,
            Self::InsufficientStorage => 507,
            Self::Unavailable => 503,
            Self::Cancelled => 499,
            Self::Internal => 500,
        }
    }
}

/// The body of every failed response: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ApiError,
}

/// One failure as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, thiserror::Error)]
#[error("{}: {message}", kind.word())]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// The operation id of the failed request (empty when unknown).
    #[serde(default)]
    pub op_id: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            op_id: String::new(),
        }
    }
}
