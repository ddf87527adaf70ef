//! A small HTTP client of the chat API (the load client, the benchmark and the tests use it).
//! It mints its own tokens with the service's JWT secret, so it is a test and operations tool,
//! not something to hand to end users.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::auth::Authenticator;
use crate::ids::{MessageId, RoomId, UserId};

const TOKEN_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{method}: HTTP {status} {code}: {message}")]
    Status {
        method: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{method}: {source}")]
    Transport {
        method: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method}: unexpected response: {detail}")]
    Unexpected { method: String, detail: String },
}

#[derive(Clone, Debug)]
pub struct ChatClient {
    http: reqwest::Client,
    base_url: String,
    auth: Authenticator,
}

impl ChatClient {
    /// `base_url` like `http://127.0.0.1:8080`.
    pub fn new(base_url: &str, jwt_secret: &[u8]) -> Self {
        ChatClient {
            http: reqwest::Client::new(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            auth: Authenticator::new(jwt_secret),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn token(&self, user: UserId) -> String {
        self.auth.issue(user, TOKEN_TTL)
    }

    pub fn method_url(&self, method: &str) -> String {
        format!("{}/chat.v1.ChatService/{method}", self.base_url)
    }

    /// A request to `method` with `user`'s token and `X-User-ID`.
    pub fn request(&self, user: UserId, method: &str) -> reqwest::RequestBuilder {
        self.http
            .post(self.method_url(method))
            .bearer_auth(self.token(user))
            .header("x-user-id", user.to_string())
    }

    /// Status and JSON body (`Null` if the body is not JSON), whatever the status.
    pub async fn raw(
        &self,
        user: UserId,
        method: &str,
        body: &Value,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let response = self.request(user, method).json(body).send().await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// The JSON reply of a successful call; any other status is a [`CallError::Status`].
    pub async fn call(&self, user: UserId, method: &str, body: &Value) -> Result<Value, CallError> {
        let (status, reply) =
            self.raw(user, method, body)
                .await
                .map_err(|source| CallError::Transport {
                    method: method.to_owned(),
                    source,
                })?;
        if status.is_success() {
            return Ok(reply);
        }
        let text = |key: &str| {
            reply
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Err(CallError::Status {
            method: method.to_owned(),
            status: status.as_u16(),
            code: text("code"),
            message: text("message"),
        })
    }

    pub async fn create_room(
        &self,
        user: UserId,
        name: &str,
        room_type: &str,
        participants: &[UserId],
    ) -> Result<RoomId, CallError> {
        let reply = self
            .call(
                user,
                "CreateRoom",
                &json!({ "name": name, "type": room_type, "participants": participants }),
            )
            .await?;
        parse_id(&reply["room"]["id"], "CreateRoom").map(RoomId)
    }

    pub async fn send_message(
        &self,
        user: UserId,
        room: RoomId,
        content: &str,
    ) -> Result<MessageId, CallError> {
        let reply = self
            .call(
                user,
                "SendMessage",
                &json!({ "roomId": room, "content": content, "type": "user_message" }),
            )
            .await?;
        parse_id(&reply["message"]["id"], "SendMessage").map(MessageId)
    }

    /// One page of history: the message ids, newest first, and the next cursor.
    pub async fn history(
        &self,
        user: UserId,
        room: RoomId,
        limit: u32,
        before: Option<MessageId>,
    ) -> Result<(Vec<Value>, Option<MessageId>), CallError> {
        let reply = self
            .call(
                user,
                "GetMessageHistory",
                &json!({ "id": room, "limit": limit, "before": before }),
            )
            .await?;
        let items = reply["items"].as_array().cloned().unwrap_or_default();
        let cursor = match &reply["pagination"]["nextCursor"] {
            Value::Null => None,
            other => Some(MessageId(parse_id(other, "GetMessageHistory")?)),
        };
        Ok((items, cursor))
    }

    pub async fn rooms(&self, user: UserId, page: u32, limit: u32) -> Result<Value, CallError> {
        self.call(user, "GetRooms", &json!({ "page": page, "limit": limit }))
            .await
    }
}

fn parse_id(value: &Value, method: &str) -> Result<uuid::Uuid, CallError> {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CallError::Unexpected {
            method: method.to_owned(),
            detail: format!("expected a UUID, got {value}"),
        })
}
