//! Connect-style errors: a non-2xx status and `{"code": "<connect code>", "message": "..."}`.
//! Each code has exactly one HTTP status (the contract's table, plus Connect's own statuses for
//! the codes the contract does not list).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::{error, warn};

use crate::auth::AuthError;
use crate::crypto::CryptoError;
use crate::store::StoreError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    ResourceExhausted,
    DeadlineExceeded,
    Unavailable,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::Unauthenticated => "unauthenticated",
            Code::PermissionDenied => "permission_denied",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::ResourceExhausted => "resource_exhausted",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiError {
    #[serde(serialize_with = "code_str")]
    pub code: Code,
    pub message: String,
}

fn code_str<S: serde::Serializer>(code: &Code, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(code.as_str())
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub fn not_a_member() -> Self {
        Self::new(Code::PermissionDenied, "you are not a member of this room")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code;
        let mut response = (code.status(), Json(self)).into_response();
        // Read by the request metrics (label `code`) and the error-body middleware.
        response.extensions_mut().insert(code);
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(Code::Unauthenticated, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            StoreError::InvalidArgument(what) => ApiError::invalid(what),
            StoreError::Conflict(what) => ApiError::new(Code::AlreadyExists, what),
            StoreError::Unavailable(detail) => {
                warn!(%detail, "store unavailable");
                ApiError::new(
                    Code::Unavailable,
                    "the database is unavailable; retry later",
                )
            }
            // Details stay in the log: they may describe the schema or the data.
            StoreError::Internal(detail) => {
                error!(%detail, "store error");
                ApiError::new(Code::Internal, "internal error")
            }
        }
    }
}

/// The event log did not answer (NATS JetStream away): the stream cannot promise what it
/// promises, so it is not opened; the client retries.
impl From<crate::events::EventBusError> for ApiError {
    fn from(e: crate::events::EventBusError) -> Self {
        warn!(error = %e, "event log unavailable");
        ApiError::new(
            Code::Unavailable,
            "the event log is unavailable; retry the stream shortly",
        )
    }
}

impl From<CryptoError> for ApiError {
    fn from(e: CryptoError) -> Self {
        error!(error = %e, "message content could not be sealed or opened (is CHAT_ENCRYPTION_KEY the key the data was written with?)");
        ApiError::new(
            Code::Internal,
            "stored message content could not be decrypted",
        )
    }
}
