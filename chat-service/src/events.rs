//! Room events (new message, read receipts, reactions, membership) and their fan-out to the
//! `StreamMessages` streams of every instance.
//!
//! Every stream of an instance reads one in-process `tokio::sync::broadcast` channel. Where the
//! events come from is the [`EventBus`]'s transport:
//! * **local** (no `NATS_URL`): `publish` sends straight into the channel; one instance only.
//! * **NATS**: `publish` sends to the room's subject `chat.room.<room id>`; each instance
//!   subscribes once to `chat.room.*` and relays what arrives (its own events included) into its
//!   channel, so an event published by any instance reaches streams on all of them.
//!
//! Message events carry the *sealed* content: plaintext never crosses NATS, and each stream
//! opens the content for its (member) reader.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::ids::{MessageId, RoomId, UserId};
use crate::store::{RoomView, StoredMessage};

/// Events buffered per instance before a slow stream starts missing some (it is told how many).
const CHANNEL_CAPACITY: usize = 4096;
const SUBJECT_PREFIX: &str = "chat.room";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RoomEvent {
    MessageCreated {
        message: StoredMessage,
    },
    MessagesRead {
        room_id: RoomId,
        user_id: UserId,
        updated: u64,
        message_ids: Option<Vec<MessageId>>,
        since: Option<DateTime<Utc>>,
    },
    ReactionAdded {
        room_id: RoomId,
        message_id: MessageId,
        user_id: UserId,
        reaction: String,
    },
    RoomCreated {
        room: RoomView,
    },
    MemberLeft {
        room_id: RoomId,
        user_id: UserId,
    },
}

impl RoomEvent {
    pub fn room_id(&self) -> RoomId {
        match self {
            RoomEvent::MessageCreated { message } => message.room_id,
            RoomEvent::RoomCreated { room } => room.id,
            RoomEvent::MessagesRead { room_id, .. }
            | RoomEvent::ReactionAdded { room_id, .. }
            | RoomEvent::MemberLeft { room_id, .. } => *room_id,
        }
    }

    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            RoomEvent::MessageCreated { .. } => "message_created",
            RoomEvent::MessagesRead { .. } => "messages_read",
            RoomEvent::ReactionAdded { .. } => "reaction_added",
            RoomEvent::RoomCreated { .. } => "room_created",
            RoomEvent::MemberLeft { .. } => "member_left",
        }
    }
}

pub fn subject(room: RoomId) -> String {
    format!("{SUBJECT_PREFIX}.{room}")
}

#[derive(Debug, thiserror::Error)]
pub enum EventBusError {
    #[error("cannot connect to NATS at {url} (NATS_URL): {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot subscribe to {subject} on NATS: {reason}")]
    Subscribe { subject: String, reason: String },
    #[error("cannot publish to {subject} on NATS: {reason}")]
    Publish { subject: String, reason: String },
    #[error("cannot encode event: {0}")]
    Encode(#[from] serde_json::Error),
}

enum Transport {
    Local,
    Nats {
        client: async_nats::Client,
        relay: JoinHandle<()>,
    },
}

pub struct EventBus {
    local: broadcast::Sender<Arc<RoomEvent>>,
    transport: Transport,
}

impl Drop for EventBus {
    fn drop(&mut self) {
        if let Transport::Nats { relay, .. } = &self.transport {
            relay.abort();
        }
    }
}

impl EventBus {
    /// In-process fan-out only.
    pub fn local() -> Self {
        EventBus {
            local: broadcast::channel(CHANNEL_CAPACITY).0,
            transport: Transport::Local,
        }
    }

    /// Fan-out through NATS. The subscription is confirmed by the server before this returns, so
    /// events published anywhere afterwards reach this instance.
    pub async fn nats(url: &str) -> Result<Self, EventBusError> {
        let client = async_nats::ConnectOptions::new()
            .name("chat-service")
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|source| EventBusError::Connect {
                url: url.to_owned(),
                source,
            })?;
        let wildcard = format!("{SUBJECT_PREFIX}.*");
        let subscribe_error = |reason: String| EventBusError::Subscribe {
            subject: wildcard.clone(),
            reason,
        };
        let mut subscriber = client
            .subscribe(wildcard.clone())
            .await
            .map_err(|e| subscribe_error(e.to_string()))?;
        client
            .flush()
            .await
            .map_err(|e| subscribe_error(e.to_string()))?;
        let local = broadcast::channel(CHANNEL_CAPACITY).0;
        let tx = local.clone();
        // async-nats reconnects and re-subscribes on its own; this ends only with the bus.
        let relay = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                match serde_json::from_slice::<RoomEvent>(&message.payload) {
                    // No receivers (no open streams) is fine.
                    Ok(event) => drop(tx.send(Arc::new(event))),
                    Err(e) => {
                        warn!(subject = %message.subject, error = %e, "dropping an undecodable room event")
                    }
                }
            }
            debug!("NATS event subscription ended");
        });
        Ok(EventBus {
            local,
            transport: Transport::Nats { client, relay },
        })
    }

    pub fn transport(&self) -> &'static str {
        match self.transport {
            Transport::Local => "local",
            Transport::Nats { .. } => "nats",
        }
    }

    /// Delivers `event` to the streams of every instance (best effort: the change it describes is
    /// already stored; a stream that missed it can re-read history).
    pub async fn publish(&self, event: RoomEvent) -> Result<(), EventBusError> {
        match &self.transport {
            Transport::Local => {
                let _ = self.local.send(Arc::new(event));
                Ok(())
            }
            Transport::Nats { client, .. } => {
                let subject = subject(event.room_id());
                let payload = serde_json::to_vec(&event)?;
                client
                    .publish(subject.clone(), payload.into())
                    .await
                    .map_err(|e| EventBusError::Publish {
                        subject,
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// Every event from now on (subscribe before reading state the events update, so nothing
    /// falls in between).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RoomEvent>> {
        self.local.subscribe()
    }
}

/// Which events one user's stream gets: those of the rooms they are in, following their joins
/// (a `room_created` that lists them) and leaves (their own `member_left`, delivered once).
#[derive(Clone, Debug)]
pub struct StreamFilter {
    user: UserId,
    rooms: HashSet<RoomId>,
}

impl StreamFilter {
    pub fn new(user: UserId, rooms: impl IntoIterator<Item = RoomId>) -> Self {
        StreamFilter {
            user,
            rooms: rooms.into_iter().collect(),
        }
    }

    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    pub fn admit(&mut self, event: &RoomEvent) -> bool {
        match event {
            RoomEvent::RoomCreated { room } if room.participants.contains(&self.user) => {
                self.rooms.insert(room.id);
                true
            }
            RoomEvent::MemberLeft { room_id, user_id } if *user_id == self.user => {
                self.rooms.remove(room_id)
            }
            other => self.rooms.contains(&other.room_id()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MessageIdGenerator;
    use crate::store::RoomType;

    fn room(id: RoomId, participants: &[i32]) -> RoomView {
        RoomView {
            id,
            name: "r".into(),
            room_type: RoomType::Group,
            participants: participants.iter().copied().map(UserId).collect(),
            created_at: Utc::now(),
            last_message_at: None,
            is_pinned: false,
            unread_count: 0,
        }
    }

    fn message(room: RoomId) -> RoomEvent {
        let id = MessageIdGenerator::default().next();
        RoomEvent::MessageCreated {
            message: StoredMessage {
                id,
                room_id: room,
                sender_id: UserId(2),
                content: vec![1, 2, 3],
                message_type: "user_message".into(),
                created_at: Utc::now(),
            },
        }
    }

    #[test]
    fn streams_see_their_rooms_only() {
        let (mine, other) = (RoomId::random(), RoomId::random());
        let mut f = StreamFilter::new(UserId(1), [mine]);
        assert!(f.admit(&message(mine)));
        assert!(!f.admit(&message(other)));
        assert!(!f.admit(&RoomEvent::ReactionAdded {
            room_id: other,
            message_id: MessageIdGenerator::default().next(),
            user_id: UserId(2),
            reaction: "👍".into()
        }));
    }

    #[test]
    fn streams_follow_joins_and_leaves() {
        let (new, foreign) = (RoomId::random(), RoomId::random());
        let mut f = StreamFilter::new(UserId(1), []);
        assert!(
            !f.admit(&RoomEvent::RoomCreated {
                room: room(foreign, &[2, 3])
            }),
            "not a participant"
        );
        assert!(f.admit(&RoomEvent::RoomCreated {
            room: room(new, &[1, 2])
        }));
        assert!(f.admit(&message(new)));
        assert!(
            f.admit(&RoomEvent::MemberLeft {
                room_id: new,
                user_id: UserId(2)
            }),
            "others leaving is news"
        );
        assert!(
            f.admit(&RoomEvent::MemberLeft {
                room_id: new,
                user_id: UserId(1)
            }),
            "own leave delivered once"
        );
        assert!(!f.admit(&message(new)), "nothing after leaving");
        assert!(!f.admit(&RoomEvent::MemberLeft {
            room_id: new,
            user_id: UserId(1)
        }));
        assert_eq!(f.rooms(), 0);
    }

    #[test]
    fn events_round_trip_as_json_with_sealed_content() {
        let event = message(RoomId::random());
        let text = serde_json::to_string(&event).expect("encode");
        assert!(
            text.contains(r#""kind":"message_created""#) && text.contains(r#""content":"AQID""#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<RoomEvent>(&text).expect("decode"),
            event
        );
        assert_eq!(
            subject(event.room_id()),
            format!("chat.room.{}", event.room_id())
        );
    }
}
