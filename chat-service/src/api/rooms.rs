//! CreateRoom, GetRoom, GetRooms, LeaveRoom.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use crate::api::caller::Caller;
use crate::api::error::ApiError;
use crate::api::json::ConnectJson;
use crate::api::wire::{RoomJson, RoomReply, SuccessReply};
use crate::api::{AppState, validate};
use crate::events::RoomEvent;
use crate::ids::RoomId;
use crate::store::{self, NewRoom, PageRequest, RoomType};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateRoomRequest {
    #[serde(default)]
    name: String,
    #[serde(rename = "type")]
    room_type: RoomType,
    #[serde(default)]
    participants: Vec<i64>,
}

pub async fn create_room(
    State(app): State<AppState>,
    Caller(me): Caller,
    ConnectJson(req): ConnectJson<CreateRoomRequest>,
) -> Result<Json<RoomReply>, ApiError> {
    let participants = validate::participants(me, req.room_type, &req.participants)?;
    let name = validate::room_name(&req.name)?;
    let room = app
        .store
        .create_room(NewRoom {
            id: RoomId::random(),
            name,
            room_type: req.room_type,
            created_by: me,
            participants,
            created_at: store::now(),
        })
        .await?;
    app.publish(RoomEvent::RoomCreated { room: room.clone() })
        .await;
    Ok(Json(RoomReply { room: room.into() }))
}

/// `{"id": "<room uuid>"}` (GetRoom, LeaveRoom).
#[derive(Debug, Deserialize)]
pub struct RoomIdRequest {
    id: RoomId,
}

pub async fn get_room(
    State(app): State<AppState>,
    Caller(me): Caller,
    ConnectJson(req): ConnectJson<RoomIdRequest>,
) -> Result<Json<RoomReply>, ApiError> {
    let room = app.store.get_room(req.id, me).await?;
    if !room.participants.contains(&me) {
        return Err(ApiError::not_a_member());
    }
    Ok(Json(RoomReply { room: room.into() }))
}

#[derive(Debug, Deserialize)]
pub struct GetRoomsRequest {
    #[serde(default)]
    page: Option<u32>,
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct GetRoomsReply {
    items: Vec<RoomJson>,
    pagination: Pagination,
}

#[derive(Debug, Serialize)]
pub struct Pagination {
    page: u32,
    limit: u32,
    total: u64,
}

pub async fn get_rooms(
    State(app): State<AppState>,
    Caller(me): Caller,
    ConnectJson(req): ConnectJson<GetRoomsRequest>,
) -> Result<Json<GetRoomsReply>, ApiError> {
    let page = PageRequest::new(req.page, req.limit);
    let (rooms, total) = app.store.rooms_for_user(me, page).await?;
    Ok(Json(GetRoomsReply {
        items: rooms.into_iter().map(RoomJson::from).collect(),
        pagination: Pagination {
            page: page.page,
            limit: page.limit,
            total,
        },
    }))
}

pub async fn leave_room(
    State(app): State<AppState>,
    Caller(me): Caller,
    ConnectJson(req): ConnectJson<RoomIdRequest>,
) -> Result<Json<SuccessReply>, ApiError> {
    app.member_access(req.id, me).await?;
    // False only if a concurrent LeaveRoom won: the caller is out either way.
    if app.store.leave_room(req.id, me, store::now()).await? {
        app.publish(RoomEvent::MemberLeft {
            room_id: req.id,
            user_id: me,
        })
        .await;
    }
    Ok(Json(SuccessReply::OK))
}
