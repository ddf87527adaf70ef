//! JSON shapes of the API (camelCase, as the contract fixes them). Requests live beside their
//! handlers; the shapes several methods and the event stream share live here.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::api::error::ApiError;
use crate::crypto::ContentCipher;
use crate::ids::{MessageId, RoomId, UserId};
use crate::store::{RoomType, RoomView, StoredMessage};

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomJson {
    pub id: RoomId,
    pub name: String,
    #[serde(rename = "type")]
    pub room_type: RoomType,
    pub participants: Vec<UserId>,
    pub created_at: DateTime<Utc>,
    /// Extra (not in the original contract): latest activity and the caller's pin.
    pub last_message_at: Option<DateTime<Utc>>,
    pub is_pinned: bool,
    /// Messages of others the caller has not marked read since joining.
    pub unread_count: u64,
}

impl From<RoomView> for RoomJson {
    fn from(r: RoomView) -> Self {
        RoomJson {
            id: r.id,
            name: r.name,
            room_type: r.room_type,
            participants: r.participants,
            created_at: r.created_at,
            last_message_at: r.last_message_at,
            is_pinned: r.is_pinned,
            unread_count: r.unread_count,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageJson {
    pub id: MessageId,
    pub room_id: RoomId,
    pub sender_id: UserId,
    pub content: String,
    #[serde(rename = "type")]
    pub message_type: String,
    pub created_at: DateTime<Utc>,
}

impl MessageJson {
    /// The message with its content decrypted (for a member).
    pub fn open(message: StoredMessage, cipher: &ContentCipher) -> Result<Self, ApiError> {
        let content = cipher.open(message.room_id, message.id, &message.content).map_err(|e| {
            tracing::error!(message = %message.id, room = %message.room_id, "cannot decrypt a stored message");
            ApiError::from(e)
        })?;
        Ok(Self::with_content(message, content))
    }

    pub fn with_content(message: StoredMessage, content: String) -> Self {
        MessageJson {
            id: message.id,
            room_id: message.room_id,
            sender_id: message.sender_id,
            content,
            message_type: message.message_type,
            created_at: message.created_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RoomReply {
    pub room: RoomJson,
}

#[derive(Debug, Serialize)]
pub struct SuccessReply {
    pub success: bool,
}

impl SuccessReply {
    pub const OK: SuccessReply = SuccessReply { success: true };
}
