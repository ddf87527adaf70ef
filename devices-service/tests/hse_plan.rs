//! The HSE plan end to end, time scaled down: two devices-service processes (this crate's
//! binary) on real PostgreSQL databases, following the flag document the operator writes to
//! moto's SSM; moto's ECS holding the legacy (`hse-old-system`) and new (`hse-devices`)
//! services; a real Prometheus scraping the instances with the shipped alert rules and a real
//! Alertmanager posting to the operator's webhook; the operator on a real kube-apiserver
//! running the example Migration's gates, with events flowing from the load generator all along.
//!
//! * healthy: Shadow (comparison every second instead of every hour) → 10 → 50 → 100 → CutOver
//!   → Completed, the gates passing on the service's own metrics, no drift, no event lost.
//! * drift: the new store starts dropping events at step 1; the comparison exports the drift,
//!   `DevicesEventDrift` fires, the operator rolls back: split 0 in SSM, the legacy ECS service's
//!   desired count restored, every acknowledged event in the legacy store.
//!
//! Figures (gate values, drift, events) are printed (`--nocapture`), not asserted as timings.
//!
//! Over 600 lines: one stack (moto, PostgreSQL, Prometheus, Alertmanager, the operator) shared by both scenarios.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::ContainerDefinition;
use devices_service::loadgen::{self, LoadConfig, LoadReport};
use ficus_e2e::operator::{Operator, split_steps, test_namespace};
use ficus_flags::Side;
use ficus_operator::crd::{Migration, Phase};
use ficus_operator::run::Config;
use ficus_testkit::{Alertmanager, Moto, Postgres, Prometheus, PrometheusConfig};
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use uuid::Uuid;

const REGION: &str = ficus_testkit::moto::REGION;
const CLUSTER: &str = "hse-cluster";
const PREFIX: &str = "/hse/";
const TOKEN: &str = "devices-webhook-token";
const LONG: Duration = Duration::from_secs(240);

/// One stack at a time: two of them on a small CI machine would make the latency gates measure
/// each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A devices-service process; killed when dropped.
struct Instance {
    addr: SocketAddr,
    _child: Child,
}

async fn instance(legacy: &str, new: &str, moto: &str) -> Instance {
    let mut child = Command::new(env!("CARGO_BIN_EXE_devices-service"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--legacy-database-url",
            legacy,
            "--new-database-url",
            new,
            "--flags-ssm-prefix",
            PREFIX,
            "--flags-ssm-poll-interval",
            "200ms",
            // The plan's hourly comparison, scaled down: every second, events settled for 2 s.
            "--compare-interval",
            "1s",
            "--settle",
            "2s",
        ])
        .env("AWS_ENDPOINT_URL", moto)
        .env("RUST_LOG", "info,devices_service=info")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn devices-service");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("devices-service did not start within 60 s")
        .expect("read stdout")
        .expect("devices-service exited before listening");
    let addr = line
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    Instance {
        addr,
        _child: child,
    }
}

struct Stack {
    moto: Moto,
    ssm: aws_sdk_ssm::Client,
    ecs: aws_sdk_ecs::Client,
    legacy: sqlx::PgPool,
    new: sqlx::PgPool,
    new_url: String,
    instances: Vec<Instance>,
    prometheus: Prometheus,
    _alertmanager: Alertmanager,
    api: Api<Migration>,
    _operator: Operator,
}

async fn stack(prefix: &str) -> Option<Stack> {
    ficus_testkit::moto::use_test_credentials();
    ficus_testkit::init();
    let pg = match Postgres::shared() {
        Ok(pg) => pg,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return None;
        }
    };
    let moto = match Moto::start() {
        Ok(m) => m,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return None;
        }
    };
    let (_cp, client, ns) = test_namespace(prefix).await.expect("control plane")?;
    let legacy_url = pg
        .create_database(&format!("{prefix}_legacy"))
        .await
        .expect("db");
    let new_url = pg
        .create_database(&format!("{prefix}_new"))
        .await
        .expect("db");

    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(moto.url())
        .load()
        .await;
    let ecs = aws_sdk_ecs::Client::new(&config);
    ecs.create_cluster()
        .cluster_name(CLUSTER)
        .send()
        .await
        .expect("cluster");
    let container = ContainerDefinition::builder()
        .name("app")
        .image("devices:1")
        .memory(256)
        .build();
    ecs.register_task_definition()
        .family("devices")
        .container_definitions(container)
        .send()
        .await
        .expect("task definition");
    for (name, count) in [("hse-old-system", 4), ("hse-devices", 2)] {
        ecs.create_service()
            .cluster(CLUSTER)
            .service_name(name)
            .task_definition("devices")
            .desired_count(count)
            .send()
            .await
            .expect("service");
    }

    let mut instances = Vec::new();
    for _ in 0..2 {
        instances.push(instance(&legacy_url, &new_url, &moto.url()).await);
    }
    // Bound now and handed to the operator, so nothing takes the webhook's port in between.
    let operator_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("operator port");
    let operator_addr = operator_listener.local_addr().expect("operator address");
    let alertmanager = skip(Alertmanager::start(
        &format!("http://{operator_addr}/webhook/alertmanager"),
        TOKEN,
    ))?;
    let rules = std::fs::read_to_string(
        ficus_testkit::repo_root().join("charts/ficus/files/devices-alerts.rules.yml"),
    )
    .expect("the shipped rules");
    let prometheus = skip(Prometheus::start(PrometheusConfig {
        targets: instances.iter().map(|i| i.addr.to_string()).collect(),
        rules: Some(rules),
        alertmanager: Some(alertmanager.addr().to_string()),
        labels: Default::default(),
    }))?;
    prometheus
        .wait_for_targets(Duration::from_secs(30))
        .await
        .expect("targets scraped");
    let operator = Operator::start_with(
        client.clone(),
        Config {
            namespace: Some(ns.clone()),
            identity: prefix.into(),
            leader: None,
            http_addr: Some(operator_addr),
            webhook_token: Some(TOKEN.into()),
            aws: Default::default(),
            policy: None,
        },
        Some(operator_listener),
    )
    .expect("operator");
    Some(Stack {
        ssm: aws_sdk_ssm::Client::new(&config),
        ecs,
        moto,
        legacy: sqlx::PgPool::connect(&legacy_url)
            .await
            .expect("legacy pool"),
        new: sqlx::PgPool::connect(&new_url).await.expect("new pool"),
        new_url,
        instances,
        prometheus,
        _alertmanager: alertmanager,
        api: Api::namespaced(client, &ns),
        _operator: operator,
    })
}

fn skip<T>(r: Result<T, ficus_testkit::HarnessError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            None
        }
    }
}

/// The example Migration (examples/devices-ecs-migration.yaml) with its times scaled down: the
/// gates are the example's queries with 1 m rate windows instead of 5 m.
fn migration(stack: &Stack) -> Migration {
    let text = std::fs::read_to_string(
        ficus_testkit::repo_root().join("examples/devices-ecs-migration.yaml"),
    )
    .expect("example");
    let doc = text
        .split("\n---\n")
        .find(|d| d.contains("kind: Migration"))
        .expect("a Migration in the example");
    let example: serde_json::Value = serde_saphyr::from_str(doc).expect("example YAML");
    let mut spec = example["spec"].clone();
    let gates: Vec<serde_json::Value> = spec["analysis"]["gates"]
        .as_array()
        .expect("gates")
        .iter()
        .map(|g| {
            let mut g = g.clone();
            for key in ["query", "samplesQuery"] {
                g[key] = json!(g[key].as_str().expect("query").replace("[5m]", "[1m]"));
            }
            // The example's 100 samples per system: a p99 of fewer requests is their maximum,
            // and one slow request would decide the step. At 10 % of the test's load the new
            // system reaches them about 6 s into the step.
            g["minSamples"] = json!(100);
            g
        })
        .collect();
    assert_eq!(spec["rollback"]["onAlerts"], json!(["DevicesEventDrift"]));
    spec["legacy"]["ecs"]["cluster"] = json!(CLUSTER);
    spec["candidate"] = json!({ "ecs": { "cluster": CLUSTER, "service": "hse-devices" } });
    spec["aws"] = json!({ "region": REGION, "endpointUrl": stack.moto.url() });
    spec["shadow"] = json!({ "duration": "8s", "readSamplePercent": 0 });
    spec["bakeTime"] = json!("6s");
    spec["analysis"]["prometheus"]["url"] = json!(stack.prometheus.url());
    spec["analysis"]["interval"] = json!("1s");
    spec["analysis"]["failureLimit"] = json!(5);
    spec["analysis"]["inconclusiveLimit"] = json!(60);
    spec["analysis"]["gates"] = json!(gates);
    spec["cutover"]["completeAfter"] = json!("6s");
    serde_json::from_value(json!({
        "apiVersion": "ficus.dev/v1alpha1", "kind": "Migration",
        "metadata": { "name": "devices" }, "spec": spec,
    }))
    .expect("a valid Migration")
}

impl Stack {
    fn load(&self) -> (watch::Sender<bool>, tokio::task::JoinHandle<LoadReport>) {
        let config = LoadConfig {
            targets: self
                .instances
                .iter()
                .map(|i| format!("http://{}", i.addr))
                .collect(),
            // The plan's 200 events/s, in requests of 5 (40 writes and 40 reads a second).
            rate: 200.0,
            batch: 5,
            users: 200,
            devices_per_user: 2,
            reads_per_write: 1.0,
            concurrency: 32,
        };
        let (stop, rx) = watch::channel(false);
        (stop, tokio::spawn(loadgen::run(config, rx)))
    }

    async fn parameters(&self) -> BTreeMap<String, String> {
        let out = self
            .ssm
            .get_parameters_by_path()
            .path(PREFIX)
            .send()
            .await
            .expect("parameters");
        ficus_flags::ssm_client::by_key(PREFIX, out.parameters())
    }

    async fn desired(&self, service: &str) -> i32 {
        let out = self
            .ecs
            .describe_services()
            .cluster(CLUSTER)
            .services(service)
            .send()
            .await
            .expect("describe");
        out.services()
            .first()
            .map(|s| s.desired_count())
            .unwrap_or(-1)
    }

    async fn query(&self, promql: &str) -> Option<f64> {
        self.prometheus
            .query(promql)
            .await
            .ok()?
            .first()
            .map(|s| s.value)
    }

    /// How many of `ids` `side` is missing.
    async fn missing(&self, side: Side, ids: &[Uuid]) -> usize {
        let (pool, sql) = match side {
            Side::Legacy => (
                &self.legacy,
                "select count(*) from device_events where id = any($1)",
            ),
            Side::New => (
                &self.new,
                "select count(*) from device_readings where id = any($1)",
            ),
        };
        let mut found = 0;
        for chunk in ids.chunks(5000) {
            let n: i64 = sqlx::query_scalar(sql)
                .bind(chunk)
                .fetch_one(pool)
                .await
                .expect("count");
            found += usize::try_from(n).unwrap_or(0);
        }
        ids.len() - found
    }
}

fn phase(m: &Migration) -> Phase {
    m.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn step(m: &Migration) -> Option<i32> {
    m.status.as_ref().and_then(|s| s.step)
}

/// Prints the gates of the last analysis and the drift, once per change of phase or step.
async fn watch_progress(
    stack: &Stack,
    until: impl Fn(&Migration) -> bool,
    what: &str,
) -> Migration {
    let start = Instant::now();
    let mut last = None;
    loop {
        let m = stack.api.get("devices").await.expect("get Migration");
        let now = (phase(&m), step(&m));
        if last != Some(now) {
            let drift = stack.query("max(devices_event_drift_ratio)").await;
            let mut p99 = Vec::new();
            for system in ["old", "new"] {
                p99.push(stack.query(&format!(
                    "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{{service=\"devices\",system=\"{system}\"}}[1m])))"
                )).await.map(|v| format!("{system} {:.1} ms", v * 1000.0)));
            }
            let gates: Vec<String> = m
                .status
                .as_ref()
                .and_then(|s| s.last_analysis.as_ref())
                .map(|a| {
                    a.gates
                        .iter()
                        .map(|g| format!("{}={:?} {:?}", g.name, g.value, g.verdict))
                        .collect()
                })
                .unwrap_or_default();
            println!(
                "[{:>6.1?}] {:?} step {:?}; drift {drift:?}; p99 {p99:?}; gates {gates:?}",
                start.elapsed(),
                now.0,
                now.1
            );
            last = Some(now);
        }
        if until(&m) {
            return m;
        }
        assert!(
            start.elapsed() < LONG,
            "no {what} within {LONG:?}; status: {:#?}",
            m.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_hse_plan_completes_with_events_flowing_and_no_drift() {
    let _serial = SERIAL.lock().await;
    let Some(s) = stack("hse-complete").await else {
        return;
    };
    let (stop, load) = s.load();
    s.api
        .create(&PostParams::default(), &migration(&s))
        .await
        .expect("create Migration");

    let done = watch_progress(
        &s,
        |m| {
            matches!(
                phase(m),
                Phase::Completed | Phase::RollingBack | Phase::RolledBack
            )
        },
        "Completed",
    )
    .await;
    assert_eq!(phase(&done), Phase::Completed, "{:#?}", done.status);
    assert_eq!(split_steps(&done), vec![10, 50, 100]);
    let p = s.parameters().await;
    assert_eq!(
        (
            p["write_primary"].as_str(),
            p["traffic-split-percent"].as_str()
        ),
        ("new", "100")
    );

    // A little more load on the completed flags, then stop and check every event.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send_replace(true);
    let report = load.await.expect("load");
    println!(
        "{} events acknowledged ({:.1}/s), {} failed, write p50 {:?} p99 {:?}, {} reads ({} failed)",
        report.acked.len(),
        report.events_per_second(),
        report.failed_events,
        report.write_quantile(0.5),
        report.write_quantile(0.99),
        report.reads,
        report.failed_reads
    );
    assert!(report.acked.len() > 1000, "events flowed all along");
    // Before Shadow only legacy was written (no backfill in this plan); after Completed only the
    // new store. No acknowledged event is in neither, and from the shadow epoch (plus the
    // flags' propagation) on, the new store holds every event legacy has.
    let in_legacy: Vec<Uuid> =
        sqlx::query_scalar("select id from device_events where id = any($1)")
            .bind(&report.acked)
            .fetch_all(&s.legacy)
            .await
            .expect("legacy ids");
    let legacy_set: std::collections::HashSet<Uuid> = in_legacy.into_iter().collect();
    let only_new: Vec<Uuid> = report
        .acked
        .iter()
        .filter(|id| !legacy_set.contains(id))
        .copied()
        .collect();
    assert_eq!(
        s.missing(Side::New, &only_new).await,
        0,
        "every acknowledged event is in a store"
    );
    let since_shadow: Vec<Uuid> = sqlx::query_scalar(
        "select id from device_events where created_at >= (select started_at from shadow_epoch) + interval '2 seconds'",
    )
    .fetch_all(&s.legacy)
    .await
    .expect("events since the shadow epoch");
    println!(
        "{} events only in the new store (after Completed), {} in legacy since the shadow epoch",
        only_new.len(),
        since_shadow.len()
    );
    assert_eq!(
        s.missing(Side::New, &since_shadow).await,
        0,
        "the new store has every event written since the shadow began"
    );
    let max_drift = s
        .query("max(max_over_time(devices_event_drift_ratio[10m]))")
        .await;
    println!("highest drift seen: {max_drift:?}");
    assert_eq!(max_drift, Some(0.0), "the stores never drifted");
    assert_eq!(s.query("max(devices_outbox_dead_letters)").await, Some(0.0));
    assert_eq!(
        s.desired("hse-old-system").await,
        0,
        "cutover.scaleDownLegacy"
    );
}

#[tokio::test]
async fn a_new_store_that_drops_events_fires_the_drift_alert_and_rolls_back() {
    let _serial = SERIAL.lock().await;
    let Some(s) = stack("hse-drift").await else {
        return;
    };
    let (stop, load) = s.load();
    s.api
        .create(&PostParams::default(), &migration(&s))
        .await
        .expect("create Migration");
    watch_progress(&s, |m| step(m) == Some(1), "step 1").await;

    // Someone scales the legacy service during the migration; rollback must bring it back.
    s.ecs
        .update_service()
        .cluster(CLUSTER)
        .service("hse-old-system")
        .desired_count(1)
        .send()
        .await
        .expect("scale");
    // The new store starts silently dropping a tenth of the events.
    let new = sqlx::PgPool::connect(&s.new_url).await.expect("connect");
    sqlx::raw_sql(
        "create function drop_tenth() returns trigger language plpgsql as $$
           begin if abs(hashtext(new.id::text)) % 10 = 0 then return null; end if; return new; end $$;
         create trigger drop_tenth before insert on device_readings for each row execute function drop_tenth();",
    )
    .execute(&new)
    .await
    .expect("trigger");
    let injected = Instant::now();

    let rolled = watch_progress(&s, |m| phase(m) == Phase::RolledBack, "RolledBack").await;
    println!(
        "rolled back {:?} after the new store began dropping events",
        injected.elapsed()
    );
    let record = rolled
        .status
        .as_ref()
        .and_then(|st| st.last_rollback.clone())
        .expect("a rollback record");
    println!("rollback: {} — {}", record.reason, record.message);
    assert!(
        record.message.contains("DevicesEventDrift"),
        "{}",
        record.message
    );

    let start = Instant::now();
    let p = loop {
        let p = s.parameters().await;
        if p.get("traffic-split-percent").map(String::as_str) == Some("0") {
            break p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "split never back to 0: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (p["use-new-system"].as_str(), p["write_primary"].as_str()),
        ("false", "legacy")
    );
    assert_eq!(
        s.desired("hse-old-system").await,
        4,
        "legacy desired count restored"
    );
    assert_eq!(s.desired("hse-devices").await, 2);

    stop.send_replace(true);
    let report = load.await.expect("load");
    println!(
        "{} events acknowledged, {} failed",
        report.acked.len(),
        report.failed_events
    );
    assert_eq!(
        s.missing(Side::Legacy, &report.acked).await,
        0,
        "no acknowledged event lost"
    );
    let dropped = s.missing(Side::New, &report.acked).await;
    println!(
        "the new store dropped {dropped} of {} events",
        report.acked.len()
    );
    assert!(dropped > 0);
}
