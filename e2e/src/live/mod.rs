//! The live stack: a chat service with history and live users, moved from PostgreSQL to the CQL
//! store by the shipped Migration (`examples/chat-postgres-to-scylla.yaml`), gated on the metrics
//! the service really emits, with real faults. One harness for the scenario tests
//! (`e2e/tests/live.rs`), the demo (`ficus-live`) and `bench-live`.
//!
//! What runs, all on loopback:
//! * the local control plane (etcd + kube-apiserver), the CRD, a fresh namespace;
//! * PostgreSQL holding history ([`seed`]), Cassandra (the CQL store) behind Toxiproxy, NATS;
//! * `instances` × `chat-service serve --store router` processes following the flag ConfigMap;
//! * Prometheus scraping every chat-service and operator with the chart's alert rules
//!   (`charts/ficus/files/chat-alerts.rules.yml`), Alertmanager pushing to the operator's webhook;
//! * `operators` × the `ficus-operator` binary (leader election, webhook on);
//! * a Job runner in place of a kubelet ([`jobs`]).
//!
//! Only durations differ from what is shipped, through one documented override ([`Timing`]):
//! the Migration's `shadow.duration`, `bakeTime`, `analysis.interval`,
//! `cutover.completeAfter`, and in the gate queries and alert rules every PromQL range
//! (`[5m]`) and `for:`. A gate's `minSamples` counts samples in its window, so it shrinks with
//! the window (the same minimum rate), and its `failFor` with it (the same multiple of it). Everything else (gates, thresholds, alerts, steps) is
//! the file's.

pub mod jobs;
pub mod scenarios;
pub mod seed;
pub mod soak;
pub mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chat_service::client::ChatClient;
use chat_service::crypto::EncryptionKey;
use chat_service::flow::{Flow, FlowConfig};
use ficus_operator::crd::Migration;
use ficus_testkit::toxiproxy::{Proxy, Toxiproxy};
use ficus_testkit::{
    Alertmanager, Cassandra, ControlPlane, HarnessError, Nats, Postgres, Prometheus,
    PrometheusConfig, Redis, Server, free_addr, repo_root,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tempfile::TempDir;

pub use seed::{HistorySpec, Seeded};

/// The one override of the shipped Migration and rules: shorter durations.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Replaces every PromQL range `[5m]` (and `[1m]`...) in gates and rules.
    pub window: &'static str,
    /// Replaces every `for:` of the alert rules.
    pub alert_for: &'static str,
    pub shadow: &'static str,
    pub bake: &'static str,
    pub interval: &'static str,
    pub complete_after: &'static str,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            // Long enough for the 10 % cohort (about 4 calls/s) to reach the 100 requests a
            // p99 gate needs.
            window: "30s",
            alert_for: "5s",
            shadow: "20s",
            bake: "15s",
            interval: "2s",
            complete_after: "15s",
        }
    }
}

impl Timing {
    /// The demo's pace (`ficus-live --quick`): a 20 s window and shorter bakes, so that a clean
    /// run and a fault run fit in about three minutes. The gates' minimum samples and `failFor`
    /// shrink with the window as always; a 20 s window holds fewer requests, so the p99 gates
    /// are noisier than at the tests' pace (their failures hold promotion for `failFor`).
    pub fn quick() -> Timing {
        Timing {
            window: "20s",
            alert_for: "4s",
            shadow: "5s",
            bake: "6s",
            interval: "2s",
            complete_after: "6s",
        }
    }

    /// The scaled window over the shipped one (5 minutes).
    pub fn window_fraction(&self) -> f64 {
        let secs: f64 = self.window.trim_end_matches('s').parse().unwrap_or(300.0);
        secs / 300.0
    }

    /// `text` with every PromQL range `[<n><unit>]` replaced by the scaled window.
    pub fn scale_ranges(&self, text: &str) -> String {
        let re = regex_lite::Regex::new(r"\[\d+[smhd]\]").expect("a valid pattern");
        re.replace_all(text, format!("[{}]", self.window).as_str())
            .into_owned()
    }

    /// The chart's alert rules with scaled ranges and `for:` durations.
    pub fn scale_rules(&self, rules: &str) -> String {
        let re = regex_lite::Regex::new(r"(?m)^(\s*)for: \S+").expect("a valid pattern");
        let scaled = re.replace_all(rules, format!("${{1}}for: {}", self.alert_for).as_str());
        self.scale_ranges(&scaled)
    }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    pub name: &'static str,
    pub instances: usize,
    pub operators: usize,
    pub history: HistorySpec,
    pub timing: Timing,
}

impl LiveOptions {
    pub fn new(name: &'static str) -> LiveOptions {
        LiveOptions {
            name,
            instances: 2,
            operators: 1,
            history: HistorySpec::from_env(),
            timing: Timing::default(),
        }
    }
}

/// One chat-service process.
pub struct ChatInstance {
    pub server: Server,
    pub addr: SocketAddr,
}

/// One operator process.
pub struct OperatorInstance {
    pub server: Server,
    pub addr: SocketAddr,
    pub identity: String,
}

/// The running stack. Dropping it kills every process it started.
pub struct LiveStack {
    pub options: LiveOptions,
    pub client: Client,
    pub namespace: String,
    pub migration_name: String,
    pub seeded: Seeded,
    pub legacy_url: String,
    pub keyspace: String,
    pub cassandra: &'static Cassandra,
    pub cql_proxy: Proxy,
    /// Between the chat-service processes and legacy PostgreSQL (the Jobs and the harness
    /// connect directly).
    pub pg_proxy: Proxy,
    pub jwt_secret: Vec<u8>,
    pub key: EncryptionKey,
    pub chats: Vec<ChatInstance>,
    pub operators: Vec<OperatorInstance>,
    pub prometheus: Prometheus,
    pub alertmanager: Alertmanager,
    pub jobs: jobs::JobRunner,
    // Processes above are killed before these go.
    _toxiproxy: Toxiproxy,
    _nats: Nats,
    /// The chat-services' room cache.
    _redis: Redis,
    dir: TempDir,
    started: Instant,
}

/// `target/<profile>/<name>` of this workspace (the test command builds every binary), or the
/// file named by `FICUS_<NAME>_BIN` (e.g. `FICUS_CHAT_SERVICE_BIN`).
pub fn workspace_binary(name: &str) -> Result<PathBuf, HarnessError> {
    let var = format!("FICUS_{}_BIN", name.to_ascii_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        return Ok(PathBuf::from(path));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let bin = target.join(profile).join(name);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(HarnessError::Missing {
            component: name.to_owned(),
            reason: format!(
                "{} not built: run `cargo build --workspace --bins`",
                bin.display()
            ),
        })
    }
}

impl LiveStack {
    /// Starts everything and waits until Prometheus has scraped every target; the Migration is
    /// not applied yet ([`LiveStack::apply_migration`]).
    pub async fn start(options: LiveOptions) -> Result<LiveStack, HarnessError> {
        let started = Instant::now();
        let chat_bin = workspace_binary("chat-service")?;
        let operator_bin = workspace_binary("ficus-operator")?;
        let cp = ControlPlane::shared()?;
        crate::operator::install_crds(cp)?;
        let client = cp.client().await?;
        let namespace = ficus_testkit::unique_namespace(&format!("live-{}", options.name));
        ficus_testkit::create_namespace(&client, &namespace)
            .await
            .map_err(|e| HarnessError::setup("namespace", e))?;
        let dir = ficus_testkit::temp_dir()?;
        // FICUS_LIVE_LOGS=<dir> keeps the processes' logs after the run (else they go with the
        // temp dir); FICUS_LIVE_CHAT_LOG sets chat-service's RUST_LOG (default `info`).
        let log_dir = std::env::var_os("FICUS_LIVE_LOGS")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.path().to_path_buf());
        std::fs::create_dir_all(&log_dir).map_err(HarnessError::io("creating", &log_dir))?;
        let chat_log = std::env::var("FICUS_LIVE_CHAT_LOG").unwrap_or_else(|_| "info".into());

        let pg = Postgres::shared()?;
        let key = EncryptionKey::random();
        let (legacy_url, seeded) =
            seed::history_database(pg, options.history, &key, options.name).await?;
        let cassandra = Cassandra::shared()?;
        let keyspace = cassandra.create_keyspace(options.name).await?;
        let toxiproxy = Toxiproxy::start()?;
        let cql_proxy = toxiproxy.proxy("cql", cassandra.addr())?;
        let pg_proxy = toxiproxy.proxy("pg", pg.addr())?;
        let proxied_legacy_url =
            legacy_url.replacen(&pg.addr().to_string(), &pg_proxy.listen.to_string(), 1);
        let nats = Nats::start()?;
        let redis = Redis::start()?;
        let jwt_secret: Vec<u8> =
            format!("live-{}-secret-0123456789abcdef", std::process::id()).into_bytes();

        // The Secret the Migration's Jobs read their settings from (backfill.secretName).
        let secret_env = BTreeMap::from([
            ("DATABASE_URL".to_owned(), legacy_url.clone()),
            ("CHAT_ENCRYPTION_KEY".to_owned(), key.to_base64()),
            (
                "CHAT_CQL_CONTACT_POINTS".to_owned(),
                cql_proxy.listen.to_string(),
            ),
            (
                "CHAT_CQL_ADDRESS_MAP".to_owned(),
                format!("{}={}", cassandra.addr(), cql_proxy.listen),
            ),
            ("CHAT_CQL_KEYSPACE".to_owned(), keyspace.clone()),
            ("CHAT_CQL_CONSISTENCY".to_owned(), "ONE".to_owned()),
        ]);
        Api::<Secret>::namespaced(client.clone(), &namespace)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": { "name": "chat-db" },
                    "stringData": secret_env,
                }))
                .map_err(|e| HarnessError::setup("secret", e))?,
            )
            .await
            .map_err(|e| HarnessError::setup("secret", e))?;

        let mut chats = Vec::new();
        for i in 0..options.instances {
            let addr = free_addr()?;
            let mut env = secret_env.clone();
            env.insert(
                "CHAT_JWT_SECRET".into(),
                String::from_utf8_lossy(&jwt_secret).into_owned(),
            );
            env.insert(
                "KUBECONFIG".into(),
                cp.kubeconfig_path().display().to_string(),
            );
            env.insert("NATS_URL".into(), nats.url());
            env.insert("CHAT_REDIS_URL".into(), redis.url());
            env.insert("DATABASE_URL".into(), proxied_legacy_url.clone());
            env.insert("RUST_LOG".into(), chat_log.clone());
            let args: Vec<String> = [
                "serve",
                "--listen",
                &addr.to_string(),
                "--store",
                "router",
                "--new-store",
                "scylla",
                "--flags-configmap",
                &format!("{namespace}/chat-migration-flags"),
                "--outbox-inline-grace-ms",
                "2000",
            ]
            .map(String::from)
            .into();
            let bin = chat_bin.clone();
            let server = Server::builder(
                "chat-service",
                log_dir.join(format!("chat-{i}.log")),
                move || {
                    let mut cmd = Command::new(&bin);
                    cmd.args(&args).envs(&env);
                    cmd
                },
            )
            .ready_on_http(addr, "/readyz")
            .timeout(Duration::from_secs(60))
            .start()?;
            chats.push(ChatInstance { server, addr });
        }

        let token_file = dir.path().join("webhook-token");
        std::fs::write(&token_file, "live-webhook-token")
            .map_err(HarnessError::io("writing", &token_file))?;
        let mut operators = Vec::new();
        for i in 0..options.operators {
            let addr = free_addr()?;
            let identity = format!("live-operator-{i}");
            let args: Vec<String> = vec![
                "--http-addr".into(),
                addr.to_string(),
                "--namespace".into(),
                namespace.clone(),
                "--lease-namespace".into(),
                namespace.clone(),
                "--lease-duration".into(),
                "4".into(),
                "--identity".into(),
                identity.clone(),
                "--webhook-token-file".into(),
                token_file.display().to_string(),
            ];
            let (bin, kubeconfig) = (operator_bin.clone(), cp.kubeconfig_path().to_owned());
            let server = Server::builder(
                "ficus-operator",
                log_dir.join(format!("operator-{i}.log")),
                move || {
                    let mut cmd = Command::new(&bin);
                    cmd.args(&args)
                        .env("KUBECONFIG", &kubeconfig)
                        .env("RUST_LOG", "info,kube=warn");
                    cmd
                },
            )
            .ready_on_http(addr, "/healthz")
            .start()?;
            operators.push(OperatorInstance {
                server,
                addr,
                identity,
            });
        }

        let alertmanager = Alertmanager::start(
            &format!("http://{}/webhook/alertmanager", operators[0].addr),
            "live-webhook-token",
        )?;
        let rules =
            std::fs::read_to_string(repo_root().join("charts/ficus/files/chat-alerts.rules.yml"))
                .map_err(HarnessError::io(
                "reading",
                "charts/ficus/files/chat-alerts.rules.yml",
            ))?;
        let targets = chats
            .iter()
            .map(|c| c.addr.to_string())
            .chain(operators.iter().map(|o| o.addr.to_string()))
            .collect();
        let prometheus = Prometheus::start(PrometheusConfig {
            targets,
            rules: Some(options.timing.scale_rules(&rules)),
            alertmanager: Some(alertmanager.addr().to_string()),
            labels: BTreeMap::from([("namespace".to_owned(), "chat".to_owned())]),
        })?;
        prometheus.wait_for_targets(Duration::from_secs(30)).await?;

        let jobs = jobs::JobRunner::start(client.clone(), &namespace, chat_bin, log_dir);
        tracing::info!(%namespace, elapsed = ?started.elapsed(), "live stack ready");
        Ok(LiveStack {
            options,
            client,
            namespace,
            migration_name: String::new(),
            seeded,
            legacy_url,
            keyspace,
            cassandra,
            cql_proxy,
            pg_proxy,
            jwt_secret,
            key,
            chats,
            operators,
            prometheus,
            alertmanager,
            jobs,
            _toxiproxy: toxiproxy,
            _nats: nats,
            _redis: redis,
            dir,
            started,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn since_start(&self) -> Duration {
        self.started.elapsed()
    }

    /// The shipped Migration with the [`Timing`] override, the local Prometheus and this
    /// namespace.
    pub fn shipped_migration(&self) -> Result<Migration, HarnessError> {
        let path = repo_root().join("examples/chat-postgres-to-scylla.yaml");
        let text = std::fs::read_to_string(&path).map_err(HarnessError::io("reading", &path))?;
        let doc = text
            .split("\n---")
            .find(|d| d.contains("kind: Migration"))
            .unwrap_or_default();
        let mut m: Migration = serde_saphyr::from_str(doc)
            .map_err(|e| HarnessError::setup("examples/chat-postgres-to-scylla.yaml", e))?;
        let t = &self.options.timing;
        m.metadata.namespace = Some(self.namespace.clone());
        m.metadata.resource_version = None;
        let spec = &mut m.spec;
        let duration = |text: &str| {
            text.parse()
                .map_err(|e| HarnessError::setup("the live timing", e))
        };
        spec.shadow.duration = duration(t.shadow)?;
        spec.bake_time = duration(t.bake)?;
        spec.cutover.complete_after = Some(duration(t.complete_after)?);
        if let Some(analysis) = spec.analysis.as_mut() {
            analysis.interval = duration(t.interval)?;
            if analysis.warmup.is_some() {
                analysis.warmup = Some(duration(t.window)?);
            }
            if let Some(p) = analysis.prometheus.as_mut() {
                p.url = self.prometheus.url();
            }
            for gate in &mut analysis.gates {
                gate.query = t.scale_ranges(&gate.query);
                gate.samples_query = gate.samples_query.as_deref().map(|q| t.scale_ranges(q));
                // The same minimum rate in the shorter window. A quantile gate then rests on
                // fewer requests than shipped (the p99 gates' 1000 become 100: the 10 % cohort
                // sees about 150 in 30 s, and 1000 would pause every run at the first step),
                // so its p99 is noisier here than in a 5-minute window: the README's live
                // figures give the healthy runs' largest p99 ratio.
                gate.min_samples = gate
                    .min_samples
                    .map(|n| (n * t.window_fraction()).ceil().max(1.0));
                // A gate that must fail longer than its window keeps that proportion.
                gate.fail_for = gate.fail_for.as_ref().map(|d| {
                    Duration::from_secs_f64(d.get().as_secs_f64() * t.window_fraction()).into()
                });
            }
        }
        Ok(m)
    }

    /// Creates the (overridden) shipped Migration.
    pub async fn apply_migration(&mut self) -> Result<Migration, HarnessError> {
        let m = self.shipped_migration()?;
        self.migration_name = m.metadata.name.clone().unwrap_or_default();
        Api::<Migration>::namespaced(self.client.clone(), &self.namespace)
            .create(&PostParams::default(), &m)
            .await
            .map_err(|e| HarnessError::setup("Migration", e))
    }

    pub fn migrations(&self) -> Api<Migration> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub async fn migration(&self) -> Option<Migration> {
        self.migrations()
            .get_opt(&self.migration_name)
            .await
            .ok()
            .flatten()
    }

    /// The flag ConfigMap's data.
    pub async fn flags(&self) -> BTreeMap<String, String> {
        Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace)
            .get_opt("chat-migration-flags")
            .await
            .ok()
            .flatten()
            .and_then(|c| c.data)
            .unwrap_or_default()
    }

    /// Sets `ficus.dev/<command>` on the Migration (promote, abort, retry).
    pub async fn annotate(&self, command: &str) -> Result<(), HarnessError> {
        let patch =
            json!({ "metadata": { "annotations": { format!("ficus.dev/{command}"): "true" } } });
        self.migrations()
            .patch(
                &self.migration_name,
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
            .map(drop)
            .map_err(|e| HarnessError::setup("annotating the Migration", e))
    }

    /// The user flow against every instance, `rate` calls per second, users after the
    /// history's users.
    pub fn start_flow(&self, users: u32, rate: f64) -> Flow {
        Flow::start(FlowConfig {
            base_urls: self
                .chats
                .iter()
                .map(|c| format!("http://{}", c.addr))
                .collect(),
            jwt_secret: self.jwt_secret.clone(),
            users,
            first_user_id: 100_000,
            rate,
            call_timeout: Duration::from_secs(5),
        })
    }

    /// A client of instance `i`.
    /// Which of [`LiveStack::operators`] holds the leader Lease.
    pub async fn leader(&self) -> Option<usize> {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let holder = leases
            .get("ficus-operator-leader")
            .await
            .ok()?
            .spec?
            .holder_identity?;
        self.operators.iter().position(|o| o.identity == holder)
    }

    pub fn chat_client(&self, i: usize) -> ChatClient {
        ChatClient::new(&format!("http://{}", self.chats[i].addr), &self.jwt_secret)
    }

    /// A value of a PromQL query, if it has one.
    pub async fn value(&self, promql: &str) -> Option<f64> {
        self.prometheus
            .query(promql)
            .await
            .ok()
            .and_then(|s| s.first().map(|s| s.value))
            .filter(|v| v.is_finite())
    }
}
