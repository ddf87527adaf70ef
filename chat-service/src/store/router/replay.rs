//! The outbox replayer: woken by `LISTEN/NOTIFY`, by this instance's writes and by its timer.

use super::*;

impl Inner {
    /// Relays the outbox trigger's notifications of one PostgreSQL database to the replayer;
    /// reconnects after a failure (the replayer's timer covers the gap).
    pub(super) async fn listen(self: Arc<Self>, pool: sqlx::PgPool) {
        loop {
            let listener = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                listener.listen(NOTIFY_CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            match listener.await {
                Ok(mut listener) => loop {
                    match listener.recv().await {
                        Ok(_) => self.wake.notify_one(),
                        Err(e) => {
                            tracing::debug!(error = %e, "outbox notifications interrupted");
                            break;
                        }
                    }
                },
                Err(e) => tracing::debug!(error = %e, "cannot listen for outbox notifications"),
            }
            tokio::time::sleep(
                self.options
                    .replay
                    .poll_interval
                    .min(Duration::from_secs(1)),
            )
            .await;
        }
    }

    pub(super) async fn replay_loop(self: Arc<Self>) {
        loop {
            let up: Vec<(Side, Arc<dyn ChatStore>)> = [Side::Legacy, Side::New]
                .into_iter()
                .filter(|s| self.is_up(*s))
                .map(|s| (s, self.store(s).clone()))
                .collect();
            let mut settled = 0;
            let mut next_due: Option<Duration> = None;
            let sum = |a: &[AtomicI64; 2]| a.iter().map(|v| v.load(Ordering::Relaxed)).sum::<i64>();
            for (log, side) in self.outboxes.iter().zip([Side::Legacy, Side::New]) {
                // An outbox lives in its store's database: while that is down, keep its last
                // figures instead of waiting on it.
                if !up.iter().any(|(s, _)| *s == side) {
                    continue;
                }
                let i = side_index(side);
                match log
                    .replay_round(&up, &self.options.replay, &self.metrics)
                    .await
                {
                    Ok(round) => {
                        settled += round.settled;
                        next_due = match (next_due, round.next_due) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }
                    Err(e) => tracing::debug!(error = %e, "outbox replay round failed"),
                }
                let asked = Instant::now();
                if let Ok(depth) = log.depth().await {
                    self.last_depth[i].store(depth, Ordering::Relaxed);
                    *self.depth_asked_at[i]
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(asked);
                }
                if let Ok(dead) = log.dead_letters().await {
                    self.last_dead[i].store(dead, Ordering::Relaxed);
                }
                self.metrics.retry_queue_size.set(sum(&self.last_depth));
                self.metrics.outbox_dead_letters.set(sum(&self.last_dead));
            }
            if settled > 0 {
                continue;
            }
            let pause = next_due.unwrap_or(self.options.replay.poll_interval).clamp(
                MIN_REPLAY_PAUSE,
                self.options.replay.poll_interval.max(MIN_REPLAY_PAUSE),
            );
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}
