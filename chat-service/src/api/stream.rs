//! StreamMessages: Server-Sent Events of the caller's rooms, on `GET` or `POST
//! /chat.v1.ChatService/StreamMessages` (same auth headers as every method; any body ignored).
//!
//! Events (`event:` name, `data:` JSON):
//! * `ready` `{"userId", "rooms"}`: first; the stream is subscribed, nothing after it is missed.
//! * `message_created`: a message as GetMessageHistory returns it (decrypted).
//! * `messages_read` `{"roomId", "userId", "updated", "messageIds"?, "since"?}`
//! * `reaction_added` `{"roomId", "messageId", "userId", "reaction"}`
//! * `room_created` `{"room"}` (the caller was made a participant: the stream follows the room)
//! * `member_left` `{"roomId", "userId"}` (after the caller's own, the room's events stop)
//! * `lagged` `{"missed"}`: the reader fell behind and events were dropped; re-read history.
//!
//! A comment line every 15 s keeps idle connections open through proxies. Streams end when the
//! server shuts down; clients reconnect. A user may hold `--max-streams-per-user` (5) streams
//! open per instance; one more is `resource_exhausted` (429) until one closes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::api::caller::Caller;
use crate::api::error::ApiError;
use crate::api::stream_slots::StreamSlot;
use crate::api::wire::{MessageJson, RoomJson};
use crate::api::{App, AppState};
use crate::events::{RoomEvent, StreamFilter};

const KEEP_ALIVE: Duration = Duration::from_secs(15);

struct Subscription {
    app: AppState,
    events: broadcast::Receiver<Arc<RoomEvent>>,
    filter: StreamFilter,
    /// Freed when the stream ends or the client goes away (the stream is dropped).
    _slot: StreamSlot,
}

pub async fn stream_messages(
    State(app): State<AppState>,
    Caller(me): Caller,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = app.stream_slots.take(me)?;
    // Subscribe before reading the room list, so an event between the two is not lost.
    let events = app.events.subscribe();
    let filter = StreamFilter::new(me, app.store.room_ids_for_user(me).await?);
    let ready = Event::default()
        .event("ready")
        .data(json!({ "userId": me, "rooms": filter.rooms() }).to_string());
    let subscription = Subscription {
        app,
        events,
        filter,
        _slot: slot,
    };
    let stream = futures::stream::once(async { Ok(ready) })
        .chain(futures::stream::unfold(subscription, next_event));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

async fn next_event(mut sub: Subscription) -> Option<(Result<Event, Infallible>, Subscription)> {
    let mut shutdown = sub.app.shutdown.clone();
    loop {
        let received = tokio::select! {
            // Also ends the stream if the server is gone (sender dropped).
            _ = async { drop(shutdown.wait_for(|stopping| *stopping).await) } => return None,
            received = sub.events.recv() => received,
        };
        match received {
            Ok(event) if sub.filter.admit(&event) => {
                if let Some(sse) = to_sse(&sub.app, &event) {
                    return Some((Ok(sse), sub));
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                let lagged = Event::default()
                    .event("lagged")
                    .data(json!({ "missed": missed }).to_string());
                return Some((Ok(lagged), sub));
            }
            Err(RecvError::Closed) => return None,
        }
    }
}

/// The SSE form of an event; `None` (logged) if a message cannot be decrypted, so one bad row
/// does not end the stream.
fn to_sse(app: &App, event: &RoomEvent) -> Option<Event> {
    let data = match event {
        RoomEvent::MessageCreated { message } => {
            serde_json::to_value(MessageJson::open(message.clone(), &app.cipher).ok()?).ok()?
        }
        RoomEvent::MessagesRead {
            room_id,
            user_id,
            updated,
            message_ids,
            since,
        } => {
            json!({ "roomId": room_id, "userId": user_id, "updated": updated, "messageIds": message_ids, "since": since })
        }
        RoomEvent::ReactionAdded {
            room_id,
            message_id,
            user_id,
            reaction,
        } => {
            json!({ "roomId": room_id, "messageId": message_id, "userId": user_id, "reaction": reaction })
        }
        RoomEvent::RoomCreated { room } => json!({ "room": RoomJson::from(room.clone()) }),
        RoomEvent::MemberLeft { room_id, user_id } => {
            json!({ "roomId": room_id, "userId": user_id })
        }
    };
    Some(Event::default().event(event.name()).data(data.to_string()))
}
