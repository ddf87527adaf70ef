//! The outbox: the durable record of every shadow copy that has not reached its store, kept in
//! the database of the store that was primary when the event was written (`device_outbox` in
//! either database), in the same transaction as the primary insert, so a copy is never lost
//! to a crash, a timeout or the other store being down.
//!
//! An entry is one batch of events (the JSON of [`DeviceEvent`]s), due at once when the inline
//! copy failed, or after a grace period in async mode (the background copy deletes it when it
//! lands first). [`Replayer::round`] claims due entries `FOR UPDATE SKIP LOCKED` (several
//! instances replay at once without taking the same entry), inserts them into the target store
//! (idempotent on the event id), and deletes them; a failure gets `attempts + 1` and a capped
//! exponential backoff with jitter; after `max_attempts` the entry moves to
//! `device_outbox_dead_letter` (the plan's DLQ), where `devices-service outbox redrive` puts it
//! back. Event order does not matter here: every event is its own row.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ficus_flags::Side;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::types::Json;
use tracing::{debug, warn};

use crate::metrics::{CopyOutcome, Metrics, WritePath};
use crate::model::DeviceEvent;
use crate::store::{self, StoreError, StoreResult, Stores};

/// Replay settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReplayConfig {
    pub max_attempts: i32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Time between rounds when nothing was due.
    pub poll_interval: Duration,
    /// Entries claimed per round.
    pub batch: i64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            max_attempts: 10,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            batch: 100,
        }
    }
}

/// Delay before the next attempt of an entry that failed `attempts` (>= 1) times: `base ·
/// 2^(attempts−1)` capped at `cap`, half of it fixed and half scaled by `jitter` in 0..1.
pub fn backoff(attempts: i32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(30);
    let full = base.saturating_mul(1u32 << exp).min(cap);
    let half = full / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// Queues a copy of `events` for `target` on `conn` (the primary's transaction), due after
/// `delay`. Returns the entry's id.
pub async fn enqueue(
    conn: &mut PgConnection,
    primary: Side,
    target: Side,
    events: &[DeviceEvent],
    delay: Duration,
    last_error: Option<&str>,
) -> StoreResult<i64> {
    let n = i32::try_from(events.len()).unwrap_or(i32::MAX);
    sqlx::query_scalar(
        "insert into device_outbox (target, payload, events, next_attempt_at, last_error)
         values ($1, $2, $3, now() + make_interval(secs => $4), $5) returning id",
    )
    .bind(target.as_str())
    .bind(Json(events))
    .bind(n)
    .bind(delay.as_secs_f64())
    .bind(last_error)
    .fetch_one(conn)
    .await
    .map_err(StoreError::from_sqlx(primary))
}

/// Deletes a settled entry (its copy landed).
pub async fn settle(pool: &PgPool, primary: Side, id: i64) -> StoreResult<()> {
    sqlx::query("delete from device_outbox where id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map_err(StoreError::from_sqlx(primary))?;
    Ok(())
}

/// Depth of the outboxes of both databases.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Depth {
    pub pending: i64,
    pub oldest: Option<DateTime<Utc>>,
    pub dead_letters: i64,
}

pub async fn depth(stores: &Stores) -> StoreResult<Depth> {
    let mut d = Depth::default();
    for side in [Side::Legacy, Side::New] {
        let (pending, oldest, dead): (i64, Option<DateTime<Utc>>, i64) = sqlx::query_as(
            "select (select count(*) from device_outbox), (select min(created_at) from device_outbox),
                    (select count(*) from device_outbox_dead_letter)",
        )
        .fetch_one(stores.pool(side))
        .await
        .map_err(StoreError::from_sqlx(side))?;
        d.pending += pending;
        d.dead_letters += dead;
        d.oldest = match (d.oldest, oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(d)
}

/// Moves every dead letter of both databases back to the outbox, due now, attempts reset.
pub async fn redrive(stores: &Stores) -> StoreResult<u64> {
    let mut moved = 0;
    for side in [Side::Legacy, Side::New] {
        let mut tx = stores
            .pool(side)
            .begin()
            .await
            .map_err(StoreError::from_sqlx(side))?;
        let done = sqlx::query(
            "with dead as (delete from device_outbox_dead_letter returning *)
             insert into device_outbox (target, payload, events, attempts, next_attempt_at, created_at, last_error)
             select target, payload, events, 0, now(), created_at, last_error from dead",
        )
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx(side))?;
        tx.commit().await.map_err(StoreError::from_sqlx(side))?;
        moved += done.rows_affected();
    }
    Ok(moved)
}

#[derive(sqlx::FromRow)]
struct Entry {
    id: i64,
    target: String,
    payload: String,
    attempts: i32,
    created_at: DateTime<Utc>,
}

/// Replays the outboxes of both databases.
pub struct Replayer {
    pub stores: Stores,
    pub metrics: std::sync::Arc<Metrics>,
    pub config: ReplayConfig,
}

impl Replayer {
    /// One round over both databases; returns the entries settled (replayed or dead-lettered).
    pub async fn round(&self) -> StoreResult<usize> {
        let mut settled = 0;
        for side in [Side::Legacy, Side::New] {
            settled += self.round_in(side).await?;
        }
        match depth(&self.stores).await {
            Ok(d) => {
                self.metrics.outbox_pending.set(d.pending);
                self.metrics.outbox_dead_letters.set(d.dead_letters);
                let age = d.oldest.map_or(0.0, |t| {
                    (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
                });
                self.metrics.outbox_oldest_seconds.set(age);
            }
            Err(e) => debug!("outbox depth unreadable: {e}"),
        }
        Ok(settled)
    }

    /// Replays the due entries kept in `home`'s database.
    async fn round_in(&self, home: Side) -> StoreResult<usize> {
        let pool = self.stores.pool(home);
        let mut tx = pool.begin().await.map_err(StoreError::from_sqlx(home))?;
        let entries: Vec<Entry> = sqlx::query_as(
            "select id, target, payload::text as payload, attempts, created_at from device_outbox
              where next_attempt_at <= now() order by id limit $1 for update skip locked",
        )
        .bind(self.config.batch)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx(home))?;
        let n = entries.len();
        for e in entries {
            let target = if e.target == "new" {
                Side::New
            } else {
                Side::Legacy
            };
            let events: Result<Vec<DeviceEvent>, _> = serde_json::from_str(&e.payload);
            let result = match &events {
                Ok(events) => self.copy(target, events).await,
                Err(err) => Err(format!("undecodable payload: {err}")),
            };
            let attempts = e.attempts + 1;
            let sql = match (
                &result,
                events.is_err() || attempts >= self.config.max_attempts,
            ) {
                (Ok(()), _) => {
                    self.metrics.copy(target, CopyOutcome::Replayed);
                    self.metrics
                        .copy_lag((Utc::now() - e.created_at).to_std().unwrap_or_default());
                    sqlx::query("delete from device_outbox where id = $1").bind(e.id)
                }
                (Err(err), true) => {
                    warn!(entry = e.id, %target, attempts, "shadow copy given up, moved to the dead-letter table (devices-service outbox redrive): {err}");
                    self.metrics.copy(target, CopyOutcome::DeadLetter);
                    sqlx::query(
                        "with gone as (delete from device_outbox where id = $1 returning *)
                         insert into device_outbox_dead_letter (id, target, payload, events, attempts, created_at, last_error)
                         select id, target, payload, events, $2, created_at, $3 from gone",
                    )
                    .bind(e.id)
                    .bind(attempts)
                    .bind(err.clone())
                }
                (Err(err), false) => {
                    let delay = backoff(
                        attempts,
                        self.config.backoff_base,
                        self.config.backoff_cap,
                        rand::random::<f64>(),
                    );
                    debug!(entry = e.id, %target, attempts, ?delay, "shadow copy failed again: {err}");
                    sqlx::query(
                        "update device_outbox set attempts = $2, last_error = $3,
                                next_attempt_at = now() + make_interval(secs => $4) where id = $1",
                    )
                    .bind(e.id)
                    .bind(attempts)
                    .bind(err.clone())
                    .bind(delay.as_secs_f64())
                }
            };
            sql.execute(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx(home))?;
        }
        tx.commit().await.map_err(StoreError::from_sqlx(home))?;
        Ok(n)
    }

    async fn copy(&self, target: Side, events: &[DeviceEvent]) -> Result<(), String> {
        let start = std::time::Instant::now();
        let mut conn = self
            .stores
            .pool(target)
            .acquire()
            .await
            .map_err(|e| e.to_string())?;
        store::insert(&mut conn, target, events)
            .await
            .map_err(|e| e.to_string())?;
        self.metrics
            .store_write(target, WritePath::Replay, events.len(), start.elapsed());
        Ok(())
    }

    /// Replays until `stop` resolves: a round, then (when nothing was due) the poll interval.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let settled = match self.round().await {
                Ok(n) => n,
                Err(e) => {
                    debug!("outbox round failed (retrying): {e}");
                    0
                }
            };
            if settled > 0 {
                continue;
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_half_fixed() {
        let (base, cap) = (Duration::from_millis(500), Duration::from_secs(60));
        assert_eq!(backoff(1, base, cap, 0.0), Duration::from_millis(250));
        assert_eq!(backoff(1, base, cap, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(3, base, cap, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(40, base, cap, 1.0), cap);
        assert_eq!(backoff(40, base, cap, 0.0), cap / 2);
    }
}
