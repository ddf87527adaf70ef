//! CreateRoom, GetRoom, GetRooms, LeaveRoom, PinRoom.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use crate::api::caller::Caller;
use crate::api::error::ApiError;
use crate::api::error::Code;
use crate::api::json::ConnectJson;
use crate::api::wire::{RoomJson, RoomReply, SuccessReply};
use crate::api::{AppState, validate};
use crate::events::RoomEvent;
use crate::ids::{RoomId, UserId};
use crate::store::{self, NewRoom, PageRequest, Role, RoomType};

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

/// `{"id"}` (the caller leaves), `{"id", "participants": [...]}` or `{"id", "leaveAll": true}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaveRoomRequest {
    id: RoomId,
    #[serde(default)]
    participants: Vec<i64>,
    #[serde(default)]
    leave_all: bool,
}

#[derive(Debug, Serialize)]
pub struct LeaveRoomReply {
    success: bool,
    /// The users whose membership this call ended, ascending.
    removed: Vec<UserId>,
}

/// The caller leaves; or the owner of a group removes participants (`participants`) or every
/// member, themselves last (`leaveAll`). Users who are not members are skipped.
pub async fn leave_room(
    State(app): State<AppState>,
    Caller(me): Caller,
    ConnectJson(req): ConnectJson<LeaveRoomRequest>,
) -> Result<Json<LeaveRoomReply>, ApiError> {
    let access = app.member_access(req.id, me).await?;
    let mut leaving = match (req.leave_all, req.participants.is_empty()) {
        (true, false) => {
            return Err(ApiError::invalid(
                "send either participants or leaveAll, not both",
            ));
        }
        (false, true) => vec![me],
        (false, false) => validate::leaving(&req.participants)?,
        (true, true) => app.store.get_room(req.id, me).await?.participants,
    };
    if leaving.iter().any(|u| *u != me) {
        if access.room_type == RoomType::P2p {
            return Err(ApiError::new(
                Code::PermissionDenied,
                "in a p2p room each participant can only leave themselves",
            ));
        }
        if access.role != Some(Role::Owner) {
            return Err(ApiError::new(
                Code::PermissionDenied,
                "only the room's owner may remove other participants",
            ));
        }
    }
    // The caller last: if a removal fails, the owner can still send the call again.
    leaving.sort_by_key(|u| (*u == me, *u));
    let at = store::now();
    let mut removed = Vec::new();
    for user in leaving {
        // False for a user who was not a member (or whom a concurrent call removed first).
        if app.store.leave_room(req.id, user, at).await? {
            app.publish(RoomEvent::MemberLeft {
                room_id: req.id,
                user_id: user,
            })
            .await;
            removed.push(user);
        }
    }
    removed.sort();
    Ok(Json(LeaveRoomReply {
        success: true,
        removed,
    }))
}

/// `{"id", "pinned": true | false}`; `pinned` defaults to true.
#[derive(Debug, Deserialize)]
pub struct PinRoomRequest {
    id: RoomId,
    #[serde(default = "yes")]
    pinned: bool,
}

fn yes() -> bool {
    true
}

/// Pins the room at the top of the caller's GetRooms, or unpins it. Only the caller's own list
/// changes.
pub async fn pin_room(
    State(app): State<AppState>,
    Caller(me): Caller,
    ConnectJson(req): ConnectJson<PinRoomRequest>,
) -> Result<Json<SuccessReply>, ApiError> {
    app.member_access(req.id, me).await?;
    // False only if the caller left meanwhile.
    if !app
        .store
        .set_pinned(req.id, me, req.pinned, store::now())
        .await?
    {
        return Err(ApiError::not_a_member());
    }
    Ok(Json(SuccessReply::OK))
}
