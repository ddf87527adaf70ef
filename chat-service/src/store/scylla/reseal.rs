//! Re-sealing stored content under the current key (`chat-service reencrypt`): the messages
//! and the denormalised last-message previews of the rooms lists.

use super::*;
use crate::crypto::ContentCipher;

/// What a pass over the CQL store found and rewrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResealCounts {
    pub scanned: u64,
    pub resealed: u64,
    /// Content that no configured key opens: left as it is (and logged).
    pub unreadable: u64,
}

impl CqlBackfill<'_> {
    /// Every message of `messages_by_room` not sealed with the current key, sealed again with
    /// it (a full scan, paged). Content never changes after a send, so the rewrite is stamped
    /// now: it wins over any older copy of the same content (a backfill's, a replay's).
    pub async fn reseal_messages(&self, cipher: &ContentCipher) -> StoreResult<ResealCounts> {
        let ks = &self.keyspace;
        let update = self
            .store
            .session
            .prepare(format!(
                "UPDATE {ks}.messages_by_room USING TIMESTAMP ? SET content = ? WHERE room_id = ? AND message_id = ?"
            ))
            .await
            .map_err(classify_prepare)?;
        let mut stream = self
            .store
            .session
            .query_iter(
                format!("SELECT room_id, message_id, content FROM {ks}.messages_by_room"),
                &[],
            )
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .rows_stream::<(Uuid, CqlTimeuuid, Option<Vec<u8>>)>()
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut counts = ResealCounts::default();
        while let Some(row) = stream.next().await {
            let (room, id, content) = row.map_err(|e| StoreError::Unavailable(e.to_string()))?;
            counts.scanned += 1;
            let Some(content) = content.filter(|c| cipher.is_stale(c)) else {
                continue;
            };
            match cipher.reseal(RoomId(room), message_id(id), &content) {
                Ok(sealed) => {
                    self.store
                        .exec(&update, (micros(Utc::now()), sealed, room, id))
                        .await?;
                    counts.resealed += 1;
                }
                Err(e) => {
                    tracing::warn!(%room, message = %Uuid::from(id), error = %e, "message content not resealed");
                    counts.unreadable += 1;
                }
            }
        }
        Ok(counts)
    }

    /// The rooms lists' last-message previews, the same way. Each rewrite is stamped one
    /// microsecond after the preview it replaces, so a newer last message (stamped with its own,
    /// later time) still wins.
    pub async fn reseal_previews(&self, cipher: &ContentCipher) -> StoreResult<ResealCounts> {
        let ks = &self.keyspace;
        let update = self
            .store
            .session
            .prepare(format!(
                "UPDATE {ks}.rooms_by_user USING TIMESTAMP ? SET last_message_content = ? WHERE user_id = ? AND room_id = ?"
            ))
            .await
            .map_err(classify_prepare)?;
        type Row = (i32, Uuid, Option<CqlTimeuuid>, Option<Vec<u8>>, Option<i64>);
        let mut stream = self
            .store
            .session
            .query_iter(
                format!(
                    "SELECT user_id, room_id, last_message_id, last_message_content, WRITETIME(last_message_content) FROM {ks}.rooms_by_user"
                ),
                &[],
            )
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
            .rows_stream::<Row>()
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut counts = ResealCounts::default();
        while let Some(row) = stream.next().await {
            let (user, room, last, content, written) =
                row.map_err(|e| StoreError::Unavailable(e.to_string()))?;
            counts.scanned += 1;
            let (Some(last), Some(content), Some(written)) = (last, content, written) else {
                continue;
            };
            if !cipher.is_stale(&content) {
                continue;
            }
            match cipher.reseal(RoomId(room), message_id(last), &content) {
                Ok(sealed) => {
                    self.store
                        .exec(&update, (written + 1, sealed, user, room))
                        .await?;
                    counts.resealed += 1;
                }
                Err(e) => {
                    tracing::warn!(user, %room, error = %e, "last-message preview not resealed");
                    counts.unreadable += 1;
                }
            }
        }
        Ok(counts)
    }
}
