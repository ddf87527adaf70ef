//! History for the live stack: a legacy PostgreSQL that already holds years of chat before the
//! Migration starts — rooms with members, messages over a spread of past dates, reactions and
//! read markers — written through chat-service's own PostgreSQL store (so content is sealed and
//! every index and counter is what the service itself would have written).
//!
//! Seeding takes seconds, so it is done once per test binary into a template database; each
//! scenario gets a copy (`CREATE DATABASE … TEMPLATE …`, a file copy).

use std::sync::OnceLock;

use chat_service::crypto::{ContentCipher, EncryptionKey};
use chat_service::ids::{MessageId, RoomId, UserId};
use chat_service::store::postgres::PgStore;
use chat_service::store::{ChatStore, NewMessage, NewRoom, ReadMarker, RoomType};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use futures::{StreamExt, stream};
use rand::Rng;
use rand::seq::IndexedRandom;
use uuid::{Timestamp, Uuid};

use ficus_testkit::{HarnessError, Postgres};

/// How much history, and whose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistorySpec {
    pub rooms: u32,
    pub messages_per_room: u32,
    /// Messages are spread over this many past days.
    pub days: u32,
    /// History users are `first_user .. first_user + users`.
    pub first_user: i32,
    pub users: u32,
}

impl HistorySpec {
    /// From `FICUS_LIVE_ROOMS` / `FICUS_LIVE_MESSAGES_PER_ROOM`, else 200 rooms × 50 messages
    /// (10,000 messages: a backfill of a few seconds).
    pub fn from_env() -> HistorySpec {
        HistorySpec::from_env_or(200, 50)
    }

    /// The demo's history (`ficus-live --quick`): 100 rooms × 40 messages unless the variables
    /// say otherwise; the backfill still takes seconds.
    pub fn quick() -> HistorySpec {
        HistorySpec::from_env_or(100, 40)
    }

    fn from_env_or(rooms: u32, messages_per_room: u32) -> HistorySpec {
        let var = |name: &str, default: u32| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        HistorySpec {
            rooms: var("FICUS_LIVE_ROOMS", rooms),
            messages_per_room: var("FICUS_LIVE_MESSAGES_PER_ROOM", messages_per_room),
            days: 3 * 365,
            first_user: 1,
            users: 400,
        }
    }

    pub fn messages(&self) -> u64 {
        u64::from(self.rooms) * u64::from(self.messages_per_room)
    }
}

/// What was seeded, for the report.
#[derive(Clone, Debug, Default)]
pub struct Seeded {
    pub rooms: u64,
    pub messages: u64,
    pub reactions: u64,
    pub read_markers: u64,
}

/// A database of `pg` holding `spec`'s history under `key`: a copy of a template seeded once per
/// test binary (per spec and key).
pub async fn history_database(
    pg: &Postgres,
    spec: HistorySpec,
    key: &EncryptionKey,
    name: &str,
) -> Result<(String, Seeded), HarnessError> {
    static TEMPLATE: OnceLock<tokio::sync::Mutex<Option<(String, Seeded)>>> = OnceLock::new();
    let cell = TEMPLATE.get_or_init(|| tokio::sync::Mutex::new(None));
    let mut template = cell.lock().await;
    if template.is_none() {
        let url = pg.create_database("live_history").await?;
        let seeded = seed(&url, spec, key).await?;
        *template = Some((url, seeded));
    }
    let (template_url, seeded) = template.clone().unwrap_or_default();
    let template_db = template_url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let copy = ficus_testkit::unique_name(name, '_', 48, "db");
    let admin = sqlx::PgPool::connect(&pg.database_url("postgres"))
        .await
        .map_err(|e| HarnessError::setup("history database", e))?;
    // Both names are made here (unique_name and create_database), never user input.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        r#"CREATE DATABASE "{copy}" TEMPLATE "{template_db}""#
    )))
    .execute(&admin)
    .await
    .map_err(|e| HarnessError::setup("history database", e))?;
    admin.close().await;
    Ok((pg.database_url(&copy), seeded))
}

/// Writes `spec`'s history into the (empty) database at `url`.
async fn seed(url: &str, spec: HistorySpec, key: &EncryptionKey) -> Result<Seeded, HarnessError> {
    let store = PgStore::connect(url, 16)
        .await
        .map_err(|e| HarnessError::setup("seeding history", e))?;
    store
        .migrate()
        .await
        .map_err(|e| HarnessError::setup("applying the chat schema", e))?;
    let cipher = ContentCipher::new(key);
    let now = Utc::now();
    let users: Vec<UserId> = (0..spec.users as i32)
        .map(|i| UserId(spec.first_user + i))
        .collect();
    let node = *b"\x01seed!";
    let rooms: Vec<(NewRoom, Vec<NewMessage>)> = (0..spec.rooms)
        .map(|r| {
            let mut rng = rand::rng();
            let created_at = now - ChronoDuration::days(i64::from(spec.days))
                + ChronoDuration::hours(i64::from(r));
            let size = rng.random_range(2..=5);
            let members: Vec<UserId> = users.choose_multiple(&mut rng, size).copied().collect();
            let room = NewRoom {
                id: RoomId(Uuid::new_v4()),
                name: format!("history room {r}"),
                room_type: RoomType::Group,
                created_by: members[0],
                participants: members.clone(),
                created_at,
            };
            let span = (now - created_at).num_seconds().max(1);
            let mut messages: Vec<NewMessage> = (0..spec.messages_per_room)
                .map(|m| {
                    let at = created_at
                        + ChronoDuration::seconds(rng.random_range(0..span) - 3600)
                            .max(ChronoDuration::seconds(1));
                    let id = message_id_at(at, &node, m);
                    let sender = *members.choose(&mut rng).unwrap_or(&members[0]);
                    let text = format!("history {r}/{m}: {}", words(&mut rng));
                    NewMessage {
                        id,
                        room_id: room.id,
                        sender_id: sender,
                        content: cipher.seal(room.id, id, &text).unwrap_or_default(),
                        message_type: "user_message".into(),
                        created_at: id.created_at().unwrap_or(at),
                    }
                })
                .collect();
            messages.sort_by_key(|m| m.created_at);
            (room, messages)
        })
        .collect();
    let seeded = stream::iter(rooms)
        .map(|(room, messages)| {
            let store = &store;
            async move { seed_room(store, room, messages).await }
        })
        .buffer_unordered(16)
        .fold(Ok(Seeded::default()), |acc, room| async move {
            let (mut acc, room) = (acc?, room?);
            acc.rooms += 1;
            acc.messages += room.messages;
            acc.reactions += room.reactions;
            acc.read_markers += room.read_markers;
            Ok::<_, HarnessError>(acc)
        })
        .await?;
    tracing::info!(?seeded, "history seeded");
    Ok(seeded)
}

async fn seed_room(
    store: &PgStore,
    room: NewRoom,
    messages: Vec<NewMessage>,
) -> Result<Seeded, HarnessError> {
    let err = |e| HarnessError::setup("seeding history", e);
    let members = room.participants.clone();
    let id = room.id;
    let created = room.created_at;
    store.create_room(room).await.map_err(err)?;
    let mut seeded = Seeded::default();
    let mut last = created;
    for (i, m) in messages.into_iter().enumerate() {
        let (mid, at) = (m.id, m.created_at);
        store.insert_message(m).await.map_err(err)?;
        seeded.messages += 1;
        last = at;
        if i % 7 == 0 {
            let who = members[i % members.len()];
            store.react(mid, who, "👍".into(), at).await.map_err(err)?;
            seeded.reactions += 1;
        }
    }
    // Every member but the first has read up to some point of the history.
    for member in members.iter().skip(1) {
        // One chunk per call, as a client marking a long history read would.
        let mut since = Some(created);
        while let Some(from) = since {
            since =
                chat_service::store::mark_read(store, id, *member, ReadMarker::Since(from), last)
                    .await
                    .map_err(err)?
                    .next_since;
        }
        seeded.read_markers += 1;
    }
    Ok(seeded)
}

/// A version-1 id whose time is `at` (ids carry their message's creation time).
fn message_id_at(at: DateTime<Utc>, node: &[u8; 6], counter: u32) -> MessageId {
    let ts = Timestamp::from_unix(
        uuid::NoContext,
        at.timestamp() as u64,
        at.timestamp_subsec_micros() * 1000,
    );
    let mut node = *node;
    node[4..].copy_from_slice(&(counter as u16).to_be_bytes());
    MessageId(Uuid::new_v1(ts, &node))
}

fn words(rng: &mut impl Rng) -> String {
    const WORDS: &[&str] = &[
        "hola", "meeting", "tomorrow", "deploy", "lunch", "ok", "ticket", "review", "done",
        "thanks",
    ];
    (0..rng.random_range(3..12))
        .map(|_| *WORDS.choose(rng).unwrap_or(&"ok"))
        .collect::<Vec<_>>()
        .join(" ")
}
