//! The HTTP API.
//!
//! | method | path | |
//! |---|---|---|
//! | `POST` | `/v1/events` | one event (JSON [`EventIn`]) → `201 {"ids": [..]}` |
//! | `POST` | `/v1/events/batch` | `{"events": [EventIn, ..]}` (1..=1000) → `201 {"ids": [..]}` |
//! | `GET` | `/v1/devices/{device}/latest` | the device's latest event, `404` when none |
//! | `GET` | `/v1/devices/{device}/events?from=&to=&limit=` | events in `[from, to)` (RFC 3339), oldest first, limit ≤ 10000 (default 1000) |
//! | `GET` | `/v1/devices/{device}/hourly?from=&to=` | per-hour count, sum, min, max, avg |
//! | `GET` | `/metrics`, `/healthz` | |
//!
//! Reads carry the caller in `x-user-id`: its stable bucket picks the store that serves the
//! read (the split). A write is counted under the side of its first event's owner (a device
//! gateway sends one owner's events per batch).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use ficus_flags::Side;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::model::{DeviceId, EventIn, InvalidEvent, OwnerId, accept_batch};
use crate::routing::{System, user_side};
use crate::store::{self, StoreError};
use crate::writer::Writer;

pub const USER_HEADER: &str = "x-user-id";
const MAX_RANGE_LIMIT: i64 = 10_000;

#[derive(Clone)]
pub struct App {
    pub writer: Writer,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Invalid(#[from] InvalidEvent),
    #[error("{0}")]
    BadRequest(String),
    #[error("no event for device {0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Store(e) if e.transient() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(%status, "{self}");
        }
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/v1/events", post(ingest_one))
        .route("/v1/events/batch", post(ingest_batch))
        .route("/v1/devices/{device}/latest", get(latest))
        .route("/v1/devices/{device}/events", get(events))
        .route("/v1/devices/{device}/hourly", get(hourly))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(app)
}

/// Runs `work` for a caller on `side`, counting the request under its system and status.
async fn counted<T: IntoResponse>(
    app: &App,
    side: Side,
    route: &'static str,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Response {
    let start = Instant::now();
    let response = match work.await {
        Ok(r) => r.into_response(),
        Err(e) => e.into_response(),
    };
    app.metrics.request(
        System::from(side),
        route,
        response.status().as_u16(),
        start.elapsed(),
    );
    response
}

#[derive(Serialize, Deserialize)]
pub struct Batch {
    pub events: Vec<EventIn>,
}

#[derive(Serialize, Deserialize)]
pub struct Accepted {
    pub ids: Vec<Uuid>,
}

async fn ingest_one(
    State(app): State<App>,
    body: Result<Json<EventIn>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(e)) => ingest(app, vec![e], "ingest").await,
        Err(rejection) => rejection.into_response(),
    }
}

async fn ingest_batch(
    State(app): State<App>,
    body: Result<Json<Batch>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(b)) => ingest(app, b.events, "ingest_batch").await,
        Err(rejection) => rejection.into_response(),
    }
}

async fn ingest(app: App, events: Vec<EventIn>, route: &'static str) -> Response {
    let values = app.writer.flags.current().values();
    let side = events
        .first()
        .map_or(Side::Legacy, |e| user_side(&values, &e.user_id));
    let work = async {
        let events = accept_batch(events, Utc::now())?;
        app.writer.write(&events).await?;
        Ok((
            StatusCode::CREATED,
            Json(Accepted {
                ids: events.iter().map(|e| e.id).collect(),
            }),
        ))
    };
    counted(&app, side, route, work).await
}

/// The caller's side and the device, from the path and `x-user-id`.
fn reader(app: &App, headers: &HeaderMap, device: String) -> Result<(Side, DeviceId), ApiError> {
    let user = headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::BadRequest(format!("reads need the caller in the {USER_HEADER} header"))
        })?;
    let user = OwnerId::try_from(user)?;
    let device = DeviceId::try_from(device)?;
    Ok((
        user_side(&app.writer.flags.current().values(), &user),
        device,
    ))
}

/// Reads without a valid caller are counted under the old system: they never reached a store.
async fn read<T: IntoResponse>(
    app: &App,
    headers: &HeaderMap,
    device: String,
    route: &'static str,
    work: impl AsyncFnOnce(Side, DeviceId) -> Result<T, ApiError>,
) -> Response {
    match reader(app, headers, device) {
        Ok((side, device)) => counted(app, side, route, work(side, device)).await,
        Err(e) => counted::<T>(app, Side::Legacy, route, async { Err(e) }).await,
    }
}

async fn latest(
    State(app): State<App>,
    headers: HeaderMap,
    Path(device): Path<String>,
) -> Response {
    let pools = app.writer.stores.clone();
    read(
        &app,
        &headers,
        device,
        "latest",
        async move |side: Side, device: DeviceId| {
            store::latest(pools.pool(side), side, device.as_str())
                .await?
                .map(Json)
                .ok_or_else(|| ApiError::NotFound(device.to_string()))
        },
    )
    .await
}

#[derive(Deserialize)]
struct RangeQuery {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: Option<i64>,
}

fn check_range(q: &RangeQuery) -> Result<i64, ApiError> {
    if q.from >= q.to {
        return Err(ApiError::BadRequest(format!(
            "from ({}) must be before to ({})",
            q.from, q.to
        )));
    }
    let limit = q.limit.unwrap_or(1000);
    if !(1..=MAX_RANGE_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {MAX_RANGE_LIMIT}, got {limit}"
        )));
    }
    Ok(limit)
}

async fn events(
    State(app): State<App>,
    headers: HeaderMap,
    Path(device): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Response {
    let pools = app.writer.stores.clone();
    read(
        &app,
        &headers,
        device,
        "events",
        async move |side: Side, device: DeviceId| {
            let limit = check_range(&q)?;
            Ok(Json(
                store::range(pools.pool(side), side, device.as_str(), q.from, q.to, limit).await?,
            ))
        },
    )
    .await
}

async fn hourly(
    State(app): State<App>,
    headers: HeaderMap,
    Path(device): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Response {
    let pools = app.writer.stores.clone();
    read(
        &app,
        &headers,
        device,
        "hourly",
        async move |side: Side, device: DeviceId| {
            check_range(&q)?;
            Ok(Json(
                store::hourly(pools.pool(side), side, device.as_str(), q.from, q.to).await?,
            ))
        },
    )
    .await
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}
