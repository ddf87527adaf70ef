//! Room events (new message, read receipts, reactions, membership), their fan-out to the
//! `StreamMessages` streams of every instance, and their log, from which a stream that
//! reconnects gets what it missed (SSE `Last-Event-ID`).
//!
//! Every event has a place in the log, its sequence (the SSE `id`). Every stream of an instance
//! reads one in-process `tokio::sync::broadcast` channel of logged events. Where they come from
//! is the [`EventBus`]'s transport:
//! * **local** (no `NATS_URL`): `publish` numbers the event, keeps it in a ring of the last
//!   [`RING_CAPACITY`] and sends it into the channel; one instance only.
//! * **NATS JetStream**: `publish` stores the event in the JetStream stream `CHAT_EVENTS` (its
//!   subject `chat.room.<room id>`; the sequence is the stream's). Each instance follows the
//!   stream with an ordered consumer and relays what arrives (its own events included) into its
//!   channel, so an event published by any instance reaches streams on all of them, and a
//!   stream reconnecting to any instance is replayed from the stream (kept for
//!   `--events-retention`).
//!
//! Message events carry the *sealed* content: plaintext never crosses NATS, and each stream
//! opens the content for its (member) reader.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
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
/// Events the local transport keeps for streams that reconnect.
pub const RING_CAPACITY: usize = 4096;
/// Events one reconnecting stream is replayed at most; older ones are reported as missed.
pub const MAX_REPLAY: u64 = 10_000;
/// How long a replay waits for the next event of the log before giving up on the rest.
const REPLAY_WAIT: Duration = Duration::from_secs(5);
const SUBJECT_PREFIX: &str = "chat.room";
/// The JetStream stream holding the room events.
pub const STREAM_NAME: &str = "CHAT_EVENTS";

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

/// An event and its place in the log: the SSE `id` a client sends back as `Last-Event-ID`.
#[derive(Debug, PartialEq)]
pub struct Logged {
    pub seq: u64,
    pub event: RoomEvent,
}

/// What a reconnecting stream gets from the log.
#[derive(Debug, Default)]
pub struct Replay {
    /// The events after the client's last one, in order.
    pub events: Vec<Arc<Logged>>,
    /// Events after it the log no longer holds (aged out, or past [`MAX_REPLAY`]): the client
    /// re-reads history instead.
    pub missed: u64,
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
    #[error(
        "cannot set up the JetStream stream {STREAM_NAME} on NATS (is JetStream enabled? nats-server -js): {reason}"
    )]
    Stream { reason: String },
    #[error("cannot follow the JetStream stream {STREAM_NAME}: {reason}")]
    Subscribe { reason: String },
    #[error("cannot publish to {subject} on NATS: {reason}")]
    Publish { subject: String, reason: String },
    #[error("cannot read the room events after #{after} from the log: {reason}")]
    Replay { after: u64, reason: String },
    #[error("cannot encode event: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The local transport's log: the last events and the next sequence.
#[derive(Default)]
struct Ring {
    events: VecDeque<Arc<Logged>>,
    last: u64,
}

enum Transport {
    Local(Mutex<Ring>),
    JetStream(Box<JetStreamLog>),
}

struct JetStreamLog {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    relay: JoinHandle<()>,
}

pub struct EventBus {
    local: broadcast::Sender<Arc<Logged>>,
    transport: Transport,
}

impl Drop for EventBus {
    fn drop(&mut self) {
        if let Transport::JetStream(log) = &self.transport {
            log.relay.abort();
        }
    }
}

impl EventBus {
    /// In-process fan-out only.
    pub fn local() -> Self {
        EventBus {
            local: broadcast::channel(CHANNEL_CAPACITY).0,
            transport: Transport::Local(Mutex::new(Ring::default())),
        }
    }

    /// Fan-out and log through NATS JetStream: creates the stream if missing (events kept for
    /// `retention`) and follows it from its end. The consumer exists on the server before this
    /// returns, so events published anywhere afterwards reach this instance.
    pub async fn nats(url: &str, retention: Duration) -> Result<Self, EventBusError> {
        let client = async_nats::ConnectOptions::new()
            .name("chat-service")
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|source| EventBusError::Connect {
                url: url.to_owned(),
                source,
            })?;
        let js = jetstream::new(client.clone());
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: STREAM_NAME.to_owned(),
                subjects: vec![all_rooms()],
                max_age: retention,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| EventBusError::Stream {
                reason: e.to_string(),
            })?;
        let consumer = stream
            .create_consumer(every_room(&client, DeliverPolicy::New))
            .await
            .map_err(|e| EventBusError::Subscribe {
                reason: e.to_string(),
            })?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| EventBusError::Subscribe {
                reason: e.to_string(),
            })?;
        let local = broadcast::channel(CHANNEL_CAPACITY).0;
        let tx = local.clone();
        // The ordered consumer recreates itself after a gap or a reconnect, resuming after the
        // last event it delivered; this ends only with the bus.
        let relay = tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(e) => {
                        warn!(error = %e, "room events: the JetStream consumer failed; it resumes by itself");
                        continue;
                    }
                };
                match decode(&message) {
                    // No receivers (no open streams) is fine.
                    Ok(logged) => drop(tx.send(Arc::new(logged))),
                    Err(e) => {
                        warn!(subject = %message.subject, error = %e, "dropping an undecodable room event")
                    }
                }
            }
            debug!("JetStream event consumer ended");
        });
        Ok(EventBus {
            local,
            transport: Transport::JetStream(Box::new(JetStreamLog {
                client,
                js,
                stream,
                relay,
            })),
        })
    }

    pub fn transport(&self) -> &'static str {
        match self.transport {
            Transport::Local(_) => "local",
            Transport::JetStream(_) => "nats-jetstream",
        }
    }

    /// Logs `event` and delivers it to the streams of every instance; returns its sequence.
    /// Best effort for the caller: the change it describes is already stored.
    pub async fn publish(&self, event: RoomEvent) -> Result<u64, EventBusError> {
        match &self.transport {
            Transport::Local(ring) => {
                let mut ring = ring.lock().unwrap_or_else(|p| p.into_inner());
                ring.last += 1;
                let logged = Arc::new(Logged {
                    seq: ring.last,
                    event,
                });
                ring.events.push_back(logged.clone());
                if ring.events.len() > RING_CAPACITY {
                    ring.events.pop_front();
                }
                // Sent under the lock: the channel sees the ring's order.
                let _ = self.local.send(logged.clone());
                Ok(logged.seq)
            }
            Transport::JetStream(log) => {
                let js = &log.js;
                let subject = subject(event.room_id());
                let payload = serde_json::to_vec(&event)?;
                let publish_error = |reason: String| EventBusError::Publish {
                    subject: subject.clone(),
                    reason,
                };
                let ack = js
                    .publish(subject.clone(), payload.into())
                    .await
                    .map_err(|e| publish_error(e.to_string()))?
                    .await
                    .map_err(|e| publish_error(e.to_string()))?;
                Ok(ack.sequence)
            }
        }
    }

    /// Every event from now on (subscribe before reading state the events update, so nothing
    /// falls in between).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Logged>> {
        self.local.subscribe()
    }

    /// The sequence of the last event logged (0 for none).
    pub async fn last_seq(&self) -> Result<u64, EventBusError> {
        match &self.transport {
            Transport::Local(ring) => Ok(ring.lock().unwrap_or_else(|p| p.into_inner()).last),
            Transport::JetStream(log) => log
                .stream
                .get_info()
                .await
                .map(|info| info.state.last_sequence)
                .map_err(|e| EventBusError::Replay {
                    after: 0,
                    reason: e.to_string(),
                }),
        }
    }

    /// The events after `after` up to `upto` (both sequences), at most [`MAX_REPLAY`]: the
    /// newest ones, the rest counted as missed.
    pub async fn replay(&self, after: u64, upto: u64) -> Result<Replay, EventBusError> {
        if upto <= after {
            return Ok(Replay::default());
        }
        let from = (after + 1).max((upto + 1).saturating_sub(MAX_REPLAY));
        match &self.transport {
            Transport::Local(ring) => {
                let ring = ring.lock().unwrap_or_else(|p| p.into_inner());
                let events: Vec<Arc<Logged>> = ring
                    .events
                    .iter()
                    .filter(|e| e.seq >= from && e.seq <= upto)
                    .cloned()
                    .collect();
                let first = events.first().map(|e| e.seq).unwrap_or(upto + 1);
                Ok(Replay {
                    missed: first - (after + 1),
                    events,
                })
            }
            Transport::JetStream(log) => {
                let (client, stream) = (&log.client, &log.stream);
                let replay_error = |reason: String| EventBusError::Replay { after, reason };
                let info = stream
                    .get_info()
                    .await
                    .map_err(|e| replay_error(e.to_string()))?;
                let from = from.max(info.state.first_sequence);
                let mut replay = Replay {
                    events: Vec::new(),
                    missed: from - (after + 1),
                };
                if from > upto {
                    replay.missed = upto - after;
                    return Ok(replay);
                }
                let consumer = stream
                    .create_consumer(every_room(
                        client,
                        DeliverPolicy::ByStartSequence {
                            start_sequence: from,
                        },
                    ))
                    .await
                    .map_err(|e| replay_error(e.to_string()))?;
                let mut messages = consumer
                    .messages()
                    .await
                    .map_err(|e| replay_error(e.to_string()))?;
                loop {
                    let next = tokio::time::timeout(REPLAY_WAIT, messages.next()).await;
                    let message = match next {
                        Ok(Some(Ok(message))) => message,
                        Ok(Some(Err(e))) => return Err(replay_error(e.to_string())),
                        Ok(None) | Err(_) => {
                            return Err(replay_error(format!(
                                "the log stopped delivering before #{upto}"
                            )));
                        }
                    };
                    let logged = decode(&message).map_err(replay_error)?;
                    let seq = logged.seq;
                    if seq > upto {
                        break;
                    }
                    replay.events.push(Arc::new(logged));
                    if seq == upto {
                        break;
                    }
                }
                Ok(replay)
            }
        }
    }
}

/// The subjects of every room's events.
fn all_rooms() -> String {
    format!("{SUBJECT_PREFIX}.*")
}

/// An ordered consumer of every room's events, from `policy` on, delivered to this client.
fn every_room(client: &async_nats::Client, policy: DeliverPolicy) -> OrderedConfig {
    OrderedConfig {
        deliver_subject: client.new_inbox(),
        filter_subject: all_rooms(),
        deliver_policy: policy,
        ..Default::default()
    }
}

/// A logged event from a JetStream message.
fn decode(message: &jetstream::Message) -> Result<Logged, String> {
    let seq = message.info().map_err(|e| e.to_string())?.stream_sequence;
    let event = serde_json::from_slice::<RoomEvent>(&message.payload).map_err(|e| e.to_string())?;
    Ok(Logged { seq, event })
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
