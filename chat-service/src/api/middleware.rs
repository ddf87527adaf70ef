//! Cross-cutting request handling: request metrics, and Connect error bodies for responses that
//! layers (body limit, timeout) and routing produce without one.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::AppState;
use crate::api::error::{ApiError, Code};
use crate::flags::Side;

tokio::task_local! {
    /// The side that served the request being handled, as the store noted it (see
    /// [`note_cohort`]).
    static NOTED: std::cell::Cell<Option<Side>>;
}

/// Marks the request being handled on this task as served by the `cohort` side
/// (`chat_requests_total{cohort}`): the migration router calls it with its routing decision, so
/// the request's metrics carry the cohort without handlers knowing about routing. A request
/// nothing noted is `legacy`. Outside a request (tools, tests) it does nothing.
pub fn note_cohort(cohort: Side) {
    let _ = NOTED.try_with(|c| c.set(Some(cohort)));
}

/// `chat_requests_total{cohort,code}` and `chat_request_duration_seconds{cohort}`.
pub async fn track_request(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let (response, noted) = NOTED
        .scope(std::cell::Cell::new(None), async move {
            let response = next.run(request).await;
            (response, NOTED.with(|c| c.get()))
        })
        .await;
    let code = match response.extensions().get::<Code>() {
        Some(code) => code.as_str(),
        None if response.status().is_success() => "ok",
        None => fallback_code(response.status()).as_str(),
    };
    let cohort = noted.unwrap_or_default();
    app.metrics.request(cohort.as_str(), code, start.elapsed());
    response
}

/// The Connect code for an error status that arrived without one.
fn fallback_code(status: StatusCode) -> Code {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => Code::InvalidArgument,
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => Code::NotFound,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        s if s.is_client_error() => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

/// Gives every error response a Connect body: those from handlers already have one (they carry
/// their [`Code`]); the body-limit layer's 413 and the timeout layer's 504 do not.
pub async fn connect_error_body(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if status.is_success() || response.extensions().get::<Code>().is_some() {
        return response;
    }
    let code = fallback_code(status);
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "request body is larger than the {}-byte limit",
            app.limits.max_body_bytes
        ),
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => {
            format!(
                "request did not complete within {} ms",
                app.limits.request_timeout.as_millis()
            )
        }
        other => other
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned(),
    };
    let mut response = ApiError::new(code, message).into_response();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body is never read, so the server closes the connection after this
        // answer: saying so keeps a client from sending its next request on it and losing it.
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Reads a unary request's whole body (up to the body limit: this is where unary requests'
/// limit is enforced) before the handler runs. A request refused before its handler reads the
/// body (unauthenticated, say) would otherwise leave unread bytes on the connection: the server
/// then closes it after the answer, and a client that already sent its next request on it sees
/// that request dropped without an answer.
pub async fn read_whole_body(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    // A body that trickles in counts against the request's deadline, as it did in the handler.
    let read = tokio::time::timeout(
        app.limits.request_timeout,
        axum::body::to_bytes(body, app.limits.max_body_bytes),
    );
    let Ok(read) = read.await else {
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    };
    match read {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        // Over the limit: the error-body layer says so (and closes the connection).
        Err(e)
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) =>
        {
            StatusCode::PAYLOAD_TOO_LARGE.into_response()
        }
        Err(e) => {
            ApiError::invalid(format!("the request body could not be read: {e}")).into_response()
        }
    }
}

/// Unknown paths and methods other than those routed.
pub async fn unknown_method(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no such method {} {}: call POST /chat.v1.ChatService/<Method> (GET or POST for StreamMessages)",
        request.method(),
        request.uri().path()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_from_layers_map_to_connect_codes() {
        assert_eq!(
            fallback_code(StatusCode::PAYLOAD_TOO_LARGE),
            Code::InvalidArgument
        );
        assert_eq!(
            fallback_code(StatusCode::GATEWAY_TIMEOUT),
            Code::DeadlineExceeded
        );
        assert_eq!(
            fallback_code(StatusCode::REQUEST_TIMEOUT),
            Code::DeadlineExceeded
        );
        assert_eq!(
            fallback_code(StatusCode::METHOD_NOT_ALLOWED),
            Code::NotFound
        );
        assert_eq!(
            fallback_code(StatusCode::UNSUPPORTED_MEDIA_TYPE),
            Code::InvalidArgument
        );
        assert_eq!(fallback_code(StatusCode::BAD_GATEWAY), Code::Internal);
        // The status a client sees is the code's status: one status per code.
        assert_eq!(
            fallback_code(StatusCode::PAYLOAD_TOO_LARGE).status(),
            StatusCode::BAD_REQUEST
        );
    }
}
