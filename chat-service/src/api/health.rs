//! `/healthz` (the process serves), `/readyz` (the store answers), `/metrics`.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tracing::debug;

use crate::api::AppState;

/// A ping slower than this counts as not ready (the load balancer should try another instance)
/// and, in the health watch, as down.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Ready while the store answers. The room cache is reported, never required: without it
/// reads go to the store.
async fn readyz(State(app): State<AppState>) -> (StatusCode, String) {
    match tokio::time::timeout(PING_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => match &app.cache {
            Some(cache) if !cache.ping().await => (
                StatusCode::OK,
                "ok; the room cache (Redis) does not answer: reads go to the store".into(),
            ),
            _ => (StatusCode::OK, "ok".into()),
        },
        Ok(Err(e)) => {
            debug!(error = %e, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}"))
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: {} did not answer within {PING_TIMEOUT:?}",
                app.store.database()
            ),
        ),
    }
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    app.metrics.response()
}
