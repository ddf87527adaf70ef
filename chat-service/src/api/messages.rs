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
use crate::store::{self, MarkedRead, NewMessage, ReadMarker, StoredMessage};

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
        .history(req.id, me, req.before, effective_limit(req.limit))
        .await?;
    let items = open_page(page.items, |m| {
        let opened = MessageJson::open(m, &app.cipher);
        if opened.is_err() {
            app.metrics.message_decrypt_failure();
        }
        opened
    })?;
    Ok(Json(HistoryReply {
        items,
        pagination: Cursor {
            next_cursor: page.next_cursor,
        },
    }))
}

/// Opens the messages of a history page. One that does not decrypt (altered at rest, or sealed
/// under another key) is left out, so one bad row does not fail the page (`open` logs it, the
/// caller counts it); `nextCursor` stays the store's, so paging goes on past it. A page none of
/// whose messages decrypts fails: that cannot be told from a wrong `CHAT_ENCRYPTION_KEY`, and an
/// empty page would hide it.
fn open_page<T, E>(
    messages: Vec<StoredMessage>,
    mut open: impl FnMut(StoredMessage) -> Result<T, E>,
) -> Result<Vec<T>, E> {
    let mut items = Vec::with_capacity(messages.len());
    let mut first_error = None;
    for message in messages {
        match open(message) {
            Ok(item) => items.push(item),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if items.is_empty() => Err(e),
        _ => Ok(items),
    }
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
#[serde(rename_all = "camelCase")]
pub struct MarkReadReply {
    updated: u64,
    /// Set when a `since` call covered one chunk of a longer range: call again with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_since: Option<DateTime<Utc>>,
}

pub async fn mark_messages_as_read(
    State(app): State<AppState>,
    Caller(me): Caller,
    ConnectJson(req): ConnectJson<MarkReadRequest>,
) -> Result<Json<MarkReadReply>, ApiError> {
    let marker = validate::read_marker(req.message_ids, req.since)?;
    app.member_access(req.room_id, me).await?;
    let MarkedRead {
        updated,
        next_since,
    } = store::mark_read(
        app.store.as_ref(),
        req.room_id,
        me,
        marker.clone(),
        store::now(),
    )
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
    Ok(Json(MarkReadReply {
        updated,
        next_since,
    }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MessageIdGenerator, RoomId, UserId};

    fn messages(n: u8) -> Vec<StoredMessage> {
        let ids = MessageIdGenerator::default();
        (0..n)
            .map(|i| StoredMessage {
                id: ids.next(),
                room_id: RoomId(uuid::Uuid::nil()),
                sender_id: UserId(1),
                content: vec![i],
                message_type: "user_message".into(),
                created_at: store::now(),
            })
            .collect()
    }

    /// Messages whose content is in `bad` do not open.
    fn open_all(n: u8, bad: &[u8]) -> Result<Vec<u8>, &'static str> {
        open_page(messages(n), |m| {
            if bad.contains(&m.content[0]) {
                Err("does not decrypt")
            } else {
                Ok(m.content[0])
            }
        })
    }

    #[test]
    fn undecryptable_messages_are_left_out_unless_nothing_decrypts() {
        assert_eq!(open_all(3, &[]), Ok(vec![0, 1, 2]));
        assert_eq!(open_all(3, &[1]), Ok(vec![0, 2]));
        assert_eq!(open_all(3, &[0, 2]), Ok(vec![1]));
        assert_eq!(open_all(3, &[0, 1, 2]), Err("does not decrypt"));
        assert_eq!(open_all(1, &[0]), Err("does not decrypt"));
        assert_eq!(open_all(0, &[]), Ok(vec![]));
    }
}
