//! Shared test set-up: a chat-service instance in-process on a free port, on its own database of
//! the harness's PostgreSQL, and small HTTP helpers.
#![allow(dead_code)]

use std::time::Duration;

use chat_service::client::ChatClient;
use chat_service::config::{Limits, ServeConfig};
use chat_service::crypto::EncryptionKey;
use chat_service::flags::{FlagSource, Flags};
use chat_service::ids::UserId;
use chat_service::serve::{self, ServeError};
use ficus_e2e::Postgres;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const JWT_SECRET: &[u8] = b"chat-service-integration-test-secret-0123456789";

pub fn init() {
    ficus_e2e::init();
}

/// A config for a fresh database of `pg` (named after `test`).
pub async fn config(pg: &Postgres, test: &str) -> ServeConfig {
    let database_url = pg.create_database(test).await.expect("create database");
    config_for(database_url, EncryptionKey::random())
}

pub fn config_for(database_url: String, encryption_key: EncryptionKey) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        database_url,
        database_max_connections: 10,
        jwt_secret: JWT_SECRET.to_vec(),
        encryption_key,
        nats_url: None,
        flags: FlagSource::Static(Flags::default()),
        limits: Limits::default(),
    }
}

/// A running instance; stopped (gracefully) by [`TestService::stop`] or when dropped.
pub struct TestService {
    pub config: ServeConfig,
    pub client: ChatClient,
    pub base_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

pub async fn start(config: ServeConfig) -> TestService {
    let server = serve::bind(config.clone()).await.expect("chat-service starts");
    let base_url = format!("http://{}", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    TestService { client: ChatClient::new(&base_url, JWT_SECRET), base_url, config, stop: Some(stop), task: Some(task) }
}

impl TestService {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task).await.expect("graceful shutdown in time").expect("server task").expect("server ran");
        }
    }

    pub async fn call(&self, user: i32, method: &str, body: Value) -> Value {
        self.client.call(UserId(user), method, &body).await.unwrap_or_else(|e| panic!("{method} {body}: {e}"))
    }

    /// Status and body of any call.
    pub async fn raw(&self, user: i32, method: &str, body: Value) -> (u16, Value) {
        let (status, body) = self.client.raw(UserId(user), method, &body).await.expect("HTTP");
        (status.as_u16(), body)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self.client.http().get(format!("{}{path}", self.base_url)).send().await.expect("HTTP");
        (response.status().as_u16(), response.text().await.expect("body"))
    }

    pub async fn create_group(&self, owner: i32, participants: &[i32]) -> String {
        let reply = self.call(owner, "CreateRoom", serde_json::json!({ "name": "Team", "type": "group", "participants": participants })).await;
        reply["room"]["id"].as_str().expect("room id").to_owned()
    }

    pub async fn send(&self, user: i32, room: &str, content: &str) -> Value {
        let reply = self.call(user, "SendMessage", serde_json::json!({ "roomId": room, "content": content, "type": "user_message" })).await;
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
    assert_eq!((*got, body["code"].as_str()), (status, Some(code)), "body: {body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "error without a message: {body}");
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: Value,
}

/// Reads Server-Sent Events from a streaming response.
pub struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    pub async fn open(service: &TestService, user: i32) -> SseReader {
        let response = service.client.request(UserId(user), "StreamMessages").send().await.expect("stream request");
        assert_eq!(response.status().as_u16(), 200, "StreamMessages status");
        SseReader { response, buffer: String::new() }
    }

    /// The next event (keep-alive comments skipped), or `None` when the stream ends.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut data) = (String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if event.is_empty() && data.is_empty() {
                    continue;
                }
                return Some(SseEvent { event, data: serde_json::from_str(&data).unwrap_or(Value::String(data)) });
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
