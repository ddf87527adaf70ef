//! The second look at a shadow read that differed: re-read after `shadow_recheck_after`, not
//! counted while the outbox still holds a write for one of its rooms.

use super::*;

impl Inner {
    /// Whether the outbox holds a write for `target` in a room either answer shows (the
    /// outbox in the other store's database: where the writes of its primary wait). A failed
    /// check answers yes: not counting is the safe side of a measurement.
    pub(super) async fn write_pending<T: Shadowed>(
        &self,
        target: Side,
        a: &Result<T, String>,
        b: &Result<T, String>,
    ) -> bool {
        let mut rooms: Vec<RoomId> = [a, b]
            .into_iter()
            .flat_map(|r| r.as_ref().map(Shadowed::rooms).unwrap_or_default())
            .collect();
        rooms.sort_unstable_by_key(|r| r.0);
        rooms.dedup();
        let log = &self.outboxes[side_index(target.other())];
        for room in rooms.into_iter().take(MAX_PENDING_CHECKS) {
            if log
                .has_entries(target, room, Entries::Any)
                .await
                .unwrap_or(true)
            {
                return true;
            }
        }
        false
    }

    /// Counts one shadow read. A difference is checked again before it counts: after
    /// `shadow_recheck_after` both stores are read once more and compared within the same
    /// scope, so a write still on its way to one store (an `async` secondary write, a `sync`
    /// one that raced the read, a membership change) is not drift, and one that persists is,
    /// unless the outbox still holds a write for the shadowed store in one of the rooms.
    pub(super) async fn compare_shadow<T, F>(
        &self,
        first: Compared,
        serve: Side,
        shadow: Side,
        call: Arc<F>,
        scope: Scope,
    ) where
        T: Shadowed,
        F: Fn(Arc<dyn ChatStore>) -> StoreFuture<'static, T> + Send + Sync + 'static,
    {
        let verdict = match first {
            Compared::Differs(_) => {
                let Ok(_permit) = self.rechecks.try_acquire() else {
                    self.metrics.shadow_read(&Compared::Skipped);
                    return;
                };
                tokio::time::sleep(self.options.shadow_recheck_after).await;
                let (a, b) = tokio::join!(
                    call(self.store(serve).clone()),
                    call(self.store(shadow).clone())
                );
                let (a, b) = match (found(a), found(b)) {
                    (Some(a), Some(b)) => (a, b),
                    _ => {
                        self.metrics.shadow_read_error();
                        return;
                    }
                };
                match compare_results(&a, &b, &scope) {
                    Compared::Differs(kinds) => {
                        if self.write_pending(shadow, &a, &b).await {
                            // Still on its way (the outbox holds it): lag, not drift.
                            Compared::Skipped
                        } else {
                            Compared::Differs(kinds)
                        }
                    }
                    verdict => verdict,
                }
            }
            verdict => verdict,
        };
        if let Compared::Differs(kinds) = &verdict {
            let read = std::any::type_name::<T>();
            tracing::debug!(serve = %serve, shadow = %shadow, read, ?kinds, "shadow read differs");
        }
        self.metrics.shadow_read(&verdict);
    }
}
