//! The request body extractor: JSON into `T`, every failure a Connect `invalid_argument`
//! (axum's own `Json` rejections are plain text with 415/422 statuses, which Connect clients
//! cannot read).
//!
//! Lenient where the Connect/proto3 JSON mapping is: an empty body means `{}`, a missing
//! `Content-Type` is accepted, unknown fields are ignored.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::api::error::ApiError;

pub struct ConnectJson<T>(pub T);

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// Parses a request body (`{}` when empty).
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => b"{}",
        // serde would also read a struct from an array (`[]` as "all fields absent").
        Some(b'{') => body,
        Some(_) => return Err(ApiError::invalid("request body must be a JSON object")),
    };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ConnectJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(value) = req.headers().get(header::CONTENT_TYPE) {
            let content_type = value.to_str().unwrap_or_default();
            if !is_json(content_type) {
                return Err(ApiError::invalid(format!(
                    "unsupported Content-Type {content_type:?}: send application/json"
                ))
                .into_response());
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                // Left as a bare 413 for the error-body middleware, which knows the limit and
                // turns every 413 into the same Connect error.
                StatusCode::PAYLOAD_TOO_LARGE.into_response()
            } else {
                ApiError::invalid(format!(
                    "could not read the request body: {}",
                    rejection.body_text()
                ))
                .into_response()
            }
        })?;
        parse_body(&bytes)
            .map(ConnectJson)
            .map_err(IntoResponse::into_response)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Req {
        room_id: uuid::Uuid,
        #[serde(default)]
        limit: Option<u32>,
    }

    #[test]
    fn content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/jsonx"));
    }

    #[test]
    fn bad_bodies_are_invalid_arguments() {
        for body in [
            &b"{"[..],
            b"[]",
            b"null",
            b"{\"roomId\": 5}",
            b"{\"roomId\": \"nope\"}",
            b"{\"limit\": 1}",
            b"{\"roomId\": \"8d6f1c4e-4b8e-4c1e-9c57-1f2d3e4f5a6b\", \"limit\": -1}",
            b"\xff",
        ] {
            let err = parse_body::<Req>(body).expect_err("must fail");
            assert_eq!(
                err.code,
                crate::api::error::Code::InvalidArgument,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn empty_body_is_an_empty_object_and_unknown_fields_are_ignored() {
        #[derive(Debug, Deserialize, PartialEq, Default)]
        struct Paging {
            #[serde(default)]
            page: Option<u32>,
        }
        assert_eq!(parse_body::<Paging>(b"").expect("empty"), Paging::default());
        assert_eq!(
            parse_body::<Paging>(b" \n").expect("blank"),
            Paging::default()
        );
        assert_eq!(
            parse_body::<Paging>(br#"{"page": 2, "extra": true}"#).expect("extra field"),
            Paging { page: Some(2) }
        );
    }
}
