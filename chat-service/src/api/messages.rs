//! SendMessage, GetMessageHistory, MarkMessagesAsRead, ReactToMessage.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::api::caller::Caller;
use crate::api::error::ApiError;
use crate::api::json::ConnectJson;
use crate::api::wire::{MessageJson, SuccessReply};
use crate::api::{AppState, validate};
use crate::events::RoomEvent;
use crate::ids::{MessageId, RoomId};
use crate::store::page::effective_limit;
use crate::store::{self, NewMessage, ReadMarker};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessageRequest {
    room_id: RoomId,
    content: String,
    #[serde(default, rename = "type")]
    message_type: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SendMessageReply {
    success: bool,
    message: MessageJson,
}

pub async fn send_message(
    State(app): State<AppState>,
    Caller(me): Caller,
    ConnectJson(req): ConnectJson<SendMessageRequest>,
) -> Result<Json<SendMessageReply>, ApiError> {
    validate::message_content(&req.content)?;
    let message_type = validate::message_type(req.message_type.as_deref())?;
    let access = app.member_access(req.room_id, me).await?;
    let id = app.message_ids.next();
    // The id's own time, so that both stores (and the timeuuid) agree on it.
    let created_at = id.created_at().unwrap_or_else(store::now);
    let content = app.cipher.seal(req.room_id, id, &req.content)?;
    let stored = app
        .store
        .insert_message(NewMessage {
            id,
            room_id: req.room_id,
            sender_id: me,
            content,
            message_type,
            created_at,
        })
        .await?;
    app.metrics
        .message_sent(access.room_type.as_str(), app.store.database());
    app.publish(RoomEvent::MessageCreated {
        message: stored.clone(),
    })
    .await;
    Ok(Json(SendMessageReply {
        success: true,
        message: MessageJson::with_content(stored, req.content),
    }))
}

#[derive(Debug, Deserialize)]
pub struct HistoryRequest {
    id: RoomId,
    #[serde(default)]
    limit: Option<u32>,
    /// Cursor: the `nextCursor` of the previous page.
    #[serde(default)]
    before: Option<MessageId>,
}

#[derive(Debug, Serialize)]
pub struct HistoryReply {
    items: Vec<MessageJson>,
    pagination: Cursor,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cursor {
    next_cursor: Option<MessageId>,
}

pub async fn get_message_history(
    State(app): State<AppState>,
    Caller(me): Caller,
    ConnectJson(req): ConnectJson<HistoryRequest>,
) -> Result<Json<HistoryReply>, ApiError> {
    app.member_access(req.id, me).await?;
    let page = app
        .store
        .history(req.id, req.before, effective_limit(req.limit))
        .await?;
    let items = page
        .items
        .into_iter()
        .map(|m| MessageJson::open(m, &app.cipher))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(HistoryReply {
        items,
        pagination: Cursor {
            next_cursor: page.next_cursor,
        },
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MarkReadRequest {
    room_id: RoomId,
    #[serde(default)]
    message_ids: Option<Vec<MessageId>>,
    #[serde(default)]
    since: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
pub struct MarkReadReply {
    updated: u64,
}

pub async fn mark_messages_as_read(
    State(app): State<AppState>,
    Caller(me): Caller,
    ConnectJson(req): ConnectJson<MarkReadRequest>,
) -> Result<Json<MarkReadReply>, ApiError> {
    let marker = validate::read_marker(req.message_ids, req.since)?;
    app.member_access(req.room_id, me).await?;
    let updated = app
        .store
        .mark_read(req.room_id, me, marker.clone(), store::now())
        .await?;
    if updated > 0 {
        let (message_ids, since) = match marker {
            ReadMarker::Ids(ids) => (Some(ids), None),
            ReadMarker::Since(since) => (None, Some(since)),
        };
        app.publish(RoomEvent::MessagesRead {
            room_id: req.room_id,
            user_id: me,
            updated,
            message_ids,
            since,
        })
        .await;
    }
    Ok(Json(MarkReadReply { updated }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReactRequest {
    message_id: MessageId,
    reaction: String,
}

pub async fn react_to_message(
    State(app): State<AppState>,
    Caller(me): Caller,
    ConnectJson(req): ConnectJson<ReactRequest>,
) -> Result<Json<SuccessReply>, ApiError> {
    let reaction = validate::reaction(&req.reaction)?;
    let room_id = app.store.message_room(req.message_id).await?;
    app.member_access(room_id, me).await?;
    // Idempotent: reacting twice succeeds and stores (and announces) one reaction.
    if app
        .store
        .react(req.message_id, me, reaction.clone(), store::now())
        .await?
    {
        app.publish(RoomEvent::ReactionAdded {
            room_id,
            message_id: req.message_id,
            user_id: me,
            reaction,
        })
        .await;
    }
    Ok(Json(SuccessReply::OK))
}
