//! StreamMessages: Server-Sent Events of the caller's rooms, on `GET` or `POST
//! /chat.v1.ChatService/StreamMessages` (same auth headers as every method; any body ignored).
//!
//! Events (`event:` name, `data:` JSON); every room event has an `id:`, its place in the event
//! log:
//! * `ready` `{"userId", "rooms"}`: first; the stream is subscribed, nothing after it is missed.
//! * `message_created`: a message as GetMessageHistory returns it (decrypted).
//! * `messages_read` `{"roomId", "userId", "updated", "messageIds"?, "since"?}`
//! * `reaction_added` `{"roomId", "messageId", "userId", "reaction"}`
//! * `room_created` `{"room"}` (the caller was made a participant: the stream follows the room)
//! * `member_left` `{"roomId", "userId"}` (after the caller's own, the room's events stop)
//! * `lagged` `{"missed"}`: events were dropped (the reader fell behind, or a reconnect asked
//!   for events the log no longer holds); re-read history.
//! * `token_expired` `{}`: last; the caller's token expired, the stream ends. Reconnect with a
//!   new token (and `Last-Event-ID`).
//!
//! A client reconnecting with `Last-Event-ID: <id>` (browsers' EventSource does it by itself)
//! gets the events of its rooms after that one first, then the live ones: none missed, none
//! twice. With NATS the log is JetStream's (kept `--events-retention`); without, the last
//! 4,096 events of this instance.
//!
//! A comment line every 15 s keeps idle connections open through proxies. Streams end when the
//! server shuts down; clients reconnect. A user may hold `--max-streams-per-user` (5) streams
//! open per instance; one more is `resource_exhausted` (429) until one closes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::api::caller::CallerSession;
use crate::api::error::ApiError;
use crate::api::stream_slots::StreamSlot;
use crate::api::wire::{MessageJson, RoomJson};
use crate::api::{App, AppState};
use crate::events::{Logged, StreamFilter};

const KEEP_ALIVE: Duration = Duration::from_secs(15);
pub const LAST_EVENT_ID: &str = "last-event-id";

struct Subscription {
    app: AppState,
    events: broadcast::Receiver<Arc<Logged>>,
    filter: StreamFilter,
    /// Live events up to this one were replayed, or precede the stream's `ready`.
    seen_upto: u64,
    /// When the caller's token expires: the stream ends then.
    expires: tokio::time::Instant,
    expired: bool,
    /// Freed when the stream ends or the client goes away (the stream is dropped).
    _slot: StreamSlot,
}

/// `Last-Event-ID`, if the client sent one.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(LAST_EVENT_ID) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        ApiError::invalid(format!(
            "Last-Event-ID must be the id of an event this stream sent (a number), not {:?}",
            text.chars().take(32).collect::<String>()
        ))
    })
}

pub async fn stream_messages(
    State(app): State<AppState>,
    CallerSession(session): CallerSession,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let me = session.user;
    let after = last_event_id(&headers)?;
    let slot = app.stream_slots.take(me)?;
    // Subscribe before reading the log's end and the room list, so an event between them is
    // not lost.
    let events = app.events.subscribe();
    let upto = app.events.last_seq().await.map_err(ApiError::from)?;
    let mut filter = StreamFilter::new(me, app.store.room_ids_for_user(me).await?);
    let mut first = vec![
        Event::default()
            .event("ready")
            .id(after.unwrap_or(upto).to_string())
            .data(json!({ "userId": me, "rooms": filter.rooms() }).to_string()),
    ];
    if let Some(after) = after {
        let replay = app
            .events
            .replay(after, upto)
            .await
            .map_err(ApiError::from)?;
        if replay.missed > 0 {
            first.push(lagged(replay.missed));
        }
        first.extend(
            replay
                .events
                .iter()
                .filter(|logged| filter.admit(&logged.event))
                .filter_map(|logged| to_sse(&app, logged)),
        );
    }
    let left = session
        .expires
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let subscription = Subscription {
        app,
        events,
        filter,
        seen_upto: upto.max(after.unwrap_or(0)),
        expires: tokio::time::Instant::now() + left,
        expired: false,
        _slot: slot,
    };
    let stream = futures::stream::iter(first.into_iter().map(Ok))
        .chain(futures::stream::unfold(subscription, next_event));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

fn lagged(missed: u64) -> Event {
    Event::default()
        .event("lagged")
        .data(json!({ "missed": missed }).to_string())
}

async fn next_event(mut sub: Subscription) -> Option<(Result<Event, Infallible>, Subscription)> {
    if sub.expired {
        return None;
    }
    let mut shutdown = sub.app.shutdown.clone();
    loop {
        let received = tokio::select! {
            // Also ends the stream if the server is gone (sender dropped).
            _ = async { drop(shutdown.wait_for(|stopping| *stopping).await) } => return None,
            _ = tokio::time::sleep_until(sub.expires) => {
                sub.expired = true;
                let end = Event::default().event("token_expired").data("{}");
                return Some((Ok(end), sub));
            }
            received = sub.events.recv() => received,
        };
        match received {
            Ok(logged) if logged.seq <= sub.seen_upto => {}
            Ok(logged) if sub.filter.admit(&logged.event) => {
                if let Some(sse) = to_sse(&sub.app, &logged) {
                    return Some((Ok(sse), sub));
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => return Some((Ok(lagged(missed)), sub)),
            Err(RecvError::Closed) => return None,
        }
    }
}

/// The SSE form of an event; `None` (logged) if a message cannot be decrypted, so one bad row
/// does not end the stream.
fn to_sse(app: &App, logged: &Logged) -> Option<Event> {
    let event = &logged.event;
    let data = match event {
        crate::events::RoomEvent::MessageCreated { message } => {
            serde_json::to_value(MessageJson::open(message.clone(), &app.cipher).ok()?).ok()?
        }
        crate::events::RoomEvent::MessagesRead {
            room_id,
            user_id,
            updated,
            message_ids,
            since,
        } => {
            json!({ "roomId": room_id, "userId": user_id, "updated": updated, "messageIds": message_ids, "since": since })
        }
        crate::events::RoomEvent::ReactionAdded {
            room_id,
            message_id,
            user_id,
            reaction,
        } => {
            json!({ "roomId": room_id, "messageId": message_id, "userId": user_id, "reaction": reaction })
        }
        crate::events::RoomEvent::RoomCreated { room } => {
            json!({ "room": RoomJson::from(room.clone()) })
        }
        crate::events::RoomEvent::MemberLeft { room_id, user_id } => {
            json!({ "roomId": room_id, "userId": user_id })
        }
    };
    Some(
        Event::default()
            .event(event.name())
            .id(logged.seq.to_string())
            .data(data.to_string()),
    )
}
