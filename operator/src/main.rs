//! `ficus-operator`: runs the Migration controller; `ficus-operator delete-migrations` is the
//! chart's pre-delete hook.

use std::net::SocketAddr;

use clap::Parser;
use ficus_operator::run::{Config, LeaderConfig, run};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "ficus-operator",
    version,
    about = "Phased, zero-downtime strangler-fig migrations on Kubernetes"
)]
struct Args {
    /// Watch Migrations in this namespace only (default: all namespaces).
    #[arg(long, env = "FICUS_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "FICUS_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Turn leader election off (only for a single replica, e.g. local runs).
    #[arg(long, env = "FICUS_NO_LEADER_ELECTION")]
    no_leader_election: bool,
    /// Namespace of the leader Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "FICUS_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    #[arg(
        long,
        env = "FICUS_LEASE_NAME",
        default_value = "ficus-operator-leader"
    )]
    lease_name: String,
    /// Seconds a lease holds without renewal.
    #[arg(long, env = "FICUS_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// This replica's identity (default: the pod name, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// File holding the shared token Alertmanager presents (mount it from a Secret). The
    /// webhook at /webhook/alertmanager is off without a token.
    #[arg(long, env = "FICUS_WEBHOOK_TOKEN_FILE")]
    webhook_token_file: Option<std::path::PathBuf>,
    /// AWS region for SSM flag stores and ECS workloads (a Migration's spec.aws.region wins).
    #[arg(long, env = "FICUS_AWS_REGION")]
    aws_region: Option<String>,
    /// AWS endpoint override, e.g. a VPC endpoint (a Migration's spec.aws.endpointUrl wins).
    #[arg(long, env = "FICUS_AWS_ENDPOINT_URL")]
    aws_endpoint_url: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "FICUS_LOG_JSON")]
    log_json: bool,
    /// What Migrations may make the operator do (YAML): allowed Prometheus URLs, SSM prefixes,
    /// ECS services, Job images and Secrets per namespace (docs/security.md). Without it,
    /// anything.
    #[arg(long, env = "FICUS_POLICY_FILE")]
    policy_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Delete a release's Migrations and wait while the running operator's finalizer writes each
    /// service's safe flags (the chart runs this before `helm uninstall` removes the operator).
    DeleteMigrations {
        /// The Migrations' namespace.
        #[arg(long, env = "POD_NAMESPACE")]
        namespace: String,
        /// Label selector of the Migrations to delete (empty: every one in the namespace).
        #[arg(long, default_value = "")]
        selector: String,
        /// Seconds to wait for each Migration to be gone.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    // kube and the AWS SDK together enable two rustls back-ends: choose one explicitly.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let client = kube::Client::try_default().await.map_err(|e| {
        format!("cannot reach the Kubernetes API (KUBECONFIG or in-cluster config): {e}")
    })?;
    if let Some(Command::DeleteMigrations {
        namespace,
        selector,
        timeout,
    }) = args.command
    {
        let deleted = ficus_operator::uninstall::delete_migrations(
            client,
            &namespace,
            &selector,
            std::time::Duration::from_secs(timeout),
        )
        .await?;
        println!(
            "{} Migration(s) deleted in {namespace}, their flags left safe: {}",
            deleted.len(),
            deleted.join(", ")
        );
        return Ok(());
    }
    let identity = args.identity.unwrap_or_else(|| {
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("ficus-{}", std::process::id()))
    });
    let lease_namespace = args
        .lease_namespace
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());
    let config = Config {
        namespace: args.namespace,
        identity,
        leader: (!args.no_leader_election).then(|| LeaderConfig {
            namespace: lease_namespace,
            lease_name: args.lease_name,
            duration_secs: args.lease_duration.max(2),
            grace_secs: (args.lease_duration / 3).max(1),
        }),
        http_addr: Some(args.http_addr),
        aws: ficus_operator::aws::AwsDefaults {
            region: args.aws_region,
            endpoint_url: args.aws_endpoint_url,
        },
        policy: args
            .policy_file
            .as_deref()
            .map(ficus_operator::policy::Policy::load)
            .transpose()?,
        webhook_token: match &args.webhook_token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        format!("cannot read the webhook token file {}: {e}", path.display())
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        },
    };
    // Kubernetes stops pods with SIGTERM; a terminal sends SIGINT.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    run(client, config, shutdown).await?;
    Ok(())
}
