//! `chat-service reencrypt`: after a key rotation, every stored message content not sealed with
//! the current key (`CHAT_ENCRYPTION_KEY`) is opened with the key it names (one of
//! `CHAT_ENCRYPTION_KEYS_PREVIOUS`) and sealed again with the current one, in the legacy
//! PostgreSQL store and, when given, the CQL store (messages and the rooms lists' previews).
//! Idempotent and safe while the service runs: content never changes after a send, PostgreSQL
//! rows are rewritten only if they still hold what was read, and a second run finds nothing
//! to do. Once it reports nothing stale, the previous keys can be removed.

use std::fmt;

use uuid::Uuid;

use crate::crypto::ContentCipher;
use crate::ids::{MessageId, RoomId};
use crate::store::StoreError;
use crate::store::postgres::{PgStore, classify};
use crate::store::scylla::{CqlBackfill, ResealCounts};

/// Rows read per PostgreSQL page.
const PAGE: i64 = 500;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReencryptReport {
    pub postgres: ResealCounts,
    pub cql_messages: Option<ResealCounts>,
    pub cql_previews: Option<ResealCounts>,
}

impl ReencryptReport {
    /// Content no configured key opens, anywhere (left as it is).
    pub fn unreadable(&self) -> u64 {
        self.postgres.unreadable
            + self.cql_messages.map_or(0, |c| c.unreadable)
            + self.cql_previews.map_or(0, |c| c.unreadable)
    }
}

impl fmt::Display for ReencryptReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = |f: &mut fmt::Formatter<'_>, what: &str, c: &ResealCounts| {
            writeln!(
                f,
                "  {what:<22} scanned {:>10}  resealed {:>10}  unreadable {:>6}",
                c.scanned, c.resealed, c.unreadable
            )
        };
        writeln!(f, "reencrypt:")?;
        line(f, "postgres messages", &self.postgres)?;
        if let Some(c) = &self.cql_messages {
            line(f, "cql messages", c)?;
        }
        if let Some(c) = &self.cql_previews {
            line(f, "cql room previews", c)?;
        }
        Ok(())
    }
}

/// The legacy store's messages, resealed page by page (keyset on the id).
pub async fn reseal_postgres(
    pg: &PgStore,
    cipher: &ContentCipher,
) -> Result<ResealCounts, StoreError> {
    let mut counts = ResealCounts::default();
    let mut after = Uuid::nil();
    loop {
        let rows: Vec<(Uuid, Uuid, Vec<u8>)> = sqlx::query_as(
            "select id, room_id, content from room_message where id > $1 order by id limit $2",
        )
        .bind(after)
        .bind(PAGE)
        .fetch_all(pg.pool())
        .await
        .map_err(classify)?;
        let Some(last) = rows.last() else {
            return Ok(counts);
        };
        after = last.0;
        for (id, room, content) in rows {
            counts.scanned += 1;
            if !cipher.is_stale(&content) {
                continue;
            }
            match cipher.reseal(RoomId(room), MessageId(id), &content) {
                Ok(sealed) => {
                    // Only if the row still holds what was read (a concurrent run may have
                    // resealed it first).
                    let done = sqlx::query(
                        "update room_message set content = $3 where id = $1 and content = $2",
                    )
                    .bind(id)
                    .bind(&content)
                    .bind(sealed)
                    .execute(pg.pool())
                    .await
                    .map_err(classify)?;
                    counts.resealed += done.rows_affected();
                }
                Err(e) => {
                    tracing::warn!(%room, message = %id, error = %e, "message content not resealed");
                    counts.unreadable += 1;
                }
            }
        }
    }
}

/// Both stores (the CQL one when given).
pub async fn run(
    pg: &PgStore,
    cql: Option<&CqlBackfill<'_>>,
    cipher: &ContentCipher,
) -> Result<ReencryptReport, StoreError> {
    let postgres = reseal_postgres(pg, cipher).await?;
    let (cql_messages, cql_previews) = match cql {
        Some(cql) => (
            Some(cql.reseal_messages(cipher).await?),
            Some(cql.reseal_previews(cipher).await?),
        ),
        None => (None, None),
    };
    Ok(ReencryptReport {
        postgres,
        cql_messages,
        cql_previews,
    })
}
