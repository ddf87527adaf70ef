//! Operator start-up: HTTP endpoints, leader election, and the controller while leading.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kube::Client;
use kube::runtime::events::Reporter;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};

use crate::http::{self, HttpState, Webhook};
use crate::metrics::Metrics;
use crate::reconciler;

/// How the operator runs; built from command-line flags by the binary, directly by tests.
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch only this namespace (all namespaces when None).
    pub namespace: Option<String>,
    /// This replica's name in Events and the leader Lease.
    pub identity: String,
    pub leader: Option<LeaderConfig>,
    pub http_addr: Option<SocketAddr>,
    /// Shared token Alertmanager presents as `Authorization: Bearer`; the webhook is off without it.
    pub webhook_token: Option<String>,
    /// Region and endpoint for SSM and ECS unless a Migration's `spec.aws` says otherwise.
    pub aws: crate::aws::AwsDefaults,
    /// What Migrations may make the operator do ([`crate::policy`]); None: anything.
    pub policy: Option<crate::policy::Policy>,
}

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    /// How long a lease holds without renewal; a standby takes over after about this long.
    pub duration_secs: u64,
    pub grace_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "leader election on Lease {namespace}/{name} failed: {source}; check that the operator may get, create and patch leases there"
    )]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error("metrics endpoint on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs until `shutdown` resolves, serving HTTP on `config.http_addr` if set.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let listener = match config.http_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Http { addr, source })?,
        ),
        None => None,
    };
    run_on(client, config, listener, shutdown).await
}

/// [`run`] with the HTTP endpoint on a listener the caller already bound (`config.http_addr` is
/// ignored): no window in which another process can take the port.
pub async fn run_on(
    client: Client,
    config: Config,
    listener: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    // The endpoint lives exactly as long as this function, also when its future is dropped.
    let mut _http = None;
    if let Some(listener) = listener {
        let addr = listener.local_addr().map_err(|source| RunError::Http {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let webhook = config
            .webhook_token
            .clone()
            .filter(|t| !t.is_empty())
            .map(|token| {
                Arc::new(Webhook {
                    client: client.clone(),
                    namespace: config.namespace.clone(),
                    token,
                })
            });
        let state = HttpState {
            metrics: metrics.clone(),
            ready: ready.clone(),
            webhook,
        };
        _http = Some(AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, http::router(state)).await {
                warn!(error = %e, "metrics endpoint stopped");
            }
        })));
        info!(%addr, "serving /metrics, /healthz, /readyz");
    }
    let reporter = Reporter {
        controller: "ficus-operator".into(),
        instance: Some(config.identity.clone()),
    };
    let namespace = config.namespace.clone();
    let policy = config.policy.clone().map(Arc::new);
    if policy.is_none() {
        warn!(
            "no policy file: any Migration author may make this operator call any Prometheus URL, SSM prefix, ECS service or AWS endpoint, and run Jobs with any image and Secret of their namespace (docs/security.md)"
        );
    }
    let controller = || {
        reconciler::run_controller(
            client.clone(),
            namespace.as_deref(),
            metrics.clone(),
            reporter.clone(),
            config.aws.clone(),
            policy.clone(),
        )
    };
    tokio::pin!(shutdown);

    let Some(leader) = &config.leader else {
        ready.store(true, Ordering::Relaxed);
        metrics.is_leader.set(1);
        info!("leader election off: reconciling");
        tokio::select! {
            _ = controller() => {}
            _ = &mut shutdown => info!("shutting down"),
        }
        return Ok(());
    };

    let lease_error = |source| RunError::Lease {
        namespace: leader.namespace.clone(),
        name: leader.lease_name.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(client.clone(), &leader.lease_name)
        .with_namespace(&leader.namespace)
        .with_identity(&config.identity)
        .with_duration(leader.duration_secs)
        .with_grace(leader.grace_secs)
        .build()
        .await
        .map_err(lease_error)?;
    let (mut leading, _task) = manager.watch().await;
    ready.store(true, Ordering::Relaxed);
    loop {
        // Standby until this replica holds the lease.
        while !*leading.borrow_and_update() {
            info!(identity = %config.identity, "standing by for the leader lease");
            tokio::select! {
                changed = leading.changed() => if changed.is_err() { return Ok(()) },
                _ = &mut shutdown => return Ok(()),
            }
        }
        info!(identity = %config.identity, "leading: reconciling");
        metrics.is_leader.set(1);
        let lost = async {
            while *leading.borrow_and_update() {
                if leading.changed().await.is_err() {
                    break;
                }
            }
        };
        // Dropping the controller future stops every reconcile at once: a replica that lost
        // the lease must not act, and each reconcile is idempotent for whoever leads next.
        tokio::select! {
            _ = controller() => return Ok(()),
            _ = lost => warn!(identity = %config.identity, "lost the leader lease: stopping"),
            _ = &mut shutdown => { info!("shutting down"); return Ok(()); }
        }
        metrics.is_leader.set(0);
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
