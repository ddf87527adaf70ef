//! `/metrics`, `/healthz`, `/readyz` and the Alertmanager webhook.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use tracing::warn;

use crate::alert_webhook::{self, Payload};
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    /// Set once the operator has a client and is either leading or standing by.
    pub ready: Arc<AtomicBool>,
    pub webhook: Option<Arc<Webhook>>,
}

/// The Alertmanager receiver: off unless a shared token is configured.
pub struct Webhook {
    pub client: kube::Client,
    pub namespace: Option<String>,
    pub token: String,
}

/// Where Alertmanager posts (`webhook_configs[].url`).
pub const WEBHOOK_PATH: &str = "/webhook/alertmanager";

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route(
            WEBHOOK_PATH,
            post(webhook).layer(DefaultBodyLimit::max(1 << 20)),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<HttpState>) -> ([(&'static str, &'static str); 1], String) {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, &'static str) {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn webhook(
    State(s): State<HttpState>,
    headers: HeaderMap,
    body: Result<Json<Payload>, axum::extract::rejection::JsonRejection>,
) -> (StatusCode, String) {
    let Some(hook) = &s.webhook else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the alert webhook is off: start the operator with a webhook token".into(),
        );
    };
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), hook.token.as_bytes())) {
        s.metrics.error("WebhookUnauthorized");
        return (
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        );
    }
    let Json(payload) = match body {
        Ok(p) => p,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not an Alertmanager webhook payload: {e}"),
            );
        }
    };
    match alert_webhook::receive(hook.client.clone(), hook.namespace.as_deref(), &payload).await {
        Ok(changed) => (StatusCode::OK, format!("{changed} migration(s) updated")),
        Err(e) => {
            warn!(error = %e, "alert webhook failed");
            s.metrics.error("WebhookFailed");
            // Alertmanager retries on 5xx.
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

/// Compares without an early exit, so response time does not leak how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
