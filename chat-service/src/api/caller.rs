//! The authenticated caller of a request (extractor): bearer token plus matching `X-User-ID`.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::auth::Session;
use crate::ids::UserId;

pub const USER_HEADER: &str = "x-user-id";

/// The user making the request; a handler taking it runs only for authenticated requests.
#[derive(Clone, Copy, Debug)]
pub struct Caller(pub UserId);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let session = CallerSession::from_request_parts(parts, app).await?;
        Ok(Caller(session.0.user))
    }
}

/// The caller and when their token expires (for what outlives one request: event streams).
#[derive(Clone, Copy, Debug)]
pub struct CallerSession(pub Session);

impl FromRequestParts<AppState> for CallerSession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // A header value that is not visible ASCII cannot be a valid token or user id; passing
        // "" on lets the authenticator say which header is wrong.
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .map(|v| v.to_str().unwrap_or_default())
        };
        Ok(CallerSession(app.auth.authenticate_session(
            header(AUTHORIZATION.as_str()),
            header(USER_HEADER),
        )?))
    }
}
