//! The gates of `examples/chat-postgres-to-scylla.yaml` and the alert rules of the chart
//! (`charts/ficus/files/chat-alerts.rules.yml`) against the metrics chat-service really exports:
//! chat-service runs in this process with `--store router` over two real PostgreSQL databases,
//! its load client drives real traffic, a real Prometheus scrapes it and evaluates the rules,
//! and the operator's own gate evaluation judges the example's gates.
//!
//! Healthy traffic passes every gate that applies, with its samples present (never on an empty
//! result), through Shadow, Split 50 % and CutOver; then rows deleted in the new store, errors
//! and latency on the new store each fail the matching gate and fire the matching alert.
//!
//! All data here is written after dual writes began (the flag documents say
//! `shadow_compare_from` nothing, i.e. `all`), so every shadow read is compared.
//!
//! Over 600 lines: the stack (service, two databases, Prometheus with the shipped rules), the
//! helpers that judge it, and the fault that must fail each gate and alert, in one place.

use std::path::Path;
use std::time::{Duration, Instant};

use chat_service::config::{Limits, NewStoreChoice, ServeConfig, StoreChoice};
use chat_service::crypto::EncryptionKey;
use chat_service::flags::FlagSource;
use chat_service::loadtest::{self, LoadConfig};
use chat_service::serve;
use ficus_operator::analysis::Prometheus as Evaluator;
use ficus_operator::crd::{Gate, GateResult, Migration, Verdict};
use ficus_testkit::{Postgres, Prometheus, PrometheusConfig};
use sqlx::postgres::PgPool;

const JWT_SECRET: &[u8] = b"shipped-gates-test-secret-0123456789";

/// The example Migration's gates.
fn example_gates() -> Vec<Gate> {
    let path = ficus_testkit::repo_root().join("examples/chat-postgres-to-scylla.yaml");
    let text = std::fs::read_to_string(&path).expect("the example");
    let migration = text
        .split("\n---")
        .filter_map(|d| serde_saphyr::from_str::<serde_json::Value>(d).ok())
        .find(|d| d["kind"] == "Migration")
        .expect("a Migration in the example");
    let migration: Migration = serde_json::from_value(migration).expect("a valid Migration");
    migration.spec.analysis.expect("analysis").gates
}

/// The chart's rules, with `for:` dropped so a breach fires within the test's seconds (the
/// expressions are what is checked).
fn shipped_rules() -> String {
    let path = ficus_testkit::helm::chart_dir().join("files/chat-alerts.rules.yml");
    let text = std::fs::read_to_string(path).expect("the rules");
    text.lines()
        .filter(|l| !l.trim_start().starts_with("for:"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn write_flags(path: &Path, generation: i64, primary: &str, shadow: u32, split: u32) {
    let text = format!(
        "generation={generation}\nwrite_primary={primary}\ndual_write=sync\nshadow_read_percent={shadow}\nread_split_percent={split}\n"
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("flags written");
    std::fs::rename(&tmp, path).expect("flags in place");
}

struct Stack {
    base_url: String,
    prometheus: Prometheus,
    evaluator: Evaluator,
    gates: Vec<Gate>,
    flags: std::path::PathBuf,
    new_db: PgPool,
    new_url: String,
    /// A connection to the server outside the new store's database, to take it away.
    legacy_db: PgPool,
    _dir: tempfile::TempDir,
    _server: tokio::task::JoinHandle<()>,
    /// The room cache's Redis, for a stack started with one.
    redis: Option<ficus_testkit::Redis>,
}

impl Stack {
    /// The new store's database name (the last path segment of its URL).
    fn new_database(&self) -> String {
        let path = self.new_url.split('?').next().unwrap_or_default();
        path.rsplit('/').next().unwrap_or_default().to_owned()
    }

    /// Real traffic for `secs` seconds: every virtual user sends, reads its room's history
    /// (shadow-compared) and lists its rooms.
    async fn traffic(&self, secs: u64) {
        let config = LoadConfig {
            base_url: self.base_url.clone(),
            jwt_secret: JWT_SECRET.to_vec(),
            users: 10,
            rooms: 8,
            duration: Duration::from_secs(secs),
            max_iterations: None,
            first_user_id: 1_000,
            think_time: Duration::from_millis(50),
            stages: None,
        };
        loadtest::run(&config).await.expect("the load client ran");
    }

    async fn gates(&self, traffic: i32) -> Vec<GateResult> {
        self.evaluator.evaluate(&self.gates, traffic).await
    }

    /// Waits (with traffic) until every gate that applies at `traffic` has its samples and
    /// answers; returns the last evaluation.
    async fn settled(&self, traffic: i32) -> Vec<GateResult> {
        let start = Instant::now();
        loop {
            self.traffic(3).await;
            let results = self.gates(traffic).await;
            if results.iter().all(|g| g.verdict != Verdict::Inconclusive) {
                return results;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "gates never got their samples at {traffic}%: {results:#?}"
            );
        }
    }

    async fn firing(&self) -> Vec<String> {
        let samples = self
            .prometheus
            .query(r#"ALERTS{alertstate="firing"}"#)
            .await
            .expect("ALERTS");
        let mut names: Vec<String> = samples
            .into_iter()
            .filter_map(|s| s.labels.get("alertname").cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Every chat-service series the shipped rules, gate queries and dashboard select exists
    /// with every label they match on, and every exact label value they name: an empty result
    /// passes a gate or silences an alert, so a misspelled metric, label or value would
    /// otherwise go unnoticed. Needs traffic on both cohorts (Split 50 %).
    async fn every_selector_has_samples(&self) {
        let root = ficus_testkit::repo_root();
        let chart = ficus_testkit::helm::chart_dir();
        let mut texts = vec![
            std::fs::read_to_string(chart.join("files/chat-alerts.rules.yml")).expect("rules"),
            std::fs::read_to_string(chart.join("files/chat-migration-dashboard.json"))
                .expect("dashboard")
                .replace("\\\"", "\""),
        ];
        let example = std::fs::read_to_string(root.join("examples/chat-postgres-to-scylla.yaml"))
            .expect("the example");
        texts.push(example);
        let mut selectors: Vec<Selector> = texts.iter().flat_map(|t| chat_selectors(t)).collect();
        selectors.sort();
        selectors.dedup();
        assert!(
            selectors.len() >= 8,
            "the scan finds the selectors: {selectors:?}"
        );
        // Exported by the backfill and validation Jobs, not by a serving instance.
        const JOB_METRICS: [&str; 4] = [
            "chat_migration_progress_ratio",
            "chat_migration_errors_total",
            "chat_data_inconsistencies",
            "chat_consistency_checks_total",
        ];
        for (name, matchers) in selectors {
            if JOB_METRICS.contains(&name.as_str()) {
                continue;
            }
            // Exported only with a room cache: the cache alerts' own test fires them.
            if self.redis.is_none() && name.starts_with("chat_cache_") {
                continue;
            }
            let series = self.prometheus.query(&name).await.expect("a query");
            assert!(
                !series.is_empty(),
                "no samples of {name} (a shipped query selects it)"
            );
            for (label, op, value) in matchers {
                assert!(
                    series.iter().any(|s| s.labels.contains_key(&label)),
                    "no series of {name} has label {label}: {series:?}"
                );
                // Exact values are checked where healthy traffic at 50 % must show them; a
                // counter's error-valued series (status="error", a failing code) only exists
                // after the first error, so those are checked by the fault phases below.
                if op == "="
                    && !value.is_empty()
                    && ["cohort", "namespace", "target"].contains(&label.as_str())
                {
                    assert!(
                        series.iter().any(|s| s.labels.get(&label) == Some(&value)),
                        "no series of {name} has {label}=\"{value}\": {series:?}"
                    );
                }
            }
        }
    }

    /// Traffic until `alert` fires; fails after a minute.
    /// Waits (with traffic) until gate `name` fails at `traffic`; returns that evaluation.
    async fn until_gate_fails(&self, name: &str, traffic: i32) -> Vec<GateResult> {
        let start = Instant::now();
        loop {
            let results = self.gates(traffic).await;
            if verdict(&results, name) == Verdict::Fail {
                return results;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "gate {name} never failed: {results:#?}"
            );
            self.traffic(2).await;
        }
    }

    /// What the cohort comparisons see, for a failure's message.
    async fn cohort_figures(&self) -> String {
        let mut out = String::new();
        for (what, q) in [
            (
                "p99 ms",
                r#"1000 * histogram_quantile(0.99, sum by (cohort, le) (rate(chat_request_duration_seconds_bucket[5m])))"#,
            ),
            (
                "requests 5m",
                r#"sum by (cohort) (increase(chat_requests_total[5m]))"#,
            ),
            (
                "db p99 ms",
                r#"1000 * histogram_quantile(0.99, sum by (database, le) (rate(chat_database_operation_duration_seconds_bucket[1m])))"#,
            ),
        ] {
            let samples = self.prometheus.query(q).await.unwrap_or_default();
            let values: Vec<String> = samples
                .iter()
                .map(|s| format!("{:?}={:.1}", s.labels.values().collect::<Vec<_>>(), s.value))
                .collect();
            out.push_str(&format!("{what}: {}; ", values.join(", ")));
        }
        out
    }

    async fn until_firing(&self, alert: &str) {
        self.until_firing_within(alert, Duration::from_secs(60))
            .await
    }

    /// Traffic until `alert` no longer fires; fails after a minute.
    async fn until_silent(&self, alert: &str) {
        let start = Instant::now();
        while self.firing().await.iter().any(|a| a == alert) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{alert} still fires"
            );
            self.traffic(2).await;
        }
    }

    async fn until_firing_within(&self, alert: &str, within: Duration) {
        let start = Instant::now();
        while !self.firing().await.iter().any(|a| a == alert) {
            assert!(
                start.elapsed() < within,
                "{alert} never fired; firing: {:?}; {}",
                self.firing().await,
                self.cohort_figures().await
            );
            self.traffic(2).await;
        }
    }
}

/// A selector: metric name and its `(label, operator, value)` matchers.
type Selector = (String, Vec<(String, String, String)>);

/// The `chat_*` selectors in `text`.
fn chat_selectors(text: &str) -> Vec<Selector> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("chat_") {
        let preceded = rest[..at].chars().next_back().is_some_and(is_name);
        let tail = &rest[at..];
        let end = tail.find(|c| !is_name(c)).unwrap_or(tail.len());
        let name = &tail[..end];
        rest = &tail[end..];
        // `chat_` inside a longer word (`test_chat_x`), or a file name (`chat-alerts`) is no
        // metric; a trailing `_` is a prefix in prose.
        if preceded || name.ends_with('_') || rest.starts_with('.') {
            continue;
        }
        let mut matchers = Vec::new();
        if let Some(body) = rest.strip_prefix('{') {
            let close = body.find('}').unwrap_or(body.len());
            for m in body[..close].split(',').filter(|m| !m.trim().is_empty()) {
                let op_at = m.find(['=', '!']).unwrap_or(m.len());
                let label = m[..op_at].trim().to_owned();
                let after = &m[op_at..];
                let op_len = after.find('"').unwrap_or(after.len());
                let op = after[..op_len].trim().to_owned();
                let value = after[op_len..].trim().trim_matches('"').to_owned();
                matchers.push((label, op, value));
            }
        }
        found.push((name.to_owned(), matchers));
    }
    found
}

fn verdict(results: &[GateResult], name: &str) -> Verdict {
    results
        .iter()
        .find(|g| g.name == name)
        .unwrap_or_else(|| panic!("no gate {name}"))
        .verdict
}

/// Every gate that applies passes on a value (samples were there); the others are skipped.
/// Gates in `unjudged` only have to be evaluated on their samples (Pass or Fail).
#[track_caller]
fn all_pass(results: &[GateResult], skipped: &[&str], unjudged: &[&str], what: &str) {
    for g in results {
        if unjudged.contains(&g.name.as_str()) {
            assert!(
                matches!(g.verdict, Verdict::Pass | Verdict::Fail) && g.value.is_some(),
                "{what}: evaluated on its samples: {g:#?}"
            );
            continue;
        }
        let expected = if skipped.contains(&g.name.as_str()) {
            Verdict::Skipped
        } else {
            Verdict::Pass
        };
        assert_eq!(g.verdict, expected, "{what}: {g:#?}");
        if expected == Verdict::Pass {
            assert!(
                g.value.is_some(),
                "{what}: a pass on a value, not on no data: {g:#?}"
            );
        }
    }
}

async fn stack() -> Option<Stack> {
    stack_with_rules(shipped_rules(), false).await
}

/// A stack evaluating `rules`; with `cached`, chat-service has a room cache on its own Redis.
async fn stack_with_rules(rules: String, cached: bool) -> Option<Stack> {
    ficus_testkit::init();
    let pg = match Postgres::shared() {
        Ok(pg) => pg,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return None;
        }
    };
    let legacy_url = pg
        .create_database("gates_legacy")
        .await
        .expect("legacy database");
    let new_url = pg.create_database("gates_new").await.expect("new database");

    let redis = match cached.then(ficus_testkit::Redis::start).transpose() {
        Ok(redis) => redis,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return None;
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = dir.path().join("flags");
    // Shadow: legacy primary, dual writes, every read shadow-compared, nobody on the new system.
    write_flags(&flags, 1, "legacy", 100, 0);
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        store: StoreChoice::Router {
            new: NewStoreChoice::Postgres {
                database_url: new_url.clone(),
            },
            outbox_max_attempts: 10,
            outbox_inline_grace: Duration::from_secs(30),
            switch_settle: Duration::from_secs(60),
        },
        database_url: legacy_url.clone(),
        database_max_connections: 20,
        jwt_secret: JWT_SECRET.to_vec(),
        encryption_key: EncryptionKey::random(),
        previous_keys: vec![],
        nats_url: None,
        events_retention: std::time::Duration::from_secs(3600),
        cache: redis.as_ref().map(|r| chat_service::config::CacheConfig {
            redis_url: r.url(),
            ttl: Duration::from_secs(300),
        }),
        flags: FlagSource::File(flags.clone()),
        limits: Limits::default(),
    };
    let server = serve::bind(config).await.expect("chat-service starts");
    let addr = server.local_addr();
    let server = tokio::spawn(async move {
        let _ = server.run(std::future::pending()).await;
    });
    let prometheus = match Prometheus::start(PrometheusConfig {
        targets: vec![addr.to_string()],
        rules: Some(rules),
        alertmanager: None,
        // As the chart's scrape config would label the pods of the example's namespace (the
        // example's appliedGenerationQuery selects on it).
        labels: [("namespace".to_owned(), "chat".to_owned())].into(),
    }) {
        Ok(p) => p,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return None;
        }
    };
    prometheus
        .wait_for_targets(Duration::from_secs(30))
        .await
        .expect("Prometheus scrapes chat-service");
    let evaluator =
        Evaluator::new(&prometheus.url(), Duration::from_secs(5)).expect("an evaluator");
    let new_db = PgPool::connect(&new_url).await.expect("new database");
    let legacy_db = PgPool::connect(&legacy_url).await.expect("legacy database");
    Some(Stack {
        base_url: format!("http://{addr}"),
        prometheus,
        evaluator,
        gates: example_gates(),
        flags,
        new_db,
        new_url,
        legacy_db,
        _dir: dir,
        _server: server,
        redis,
    })
}

/// Every shipped gate but drift, and every rule but the drift alert: healthy traffic passes
/// through Shadow, Split 50 % and CutOver; latency and errors on the new store fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_gates_pass_a_healthy_migration_and_fail_errors_and_latency() {
    healthy_then_regressions(false).await;
}

/// The drift gate and `ChatDataInconsistency` too: silent on healthy concurrent traffic (writes
/// in flight are re-read, not counted), failing on lost writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_drift_gate_passes_healthy_traffic_and_fails_lost_writes() {
    healthy_then_regressions(true).await;
}

/// `ChatMessageThroughputDrop` (stored messages per second under half of an hour earlier),
/// its hour scaled to 40 s and its 5-minute rates to 10 s: silent while the load sends
/// steadily, firing once it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_throughput_alert_fires_when_sends_stop_and_not_before() {
    let _one = ONE_AT_A_TIME.lock().await;
    let rules = shipped_rules().replace("offset 1h", "offset 40s").replace(
        "chat_messages_sent_total[5m]",
        "chat_messages_sent_total[10s]",
    );
    let Some(s) = stack_with_rules(rules, false).await else {
        return;
    };
    // 80 s of steady sends: the last 40 s are compared with the 40 before.
    let start = Instant::now();
    let mut fired = false;
    while start.elapsed() < Duration::from_secs(80) {
        s.traffic(4).await;
        fired |= s
            .firing()
            .await
            .iter()
            .any(|a| a == "ChatMessageThroughputDrop");
    }
    assert!(!fired, "ChatMessageThroughputDrop fired on steady traffic");
    let stopped = Instant::now();
    while !s
        .firing()
        .await
        .iter()
        .any(|a| a == "ChatMessageThroughputDrop")
    {
        assert!(
            stopped.elapsed() < Duration::from_secs(40),
            "ChatMessageThroughputDrop never fired after the sends stopped"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "ChatMessageThroughputDrop fired {:?} after the sends stopped",
        stopped.elapsed()
    );
}

/// The cache alerts, their hour scaled to 40 s and their 5-minute rates to 10 s, on reads the
/// cache can answer (room lists nobody writes to): silent while Redis serves them, both firing
/// once Redis goes away (the reads still answered, by the stores), ChatCacheDown silent again
/// once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_alerts_fire_when_redis_goes_away_and_not_before() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut rules = shipped_rules().replace("offset 1h", "offset 40s");
    for series in [
        r#"chat_cache_operations_total{operation="get",status="hit"}[5m]"#,
        r#"chat_cache_operations_total{operation="get"}[5m]"#,
    ] {
        rules = rules.replace(series, &series.replace("[5m]", "[10s]"));
    }
    let Some(s) = stack_with_rules(rules, true).await else {
        return;
    };
    let client = chat_service::client::ChatClient::new(&s.base_url, JWT_SECRET);
    let users: Vec<chat_service::ids::UserId> =
        (2_000..2_010).map(chat_service::ids::UserId).collect();
    for pair in users.chunks(2) {
        client
            .create_room(pair[0], "cached", "group", &[pair[1]])
            .await
            .expect("a room");
    }
    let reads = |secs: u64| {
        let (client, users) = (&client, &users);
        async move {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(secs) {
                for user in users {
                    client.rooms(*user, 1, 20).await.expect("GetRooms answers");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let cache_alerts = || async {
        let mut firing = s.firing().await;
        firing.retain(|a| a.starts_with("ChatCache"));
        firing
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(80) {
        reads(4).await;
        assert_eq!(
            cache_alerts().await,
            Vec::<String>::new(),
            "a cache alert fired while Redis served the reads"
        );
    }

    let redis = s.redis.as_ref().expect("the stack's Redis");
    redis.stop();
    let stopped = Instant::now();
    let both = vec!["ChatCacheDown".to_owned(), "ChatCacheHitRateLow".to_owned()];
    loop {
        reads(2).await;
        let firing = cache_alerts().await;
        if firing == both {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "the cache alerts did not both fire with Redis away; firing: {firing:?}"
        );
    }
    println!(
        "both cache alerts fired {:?} after Redis stopped",
        stopped.elapsed()
    );
    redis.restart().expect("Redis restarts");
    let back = Instant::now();
    while cache_alerts().await.iter().any(|a| a == "ChatCacheDown") {
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "ChatCacheDown still fires with Redis back"
        );
        reads(2).await;
    }
}

/// The alerts comparing the cohorts.
const COHORT_ALERTS: [&str; 2] = ["ChatNewErrorRateAboveLegacy", "ChatNewLatencyAboveLegacy"];

/// One stack at a time: two on two cores make latency (a p99 ratio) noise, not evidence.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn healthy_then_regressions(judge_drift: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(s) = stack().await else {
        return;
    };
    let cohort_gates = ["error-delta", "p99-ratio"];
    let unjudged: &[&str] = if judge_drift { &[] } else { &["drift"] };
    // Without judging drift, its alert is not judged either.
    let firing = || async {
        let mut f = s.firing().await;
        if !judge_drift {
            f.retain(|a| a != "ChatDataInconsistency");
        }
        f
    };

    // Shadow: one cohort (legacy); the comparisons are skipped, the rest pass on samples.
    let shadow = s.settled(0).await;
    all_pass(
        &shadow,
        &["error-delta", "p99-ratio", "p99"],
        unjudged,
        "Shadow",
    );

    // Split 50 %: both cohorts carry users; every gate applies and passes.
    write_flags(&s.flags, 2, "legacy", 100, 50);
    let split = s.settled(50).await;
    all_pass(&split, &[], unjudged, "Split 50 %");
    assert_eq!(
        firing().await,
        Vec::<String>::new(),
        "no shipped alert fires on healthy traffic"
    );
    s.every_selector_has_samples().await;

    // CutOver: the new system primary, legacy kept in sync; one cohort (new) again.
    write_flags(&s.flags, 3, "new", 100, 100);
    let cutover = s.settled(100).await;
    all_pass(&cutover, &cohort_gates, unjudged, "CutOver");
    // The cohort comparisons hold only while both cohorts were served in the last minute:
    // once the legacy cohort's last requests are that old, they stay silent even though those
    // requests are still in their 5m windows (the new cohort is slower in CutOver: it writes
    // both stores). One test waits that minute out; the other does not judge them here.
    let mut after_cutover = firing().await;
    if judge_drift {
        after_cutover.retain(|a| !COHORT_ALERTS.contains(&a.as_str()));
    } else {
        s.traffic(65).await;
        after_cutover = firing().await;
    }
    assert_eq!(
        after_cutover,
        Vec::<String>::new(),
        "no alert fires after a healthy cut-over"
    );

    // Back at 50 % for the regressions, each checked on its own gate and alert.
    write_flags(&s.flags, 4, "legacy", 100, 50);
    s.settled(50).await;

    if judge_drift {
        lose_writes(&s).await;
    }

    // Latency: the new store's membership table is locked for 300 ms at a time, so the new
    // cohort's room lists wait. The legacy cohort's requests do not touch that table on the
    // new store (its sends write messages there; the load's rooms are created by a user of the
    // new cohort), so only one cohort is slowed, as with a new store slow to read. Short
    // holds keep the pool from running dry: a store whose pool is exhausted fails its pings,
    // is taken for down, and the new cohort is served from legacy (no latency left to see).
    // Shadow reads at the example's 10 %: at 100 % the legacy cohort's shadow reads wait on the
    // lock too and hold the new store's connections, and its sends (dual-written, `sync`)
    // then wait for a connection: the legacy cohort gets as slow as the new one.
    write_flags(&s.flags, 5, "legacy", 10, 50);
    s.settled(50).await;
    let locker = s.new_db.clone();
    let lock = tokio::spawn(async move {
        loop {
            let mut tx = locker.begin().await.expect("transaction");
            sqlx::query("lock table room_member in access exclusive mode")
                .execute(&mut *tx)
                .await
                .expect("lock");
            tokio::time::sleep(Duration::from_millis(300)).await;
            tx.commit().await.expect("unlock");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    s.until_firing("ChatNewLatencyAboveLegacy").await;
    s.until_gate_fails("p99-ratio", 50).await;
    // The same slow reads, seen from the stores' side.
    s.until_firing("ChatHighDatabaseLatency").await;
    lock.abort();

    // Slow message writes; not after lost writes: the rooms' copies then wait behind their
    // outbox entries (the retry queue is long), so sends do not wait for the new store at all.
    if !judge_drift {
        slow_message_writes(&s).await;
    }

    // The new store goes away: once the router takes it for down, its copies are not tried
    // (`skipped`, left to the outbox). They are failed dual writes for the alert, which must
    // fire once they are a tenth of the window's (minutes of healthy writes dilute them).
    let (admin, new_name) = (&s.legacy_db, s.new_database());
    for statement in [
        format!("alter database \"{new_name}\" allow_connections false"),
        format!(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = '{new_name}'"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(admin)
            .await
            .expect("new store down");
    }
    s.until_firing_within("ChatDualWriteFailureRate", Duration::from_secs(150))
        .await;
    // Its health pings fail too (every 5 s, whether or not anyone writes).
    s.until_firing("ChatDatabaseConnectionFailure").await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "alter database \"{new_name}\" allow_connections true"
    )))
    .execute(admin)
    .await
    .expect("new store back");
    s.traffic(5).await;
    s.until_silent("ChatDatabaseConnectionFailure").await;

    // Errors: the new store loses its membership table; the new cohort's room lists fail.
    sqlx::query("alter table room_member rename to room_member_gone")
        .execute(&s.new_db)
        .await
        .expect("table renamed");
    s.until_firing("ChatNewErrorRateAboveLegacy").await;
    s.until_gate_fails("error-delta", 50).await;
}

/// Slow message writes on the new store: a trigger makes every insert into its message table
/// take 150 ms more. Every send waits for its copy there (`sync`), so half the stores'
/// insert_message calls are slow. Not a table lock: that would hold the new cohort's history
/// reads too, exhaust the new store's pool, fail its pings and take it for down, and the sends
/// would then skip it (nothing slow left to see).
async fn slow_message_writes(s: &Stack) {
    for statement in [
        "create function slow_insert() returns trigger language plpgsql as $$ begin perform pg_sleep(0.15); return new; end $$",
        "create trigger slow_inserts before insert on room_message for each row execute function slow_insert()",
    ] {
        sqlx::query(statement)
            .execute(&s.new_db)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    s.until_firing("ChatHighMessageLatency").await;
    for statement in [
        "drop trigger slow_inserts on room_message",
        "drop function slow_insert()",
    ] {
        sqlx::query(statement)
            .execute(&s.new_db)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// Drift: the new store loses its messages, and silently drops every new one (as a store with a
/// lost-write bug would), so shadow reads keep finding them missing.
async fn lose_writes(s: &Stack) {
    for statement in [
        "create function lose_write() returns trigger language plpgsql as $$ begin return null; end $$",
        "create trigger lose_writes before insert on room_message for each row execute function lose_write()",
        "delete from room_message",
    ] {
        sqlx::query(statement)
            .execute(&s.new_db)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    s.until_firing("ChatDataInconsistency").await;
    // The gate and the alert divide the same counters over a rolling window, evaluated at
    // different moments: the gate fails within the minute too.
    s.until_gate_fails("drift", 50).await;
}
