//! One dual write, from its outbox record to the record's settlement.

use super::*;

/// How often a write waiting for its room's queued writes looks again.
const CATCH_UP_POLL: Duration = Duration::from_millis(50);

/// Why a secondary write was not made directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deferral {
    /// The secondary is down (cached health).
    Down,
    /// The room has earlier entries for the secondary waiting in the outbox.
    BehindQueue,
}

impl Deferral {
    fn outcome(self) -> DualWriteOutcome {
        match self {
            Deferral::Down => DualWriteOutcome::Skipped,
            Deferral::BehindQueue => DualWriteOutcome::Queued,
        }
    }

    fn reason(self, side: Side) -> String {
        match self {
            Deferral::Down => format!("skipped: {side} store down"),
            Deferral::BehindQueue => "queued behind earlier outbox entries of the room".to_owned(),
        }
    }
}

/// Whether a write must look for its room's writes queued in the other store's outbox: unless
/// that outbox was counted empty (`depth` 0, asked at `asked_at`) after the settle period
/// that followed this instance's last change of primary (`primary_since`). Pure.
pub(super) fn must_look(
    depth: i64,
    asked_at: Option<Instant>,
    primary_since: Instant,
    settle: Duration,
) -> bool {
    match asked_at {
        Some(at) if depth == 0 => at < primary_since + settle,
        _ => true,
    }
}

impl Inner {
    /// Whether `room` still has writes queued for `primary` in the other store's outbox after
    /// waiting up to `secondary_timeout` for them: writes made while `other` was primary
    /// (before a cut-over, or before a rollback from CutOver), in flight or not yet replayed. A
    /// write made on `primary` before them would land out of order: a read marker or reaction on
    /// a message the primary does not hold yet would be acknowledged and lost when the message
    /// arrives. A write in flight settles within `secondary_timeout`; a queued one is replayed
    /// when due (the replayer is woken). Not knowing (the other store down or its outbox
    /// unreadable) counts as no: the primary must keep serving when the other store is away.
    pub(super) async fn catching_up(
        self: &Arc<Self>,
        primary: Side,
        other: Side,
        room: RoomId,
    ) -> bool {
        if !self.may_hold_queued_writes(primary, other) {
            return false;
        }
        let start = Instant::now();
        loop {
            if !self.is_up(other) {
                return false;
            }
            let look = self.outboxes[side_index(other)].has_entries(primary, room, Entries::Any);
            match tokio::time::timeout(self.options.secondary_timeout, look).await {
                Ok(Ok(false)) => return false,
                Ok(Err(e)) => {
                    tracing::debug!(%room, store = %other, error = %e, "outbox not readable; not waiting for it");
                    return false;
                }
                Err(_) => {
                    tracing::debug!(%room, store = %other, "outbox look timed out; not waiting for it");
                    return false;
                }
                Ok(Ok(true)) => {}
            }
            if start.elapsed() + CATCH_UP_POLL >= self.options.secondary_timeout {
                return true;
            }
            self.wake.notify_one();
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
    }

    /// Whether `other`'s outbox may hold writes for `primary` (see
    /// [`RouterOptions::switch_settle`]); also notes a change of primary.
    fn may_hold_queued_writes(&self, primary: Side, other: Side) -> bool {
        let now = Instant::now();
        let since = {
            let mut seen = self
                .primary_seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if seen.0 != primary {
                *seen = (primary, now);
            }
            seen.1
        };
        let i = side_index(other);
        let asked_at = *self.depth_asked_at[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        must_look(
            self.last_depth[i].load(Ordering::Relaxed),
            asked_at,
            since,
            self.options.switch_settle,
        )
    }

    /// One dual write, from its outbox record to the record's settlement. The caller is answered
    /// through `answer` as soon as the outcome is known (after the primary, with `sync` also the
    /// secondary); what follows (the `async` secondary write, the record's update) runs on.
    pub(super) async fn dual_write(
        self: Arc<Self>,
        primary: Side,
        side: Side,
        mode: DualWrite,
        mut op: WriteOp,
        answer: oneshot::Sender<StoreResult<Applied>>,
    ) {
        let log = &self.outboxes[side_index(primary)];
        if let WriteOp::React {
            message,
            room: room @ None,
            ..
        } = &mut op
        {
            // The ordering key, from the store that has the message (the secondary, while the
            // message's own copy is still on its way to the primary).
            *room = match self.store(primary).message_room(*message).await {
                Ok(room) => Some(room),
                Err(_) => self.store(side).message_room(*message).await.ok(),
            };
        }
        if let Some(room) = op.room()
            && self.catching_up(primary, side, room).await
        {
            let _ = answer.send(Err(StoreError::Unavailable(format!(
                "room {room} is catching up: writes made while the {side} store was primary are still on their way to the {primary} store; retry shortly"
            ))));
            return;
        }
        let secondary_up = self.is_up(side);
        // A failing check counts as "queued": the replayer then makes the write, in order.
        let behind_queue = match op.room() {
            Some(room) => log
                .has_entries(side, room, Entries::Failed)
                .await
                .unwrap_or(true),
            None => false,
        };
        let deferral = if !secondary_up {
            Some(Deferral::Down)
        } else if behind_queue {
            Some(Deferral::BehindQueue)
        } else {
            None
        };
        // Legacy-primary sends record in their own transaction; everything else records first.
        let record = if primary == Side::Legacy && op.new_message().is_some() {
            None
        } else {
            match log
                .enqueue(&NewEntry {
                    target: side,
                    op: op.clone(),
                    attempts: 0,
                    delay: self.options.replay.inline_grace,
                    last_error: None,
                })
                .await
            {
                Ok(entry) => Some(entry),
                Err(e) => {
                    let _ = answer.send(Err(StoreError::Unavailable(format!(
                        "cannot record the write in the {primary} store's outbox before making it: {e}"
                    ))));
                    return;
                }
            }
        };
        let direct_sync = mode == DualWrite::Sync && deferral.is_none();
        let (first, second) = if direct_sync {
            let secondary = self.store(side).clone();
            let (first, second) = tokio::join!(
                self.primary_write(primary, side, &op, record),
                self.secondary_write(secondary.as_ref(), &op)
            );
            (first, Some(second))
        } else {
            (self.primary_write(primary, side, &op, record).await, None)
        };
        let (applied, entry) = match first {
            Ok(done) => done,
            Err(e) => {
                if matches!(second, Some(Ok(_))) {
                    tracing::warn!(op = op.name(), store = %side, error = %e, "primary write failed after the secondary accepted it");
                }
                let _ = answer.send(Err(e));
                // The write did not happen: its record must not be replayed.
                if let Some(entry) = record
                    && let Err(e) = log.complete(entry).await
                {
                    tracing::warn!(?entry, error = %e, "record of a failed write not deleted; its replay may add the write to the secondary");
                }
                return;
            }
        };
        let _ = answer.send(Ok(applied));
        if let Some(result) = second {
            self.settle(log, side, &op, entry, result, Duration::ZERO)
                .await;
            return;
        }
        if let Some(deferral) = deferral {
            self.metrics.dual_write(side, deferral.outcome());
            // Due now; the replayer makes it in the room's order.
            if let Err(e) = log
                .retry_later(entry, 0, Duration::ZERO, &deferral.reason(side))
                .await
            {
                tracing::warn!(?entry, error = %e, "outbox record not made due; it is replayed after the grace period");
            }
            self.wake.notify_one();
            return;
        }
        let start = Instant::now();
        let secondary = self.store(side).clone();
        let result = self.secondary_write(secondary.as_ref(), &op).await;
        self.settle(log, side, &op, entry, result, start.elapsed())
            .await;
    }

    /// The primary write. With legacy PostgreSQL primary, a send without a `record` commits its
    /// outbox entry for `secondary` in the same transaction; otherwise the record exists already.
    pub(super) async fn primary_write(
        &self,
        primary: Side,
        secondary: Side,
        op: &WriteOp,
        record: Option<EntryRef>,
    ) -> StoreResult<(Applied, EntryRef)> {
        let message = match (record, primary, op.new_message()) {
            (Some(entry), _, _) => {
                return Ok((op.apply(self.store(primary).as_ref()).await?, entry));
            }
            (None, Side::Legacy, Some(message)) => message,
            (None, ..) => {
                return Err(StoreError::Internal(format!(
                    "{} on {primary} primary without an outbox record",
                    op.name()
                )));
            }
        };
        let entry = NewEntry {
            target: secondary,
            op: op.clone(),
            attempts: 0,
            delay: self.options.replay.inline_grace,
            last_error: None,
        };
        let start = Instant::now();
        let result = self
            .legacy_pg
            .insert_message_with_outbox(message, &entry)
            .await;
        let success = !matches!(
            result,
            Err(StoreError::Unavailable(_) | StoreError::Internal(_))
        );
        self.metrics.database_operation(
            self.legacy_pg.database(),
            "insert_message",
            success,
            start.elapsed(),
        );
        let (stored, id) = result?;
        Ok((Applied::Message(stored), EntryRef::Pg(id)))
    }

    pub(super) async fn secondary_write(
        &self,
        store: &dyn ChatStore,
        op: &WriteOp,
    ) -> StoreResult<Applied> {
        match tokio::time::timeout(self.options.secondary_timeout, op.apply_on_secondary(store))
            .await
        {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {:?}",
                self.options.secondary_timeout
            ))),
        }
    }

    /// Records the secondary write's outcome on its outbox record: deleted when it landed, due
    /// again after a backoff when it failed.
    pub(super) async fn settle(
        &self,
        log: &OutboxLog,
        side: Side,
        op: &WriteOp,
        entry: EntryRef,
        result: StoreResult<Applied>,
        lag: Duration,
    ) {
        let settlement = op.settlement(&result);
        if matches!(settlement, Settlement::Failed(_))
            && matches!(result, Err(StoreError::Unavailable(_)))
        {
            self.mark_down(side);
        }
        // The replayer's rule, for the entry's first attempt: nothing spent before it, written
        // just now.
        let step = next_step(
            &settlement,
            0,
            Duration::ZERO,
            &self.options.replay,
            rand::random::<f64>(),
        );
        let (spent, delay) = match step {
            NextStep::Delete => {
                self.metrics.dual_write(side, DualWriteOutcome::Success);
                self.metrics.dual_write_lag(op.name(), lag);
                if let Err(e) = log.complete(entry).await {
                    tracing::warn!(?entry, error = %e, "outbox record not deleted; it will be replayed (idempotent)");
                }
                return;
            }
            NextStep::Retry { attempts, delay } => (attempts, delay),
            // Only with `max_attempts` 1: due at once, so the replayer (which owns the
            // dead-letter table) takes it and buries it on its next failure.
            NextStep::Bury { attempts, .. } => (attempts, Duration::ZERO),
        };
        // Waiting for the backfill is no failure: no attempt spent, no error counted.
        let outcome = match settlement {
            Settlement::AwaitsPrerequisite(_) => DualWriteOutcome::Waiting,
            _ => DualWriteOutcome::Error,
        };
        let error = settlement.error().unwrap_or_default();
        self.metrics.dual_write(side, outcome);
        tracing::debug!(op = op.name(), store = %side, error, "secondary write did not land; left to the outbox");
        let spent = i32::try_from(spent).unwrap_or(i32::MAX);
        if let Err(e) = log.retry_later(entry, spent, delay, error).await {
            tracing::warn!(?entry, error = %e, "outbox record not updated; it is replayed after the grace period");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_look_is_spared_only_by_an_empty_count_taken_after_the_settle_period() {
        let since = Instant::now();
        let settle = Duration::from_secs(60);
        let after = since + settle + Duration::from_secs(1);
        let during = since + Duration::from_secs(30);
        // (depth, asked at) -> must look
        let cases = [
            (0, None, true),
            (0, Some(during), true),
            (0, Some(since + settle), false),
            (0, Some(after), false),
            (3, Some(after), true),
            (-1, Some(after), true),
        ];
        for (depth, asked_at, expected) in cases {
            assert_eq!(
                must_look(depth, asked_at, since, settle),
                expected,
                "depth {depth}, asked {:?} after the switch",
                asked_at.map(|a| a - since)
            );
        }
    }
}
