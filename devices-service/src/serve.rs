//! `serve`: flags, stores (schema applied), the outbox replayer, the comparator and HTTP.
//!
//! [`bind`] does everything that can fail at start and returns a [`Server`] bound to its port
//! (tests bind `127.0.0.1:0`); [`Server::run`] serves until the shutdown future completes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::{self, App};
use crate::compare::{self, CompareConfig};
use crate::flags::{FlagError, FlagSource, FlagWatcher};
use crate::metrics::Metrics;
use crate::outbox::{ReplayConfig, Replayer};
use crate::routing;
use crate::store::{self, NewLayout, StoreError, Stores};
use crate::writer::{WriteConfig, Writer};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("migration flags: {0}")]
    Flags(#[from] FlagError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
}

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub legacy_database_url: String,
    pub new_database_url: String,
    pub max_connections: u32,
    pub flags: FlagSource,
    pub write: WriteConfig,
    pub replay: ReplayConfig,
    pub compare: CompareConfig,
    /// Time between comparisons (the plan: hourly).
    pub compare_interval: Duration,
}

pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: axum::Router,
    stopping: watch::Sender<bool>,
    pub metrics: Arc<Metrics>,
    pub stores: Stores,
    pub layout: NewLayout,
    pub flags: FlagWatcher,
}

pub async fn bind(config: ServeConfig) -> Result<Server, ServeError> {
    let metrics = Arc::new(Metrics::default());
    let flags =
        FlagWatcher::start(config.flags.clone(), None, metrics.flags_generation.clone()).await?;
    let stores = Stores::connect(
        &config.legacy_database_url,
        &config.new_database_url,
        config.max_connections,
    )
    .await?;
    let layout = stores.migrate().await?;
    info!(?layout, "stores ready");
    let (stopping, stop) = watch::channel(false);

    let replayer = Replayer {
        stores: stores.clone(),
        metrics: metrics.clone(),
        config: config.replay,
    };
    tokio::spawn(replayer.run(stop.clone()));
    tokio::spawn(comparator(
        stores.clone(),
        flags.clone(),
        metrics.clone(),
        config.compare,
        config.compare_interval,
        stop.clone(),
    ));
    if layout == NewLayout::Partitioned {
        tokio::spawn(partition_maintenance(stores.clone(), stop.clone()));
    }

    let writer = Writer {
        stores: stores.clone(),
        flags: flags.clone(),
        metrics: metrics.clone(),
        config: config.write,
    };
    let router = api::router(App {
        writer,
        metrics: metrics.clone(),
    });
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    Ok(Server {
        listener,
        local_addr,
        router,
        stopping,
        metrics,
        stores,
        layout,
        flags,
    })
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        info!(addr = %self.local_addr, "serving");
        let result = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(ServeError::Http);
        self.stopping.send_replace(true);
        result
    }
}

/// Compares the stores every `interval` while dual writes are on and exports the drift.
async fn comparator(
    stores: Stores,
    flags: FlagWatcher,
    metrics: Arc<Metrics>,
    config: CompareConfig,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut epoch = None;
    loop {
        let values = flags.current().values();
        if routing::comparing(&values) {
            if epoch.is_none() {
                match store::mark_shadow_epoch(&stores.legacy, Utc::now()).await {
                    Ok(at) => epoch = Some(at),
                    Err(e) => warn!("shadow epoch not recorded (retrying): {e}"),
                }
            }
            if let Some((from, to)) = epoch
                .and_then(|e| compare::window(Utc::now(), Some(e), config.lookback, config.settle))
            {
                match compare::run(&stores, config.bucket, from, to).await {
                    Ok(c) => {
                        metrics.drift(c.count_drift, c.value_drift);
                        let verdict = if c.drift() > config.max_drift {
                            "fail"
                        } else {
                            "pass"
                        };
                        metrics.compare_run(
                            verdict,
                            c.buckets.len() - c.mismatching(),
                            c.mismatching(),
                        );
                        if verdict == "fail" {
                            warn!(count_drift = c.count_drift, value_drift = c.value_drift, mismatching = c.mismatching(), %from, %to, "stores drifted apart");
                        }
                    }
                    Err(e) => {
                        metrics.compare_run("error", 0, 0);
                        warn!("comparison failed: {e}");
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Creates the coming days' partitions of the new store every hour.
async fn partition_maintenance(stores: Stores, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
        if let Err(e) = store::ensure_partitions(&stores.new, Utc::now(), 7).await {
            warn!("new store partitions not created (retrying in an hour): {e}");
        }
    }
}
