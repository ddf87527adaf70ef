//! Every few seconds, each store's health and pool as metrics: `chat_database_up` (the answer to
//! a ping) and `chat_database_connections` (PostgreSQL pools), for the
//! `ChatDatabaseConnectionFailure` alert and the dashboard. Independent of requests, so a store
//! that fails while nobody calls it is still seen. With a room cache, its Redis too
//! (`chat_cache_up`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::AbortOnDropHandle;

use crate::api::health::PING_TIMEOUT;
use crate::metrics::Metrics;
use crate::store::ChatStore;
use crate::store::room_cache::RoomCache;

/// How often each store is pinged.
pub const WATCH_EVERY: Duration = Duration::from_secs(5);

/// The part a watched store plays (the `role` label).
pub type Role = &'static str;

/// Watches `stores` until the returned handle is dropped (with the server).
pub fn spawn(
    stores: Vec<(Role, Arc<dyn ChatStore>)>,
    cache: Option<Arc<RoomCache>>,
    metrics: Arc<Metrics>,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (role, store) in &stores {
                let up = matches!(
                    tokio::time::timeout(PING_TIMEOUT, store.ping()).await,
                    Ok(Ok(()))
                );
                metrics.database_up(store.database(), role, up);
                if let Some((active, idle)) = store.pool_connections() {
                    metrics.database_connections(store.database(), role, active, idle);
                }
            }
            if let Some(cache) = &cache {
                metrics.cache_up(cache.ping().await);
            }
        }
    }))
}
