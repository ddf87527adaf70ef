//! Shared test set-up: a chat-service instance in-process on a free port, on its own database of
//! the harness's PostgreSQL (or its own keyspace of the harness's shared CQL node, see
//! [`Backend`]), and small HTTP helpers.
#![allow(dead_code)]

pub mod router;

use std::time::Duration;

use chat_service::client::ChatClient;
use chat_service::config::{Limits, ServeConfig, StoreChoice};
use chat_service::crypto::EncryptionKey;
use chat_service::flags::{FlagSource, Flags};
use chat_service::ids::UserId;
use chat_service::serve::{self, ServeError};
use chat_service::store::scylla::CqlConfig;
use ficus_testkit::{Cassandra, HarnessError, Postgres};
use serde_json::Value;
use sqlx::postgres::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const JWT_SECRET: &[u8] = b"chat-service-integration-test-secret-0123456789";

pub fn init() {
    ficus_testkit::init();
}

/// A flag document with every field given.
pub fn flag_doc(
    generation: i64,
    write_primary: chat_service::flags::Side,
    dual_write: chat_service::flags::DualWrite,
    shadow: u8,
    split: u8,
) -> Flags {
    let percent = |p| chat_service::flags::Percent::new(p).expect("a percent");
    Flags {
        generation,
        values: chat_service::flags::FlagValues {
            write_primary,
            dual_write,
            shadow_read_percent: percent(shadow),
            read_split_percent: percent(split),
            shadow_compare_from: chat_service::flags::ShadowCompare::All,
        },
    }
}

/// A config for a fresh database of `pg` (named after `test`).
pub async fn config(pg: &Postgres, test: &str) -> ServeConfig {
    let database_url = pg.create_database(test).await.expect("create database");
    config_for(database_url, EncryptionKey::random())
}

pub fn config_for(database_url: String, encryption_key: EncryptionKey) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        store: StoreChoice::Postgres,
        database_url,
        database_max_connections: 10,
        jwt_secret: JWT_SECRET.to_vec(),
        encryption_key,
        previous_keys: vec![],
        nats_url: None,
        events_retention: std::time::Duration::from_secs(3600),
        cache: None,
        flags: FlagSource::Static(Flags::default()),
        limits: Limits::default(),
    }
}

/// The store a suite runs on: PostgreSQL, or the CQL store on the harness's shared Apache
/// Cassandra node (one JVM per test binary, a keyspace per test).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Cql,
}

/// A config on a fresh database (PostgreSQL) or keyspace (CQL, consistency ONE: one node).
pub async fn backend_config(backend: Backend, test: &str) -> Result<ServeConfig, HarnessError> {
    match backend {
        Backend::Postgres => Ok(config(Postgres::shared()?, test).await),
        Backend::Cql => {
            let cassandra = Cassandra::shared()?;
            let keyspace = cassandra.create_keyspace(test).await?;
            let mut config = config_for(String::new(), EncryptionKey::random());
            config.store = StoreChoice::Scylla(CqlConfig {
                contact_points: vec![cassandra.contact_point()],
                keyspace,
                consistency: scylla::statement::Consistency::One,
                address_map: Default::default(),
            });
            Ok(config)
        }
    }
}

/// Direct access to a test's database, for what the API does not show (or cannot set).
pub enum Db {
    Pg(PgPool),
    Cql {
        session: Box<scylla::client::session::Session>,
        keyspace: String,
    },
}

impl Db {
    pub async fn connect(config: &ServeConfig) -> Db {
        match &config.store {
            // The router's legacy database.
            StoreChoice::Postgres | StoreChoice::Router { .. } => Db::Pg(
                PgPool::connect(&config.database_url)
                    .await
                    .expect("test pool"),
            ),
            StoreChoice::Scylla(cql) => {
                let session = Cassandra::shared()
                    .expect("cassandra")
                    .session()
                    .await
                    .expect("CQL session");
                Db::Cql {
                    session: Box::new(session),
                    keyspace: cql.keyspace.clone(),
                }
            }
        }
    }

    async fn cql<R>(&self, cql: &str, values: impl scylla::serialize::row::SerializeRow) -> Vec<R>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let Db::Cql { session, keyspace } = self else {
            unreachable!("a CQL query on PostgreSQL")
        };
        let cql = cql.replace("{ks}", keyspace);
        let result = session
            .query_unpaged(cql.as_str(), values)
            .await
            .unwrap_or_else(|e| panic!("{cql}: {e}"));
        if !result.is_rows() {
            return vec![];
        }
        let rows = result.into_rows_result().expect("rows");
        rows.rows::<R>()
            .expect("row type")
            .collect::<Result<Vec<R>, _>>()
            .expect("rows")
    }

    /// Whether `user`'s membership of `room` is kept with a `removed_at`.
    pub async fn removed_at_is_set(&self, room: &str, user: i32) -> bool {
        let room: uuid::Uuid = room.parse().expect("uuid");
        match self {
            Db::Pg(pool) => sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
                "select removed_at from room_member where room_id = $1 and user_id = $2",
            )
            .bind(room)
            .bind(user)
            .fetch_one(pool)
            .await
            .expect("row")
            .is_some(),
            Db::Cql { .. } => {
                let rows = self.cql::<(Option<i64>,)>("SELECT removed_at FROM {ks}.participants_by_room WHERE room_id = ? AND user_id = ?", (room, user)).await;
                matches!(rows.as_slice(), [(Some(_),)])
            }
        }
    }

    /// The time of the newest message `user` has read in `room`.
    pub async fn last_read_at(
        &self,
        room: &str,
        user: i32,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let room: uuid::Uuid = room.parse().expect("uuid");
        match self {
            Db::Pg(pool) => sqlx::query_scalar(
                "select last_read_at from room_member where room_id = $1 and user_id = $2",
            )
            .bind(room)
            .bind(user)
            .fetch_one(pool)
            .await
            .expect("row"),
            Db::Cql { .. } => {
                let rows = self.cql::<(Option<scylla::value::CqlTimeuuid>,)>("SELECT last_read_message_id FROM {ks}.participants_by_room WHERE room_id = ? AND user_id = ?", (room, user)).await;
                rows.first()
                    .and_then(|(id,)| *id)
                    .and_then(|id| chat_service::ids::MessageId(id.into()).created_at())
            }
        }
    }

    pub async fn reaction_count(&self, message: &str) -> i64 {
        let message: uuid::Uuid = message.parse().expect("uuid");
        match self {
            Db::Pg(pool) => sqlx::query_scalar(
                "select count(*) from room_message_reaction where message_id = $1",
            )
            .bind(message)
            .fetch_one(pool)
            .await
            .expect("count"),
            Db::Cql { .. } => {
                let id = scylla::value::CqlTimeuuid::from(message);
                self.cql::<(i64,)>(
                    "SELECT count(*) FROM {ks}.reactions_by_message WHERE message_id = ?",
                    (id,),
                )
                .await[0]
                    .0
            }
        }
    }

    /// Every message id of the room in the store's history order (newest first).
    pub async fn message_ids(&self, room: uuid::Uuid) -> Vec<uuid::Uuid> {
        match self {
            Db::Pg(pool) => sqlx::query_scalar(
                "select id from room_message where room_id = $1 order by created_at desc, id desc",
            )
            .bind(room)
            .fetch_all(pool)
            .await
            .expect("ids"),
            Db::Cql { .. } => self
                .cql::<(scylla::value::CqlTimeuuid,)>(
                    "SELECT message_id FROM {ks}.messages_by_room WHERE room_id = ?",
                    (room,),
                )
                .await
                .into_iter()
                .map(|(id,)| id.into())
                .collect(),
        }
    }
}

/// A running instance; stopped (gracefully) by [`TestService::stop`] or when dropped.
pub struct TestService {
    pub config: ServeConfig,
    pub client: ChatClient,
    pub base_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    /// The room cache's Redis, when the service has one ([`start_cached`]).
    pub redis: Option<ficus_testkit::Redis>,
}

/// Starts the service with the room cache on its own Redis (TTL 5 minutes: any staleness a
/// test sees is the cache's invalidation failing, never an expiry hiding it).
pub async fn start_cached(mut config: ServeConfig) -> Result<TestService, HarnessError> {
    let redis = ficus_testkit::Redis::start()?;
    config.cache = Some(chat_service::config::CacheConfig {
        redis_url: redis.url(),
        ttl: Duration::from_secs(300),
    });
    let mut svc = start(config).await;
    svc.redis = Some(redis);
    Ok(svc)
}

pub async fn start(config: ServeConfig) -> TestService {
    let server = serve::bind(config.clone())
        .await
        .expect("chat-service starts");
    let base_url = format!("http://{}", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    TestService {
        client: ChatClient::new(&base_url, JWT_SECRET),
        base_url,
        config,
        stop: Some(stop),
        task: Some(task),
        redis: None,
    }
}

impl TestService {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("graceful shutdown in time")
                .expect("server task")
                .expect("server ran");
        }
    }

    pub async fn call(&self, user: i32, method: &str, body: Value) -> Value {
        self.client
            .call(UserId(user), method, &body)
            .await
            .unwrap_or_else(|e| panic!("{method} {body}: {e}"))
    }

    /// Status and body of any call.
    pub async fn raw(&self, user: i32, method: &str, body: Value) -> (u16, Value) {
        let (status, body) = self
            .client
            .raw(UserId(user), method, &body)
            .await
            .expect("HTTP");
        (status.as_u16(), body)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .http()
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .expect("HTTP");
        (
            response.status().as_u16(),
            response.text().await.expect("body"),
        )
    }

    pub async fn create_group(&self, owner: i32, participants: &[i32]) -> String {
        let reply = self.call(owner, "CreateRoom", serde_json::json!({ "name": "Team", "type": "group", "participants": participants })).await;
        reply["room"]["id"].as_str().expect("room id").to_owned()
    }

    pub async fn send(&self, user: i32, room: &str, content: &str) -> Value {
        let reply = self
            .call(
                user,
                "SendMessage",
                serde_json::json!({ "roomId": room, "content": content, "type": "user_message" }),
            )
            .await;
        reply["message"].clone()
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Asserts a Connect error: the status, the code, and a JSON body with a message.
#[track_caller]
pub fn assert_error(result: &(u16, Value), status: u16, code: &str) {
    let (got, body) = result;
    assert_eq!(
        (*got, body["code"].as_str()),
        (status, Some(code)),
        "body: {body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {body}"
    );
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    /// The `id:` field: the event's place in the event log.
    pub id: Option<String>,
    pub data: Value,
}

/// Reads Server-Sent Events from a streaming response.
pub struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    pub async fn open(service: &TestService, user: i32) -> SseReader {
        Self::resume(service, user, None).await
    }

    /// A stream that reconnects: `Last-Event-ID: after`.
    pub async fn resume(service: &TestService, user: i32, after: Option<&str>) -> SseReader {
        let mut request = service.client.request(UserId(user), "StreamMessages");
        if let Some(after) = after {
            request = request.header("Last-Event-ID", after);
        }
        Self::from_request(request).await
    }

    /// A stream opened by `request` (its auth headers set by the caller).
    pub async fn from_request(request: reqwest::RequestBuilder) -> SseReader {
        let response = request.send().await.expect("stream request");
        assert_eq!(response.status().as_u16(), 200, "StreamMessages status");
        SseReader {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped), or `None` when the stream ends.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut data, mut id) = (String::new(), String::new(), None);
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if event.is_empty() && data.is_empty() {
                    continue;
                }
                return Some(SseEvent {
                    event,
                    id,
                    data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
                });
            }
            let chunk = self.response.chunk().await.ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event named `name`, skipping others; panics after `timeout`.
    pub async fn next_named(&mut self, name: &str, timeout: Duration) -> SseEvent {
        tokio::time::timeout(timeout, async {
            loop {
                match self.next().await {
                    Some(e) if e.event == name => return e,
                    Some(_) => continue,
                    None => panic!("stream ended before a {name} event"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {name} event within {timeout:?}"))
    }
}
