//! Each store's cached health: a background `ping` at most every `ping_interval`, and a store
//! marked down at once by a write that failed for lack of it.

use super::*;

/// A store's cached health.
pub(super) struct Health {
    up: AtomicBool,
    probing: AtomicBool,
    checked: Mutex<Option<Instant>>,
}

impl Health {
    pub(super) fn new() -> Self {
        Health {
            up: AtomicBool::new(true),
            probing: AtomicBool::new(false),
            checked: Mutex::new(None),
        }
    }
}

impl Inner {
    pub(super) fn store(&self, side: Side) -> &Arc<dyn ChatStore> {
        match side {
            Side::Legacy => &self.legacy,
            Side::New => &self.new,
        }
    }

    pub(super) fn is_up(self: &Arc<Self>, side: Side) -> bool {
        let health = &self.health[side_index(side)];
        let stale = {
            let checked = health.checked.lock().unwrap_or_else(|e| e.into_inner());
            checked.is_none_or(|t| t.elapsed() >= self.options.ping_interval)
        };
        if stale && !health.probing.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move {
                let store = this.store(side).clone();
                let up = matches!(
                    tokio::time::timeout(this.options.ping_timeout, store.ping()).await,
                    Ok(Ok(()))
                );
                let health = &this.health[side_index(side)];
                *health.checked.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                if health.up.swap(up, Ordering::AcqRel) != up {
                    tracing::warn!(store = %side, up, "store health changed");
                }
                health.probing.store(false, Ordering::Release);
            });
        }
        health.up.load(Ordering::Acquire)
    }

    /// A write failed for lack of the store: down until a ping says otherwise.
    pub(super) fn mark_down(&self, side: Side) {
        let health = &self.health[side_index(side)];
        if health.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(store = %side, "store marked down after a failed write");
        }
        *health.checked.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
}
