//! Push device tokens: RegisterDeviceToken, ListDeviceTokens, DeleteDeviceToken. A user sees and
//! changes only their own tokens.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::api::AppState;
use crate::api::caller::Caller;
use crate::api::error::{ApiError, Code};
use crate::api::json::ConnectJson;
use crate::api::wire::SuccessReply;
use crate::store::devices::{MAX_DEVICES_PER_USER, token_problem};
use crate::store::{self, DeviceToken, Platform};

/// `{"token", "platform": "ios" | "android" | "web"}`
#[derive(Debug, Deserialize)]
pub struct RegisterDeviceRequest {
    token: String,
    platform: String,
}

/// `{"token"}`
#[derive(Debug, Deserialize)]
pub struct DeleteDeviceRequest {
    token: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct ListDevicesRequest {}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceJson {
    pub token: String,
    pub platform: Platform,
    pub registered_at: DateTime<Utc>,
}

impl From<DeviceToken> for DeviceJson {
    fn from(d: DeviceToken) -> Self {
        DeviceJson {
            token: d.token,
            platform: d.platform,
            registered_at: d.registered_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DeviceReply {
    pub device: DeviceJson,
}

#[derive(Debug, Serialize)]
pub struct DevicesReply {
    pub devices: Vec<DeviceJson>,
}

fn checked_token(token: &str) -> Result<(), ApiError> {
    match token_problem(token) {
        Some(problem) => Err(ApiError::invalid(problem)),
        None => Ok(()),
    }
}

/// Registers a token for the caller (again: the platform and time are updated). A user holds at
/// most [`MAX_DEVICES_PER_USER`] tokens; one more is `resource_exhausted` until one is deleted.
pub async fn register_device_token(
    State(app): State<AppState>,
    Caller(me): Caller,
    ConnectJson(req): ConnectJson<RegisterDeviceRequest>,
) -> Result<Json<DeviceReply>, ApiError> {
    checked_token(&req.token)?;
    let platform = Platform::parse(&req.platform).ok_or_else(|| {
        ApiError::invalid(format!(
            "platform {:?} is not one of ios, android, web",
            req.platform
        ))
    })?;
    let held = app.store.devices(me).await?;
    // A check before the write: two registrations racing may pass it together, so the limit
    // can be exceeded by the number of concurrent calls, never grow without bound.
    if held.len() >= MAX_DEVICES_PER_USER && !held.iter().any(|d| d.token == req.token) {
        return Err(ApiError::new(
            Code::ResourceExhausted,
            format!(
                "a user may register at most {MAX_DEVICES_PER_USER} device tokens; delete one first (DeleteDeviceToken)"
            ),
        ));
    }
    let at = store::now();
    app.store
        .register_device(me, req.token.clone(), platform, at)
        .await?;
    Ok(Json(DeviceReply {
        device: DeviceJson {
            token: req.token,
            platform,
            registered_at: at,
        },
    }))
}

/// The caller's tokens, by token.
pub async fn list_device_tokens(
    State(app): State<AppState>,
    Caller(me): Caller,
    ConnectJson(_req): ConnectJson<ListDevicesRequest>,
) -> Result<Json<DevicesReply>, ApiError> {
    let devices = app.store.devices(me).await?;
    Ok(Json(DevicesReply {
        devices: devices.into_iter().map(DeviceJson::from).collect(),
    }))
}

/// Deletes one of the caller's tokens; deleting a token that is not registered succeeds (the
/// call is idempotent, so a client may retry it).
pub async fn delete_device_token(
    State(app): State<AppState>,
    Caller(me): Caller,
    ConnectJson(req): ConnectJson<DeleteDeviceRequest>,
) -> Result<Json<SuccessReply>, ApiError> {
    checked_token(&req.token)?;
    app.store.delete_device(me, req.token, store::now()).await?;
    Ok(Json(SuccessReply::OK))
}
