//! `/metrics` for the batch commands (`backfill`, `validate`) while they run, so that Prometheus
//! sees their progress and findings as they happen (the dashboard's progress panel, the
//! `ChatMigrationStalled` and `ChatDataInconsistencyDetected` alerts), not only a report at
//! exit. The Jobs the operator creates serve it on [`ficus_flags::job::METRICS_PORT`] and carry
//! the `prometheus.io/scrape` annotations.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot serve metrics on {addr}: {source} (choose another --metrics-addr, or leave it out)"
)]
pub struct EndpointError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// A running `/metrics` endpoint; [`MetricsEndpoint::finish`] stops it.
pub struct MetricsEndpoint {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl MetricsEndpoint {
    /// Binds `addr` and serves `metrics` until finished.
    pub async fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<Self, EndpointError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| EndpointError { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EndpointError { addr, source })?;
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.response() }
            }),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(error = %e, "metrics endpoint stopped");
            }
        });
        tracing::info!(%addr, "serving /metrics while the command runs");
        Ok(MetricsEndpoint {
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// The address bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Keeps serving for `linger` (the final values get scraped), then stops.
    pub async fn finish(mut self, linger: Duration) {
        if !linger.is_zero() {
            tokio::time::sleep(linger).await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}
