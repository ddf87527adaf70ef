//! The write path: the primary insert and, in shadow mode, the copy to the other store
//! ([`crate::routing::write_plan`] decides which).
//!
//! * **sync**: the copy runs in parallel with the primary insert (the request waits for the
//!   slower of the two, not their sum). The primary's transaction commits only after the copy
//!   answered: if the copy failed or timed out, the transaction also queues it in the outbox,
//!   so a copy is either made or durably queued when the client gets its 201. If the primary
//!   insert fails, a copy that landed is deleted again before the error is returned, so a
//!   client's retry never races a late delete.
//! * **async**: the primary transaction inserts and queues the copy (due after a grace period),
//!   the request returns, and a background copy deletes the entry when it lands; the replayer
//!   takes over when it does not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ficus_flags::Side;
use tracing::{error, warn};

use crate::flags::FlagWatcher;
use crate::metrics::{CopyOutcome, Metrics, WritePath};
use crate::model::DeviceEvent;
use crate::outbox;
use crate::routing::{CopyMode, write_plan};
use crate::store::{self, StoreError, StoreResult, Stores};

/// Write path settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WriteConfig {
    /// Longest an inline copy may take before it is left to the outbox.
    pub copy_timeout: Duration,
    /// Async mode: how long the background copy has before the replayer may take the entry.
    pub async_grace: Duration,
}

impl Default for WriteConfig {
    fn default() -> Self {
        WriteConfig {
            copy_timeout: Duration::from_millis(500),
            async_grace: Duration::from_secs(2),
        }
    }
}

#[derive(Clone)]
pub struct Writer {
    pub stores: Stores,
    pub flags: FlagWatcher,
    pub metrics: Arc<Metrics>,
    pub config: WriteConfig,
}

impl Writer {
    /// Writes `events` as the flags in force say; `Ok` means the primary store holds them and
    /// the copy (if any) is made or queued durably.
    pub async fn write(&self, events: &[DeviceEvent]) -> StoreResult<()> {
        let plan = write_plan(&self.flags.current().values());
        match plan.copy {
            None => self.primary_only(plan.primary, events).await,
            Some((target, CopyMode::Sync)) => self.sync(plan.primary, target, events).await,
            Some((target, CopyMode::Async)) => self.async_copy(plan.primary, target, events).await,
        }
    }

    async fn primary_only(&self, primary: Side, events: &[DeviceEvent]) -> StoreResult<()> {
        let start = Instant::now();
        let mut conn = self
            .stores
            .pool(primary)
            .acquire()
            .await
            .map_err(StoreError::from_sqlx(primary))?;
        store::insert(&mut conn, primary, events).await?;
        self.metrics
            .store_write(primary, WritePath::Primary, events.len(), start.elapsed());
        Ok(())
    }

    /// The inline copy, bounded by the copy timeout.
    async fn copy(&self, target: Side, events: &[DeviceEvent]) -> StoreResult<Instant> {
        let start = Instant::now();
        let work = async {
            let mut conn = self
                .stores
                .pool(target)
                .acquire()
                .await
                .map_err(StoreError::from_sqlx(target))?;
            store::insert(&mut conn, target, events).await
        };
        match tokio::time::timeout(self.config.copy_timeout, work).await {
            Ok(Ok(_)) => {
                self.metrics
                    .store_write(target, WritePath::Copy, events.len(), start.elapsed());
                Ok(Instant::now())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Timeout {
                store: target,
                timeout: self.config.copy_timeout,
            }),
        }
    }

    async fn sync(&self, primary: Side, target: Side, events: &[DeviceEvent]) -> StoreResult<()> {
        let pool = self.stores.pool(primary);
        let start = Instant::now();
        let primary_work = async {
            let mut tx = pool.begin().await.map_err(StoreError::from_sqlx(primary))?;
            store::insert(&mut tx, primary, events).await?;
            Ok::<_, StoreError>(tx)
        };
        let (copied, tx) = tokio::join!(self.copy(target, events), primary_work);
        let committed = async {
            let mut tx = tx?;
            if let Err(e) = &copied {
                outbox::enqueue(
                    &mut tx,
                    primary,
                    target,
                    events,
                    Duration::ZERO,
                    Some(&e.to_string()),
                )
                .await?;
            }
            tx.commit().await.map_err(StoreError::from_sqlx(primary))
        }
        .await;
        match committed {
            Ok(()) => {
                let done = Instant::now();
                self.metrics.store_write(
                    primary,
                    WritePath::Primary,
                    events.len(),
                    start.elapsed(),
                );
                match copied {
                    Ok(copy_done) => {
                        self.metrics.copy(target, CopyOutcome::Success);
                        self.metrics
                            .copy_lag(copy_done.saturating_duration_since(done));
                    }
                    Err(e) => {
                        warn!(%target, events = events.len(), "shadow copy failed, queued in the outbox: {e}");
                        self.metrics.copy(target, CopyOutcome::Error);
                    }
                }
                Ok(())
            }
            Err(e) => {
                if copied.is_ok() {
                    // The client will retry with the same ids; the other store must not keep
                    // events the primary refused.
                    let ids: Vec<_> = events.iter().map(|e| e.id).collect();
                    if let Err(undo) = store::delete(self.stores.pool(target), target, &ids).await {
                        error!(%target, events = ids.len(), "primary write failed and its copy could not be removed (the comparison will count them as extra): {undo}");
                    }
                }
                Err(e)
            }
        }
    }

    async fn async_copy(
        &self,
        primary: Side,
        target: Side,
        events: &[DeviceEvent],
    ) -> StoreResult<()> {
        let pool = self.stores.pool(primary);
        let start = Instant::now();
        let mut tx = pool.begin().await.map_err(StoreError::from_sqlx(primary))?;
        store::insert(&mut tx, primary, events).await?;
        let entry = outbox::enqueue(
            &mut tx,
            primary,
            target,
            events,
            self.config.async_grace,
            None,
        )
        .await?;
        tx.commit().await.map_err(StoreError::from_sqlx(primary))?;
        let done = Instant::now();
        self.metrics
            .store_write(primary, WritePath::Primary, events.len(), start.elapsed());
        self.metrics.copy(target, CopyOutcome::Queued);
        let this = self.clone();
        let events = events.to_vec();
        tokio::spawn(async move {
            match this.copy(target, &events).await {
                Ok(copy_done) => {
                    this.metrics
                        .copy_lag(copy_done.saturating_duration_since(done));
                    if let Err(e) = outbox::settle(this.stores.pool(primary), primary, entry).await
                    {
                        // The replayer will copy it again: idempotent, only wasted work.
                        warn!(
                            entry,
                            "copied, but the outbox entry could not be removed: {e}"
                        );
                    }
                }
                Err(e) => {
                    warn!(%target, entry, "background copy failed, left to the outbox replayer: {e}")
                }
            }
        });
        Ok(())
    }
}
