//! time-to-rollback: from the moment the evidence turns bad to the moment the flag ConfigMap
//! shows the safe state (0 % new, legacy primary), against a real API server, Prometheus and
//! Alertmanager. Prints percentiles per path and the time of each hop; asserts nothing.
//!
//! The evidence is synthetic (`ficus_e2e::evidence`): a gauge the benchmark sets and an alert
//! rule that fires on its first evaluation (`for: 0s`). What is measured is the operator and the
//! pipeline in front of it, not the shipped rules, whose `for:` adds minutes on purpose.
//!
//! Every run is independent: its own Prometheus, its own Alertmanager (pushed path only), its
//! own operator port and namespace, so no group, notification log, retried notification or
//! leftover alert carries over from the previous run. The polled path has no Alertmanager, the
//! pushed path no Prometheus URL in the Migration, so each measures one path only. The bad value
//! is set at a random point of the 1 s scrape/evaluation cycle, so runs are not phase-locked to
//! it.
//!
//! `cargo run --release -p ficus-e2e --bin bench-rollback [-- RUNS]` (default 30 per path)

use std::time::{Duration, Instant};

use ficus_e2e::evidence::{ALERT, DRIFT, Evidence, EvidenceOptions, WEBHOOK_TOKEN};
use ficus_e2e::operator::{Operator, install_crds};
use ficus_operator::crd::Migration;
use ficus_operator::run::Config;
use ficus_testkit::{ControlPlane, create_namespace, unique_namespace};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use rand::Rng;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Gate,
    AlertPushed,
    AlertPolled,
    WebhookToFlags,
}

impl Path {
    fn describe(self) -> &'static str {
        match self {
            Path::Gate => "gate fails (failureLimit 1): value bad -> flags safe",
            Path::AlertPushed => "alert pushed by Alertmanager: value bad -> flags safe",
            Path::AlertPolled => "alert found by polling ALERTS: value bad -> flags safe",
            Path::WebhookToFlags => "webhook POST sent -> flags safe (operator only)",
        }
    }

    fn options(self) -> EvidenceOptions {
        EvidenceOptions {
            alert_rule: matches!(self, Path::AlertPushed | Path::AlertPolled),
            alertmanager: self == Path::AlertPushed,
        }
    }
}

/// When each hop was seen, in ms after the value turned bad (or the webhook POST was sent).
#[derive(Default)]
struct Hops {
    /// Prometheus's `activeAt` of the alert (its own clock, not polled).
    alert_active: Option<f64>,
    /// The operator wrote the pushed alert onto the Migration (`ficus.dev/firing-alerts`),
    /// i.e. it received the webhook; polled every 5 ms.
    webhook_received: Option<f64>,
    /// The flag ConfigMap shows the safe state; polled every 5 ms.
    flags_safe: f64,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    ficus_testkit::init();
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let cp = ControlPlane::start()?;
    install_crds(&cp)?;
    let client = cp.client().await?;

    println!("time-to-rollback, {runs} independent runs per path");
    println!(
        "settings: Prometheus scrape 1s and rule evaluation 1s; gate interval 1s; synthetic rule for: 0s; Alertmanager group_wait 0s, group_interval 1s (a fresh one per run); start at a random point of the 1s cycle"
    );
    for path in [
        Path::Gate,
        Path::AlertPushed,
        Path::AlertPolled,
        Path::WebhookToFlags,
    ] {
        let mut all = Vec::new();
        for _ in 0..runs {
            let hops = run_once(path, &client)
                .await
                .map_err(|e| format!("{}: {e}", path.describe()))?;
            all.push(hops);
        }
        let total: Vec<f64> = all.iter().map(|h| h.flags_safe).collect();
        println!(
            "{:<58} {}",
            path.describe(),
            percentiles(&total).unwrap_or_default()
        );
        let active: Vec<f64> = all.iter().filter_map(|h| h.alert_active).collect();
        if let Some(p) = percentiles(&active) {
            println!("    {:<54} {p}", "ALERTS activeAt");
        }
        let received: Vec<f64> = all.iter().filter_map(|h| h.webhook_received).collect();
        if let Some(p) = percentiles(&received) {
            println!("    {:<54} {p}", "webhook received (annotation written)");
        }
    }
    Ok(())
}

/// `p50 … p90 … min … max` of `ms`, or None when empty.
fn percentiles(ms: &[f64]) -> Option<String> {
    if ms.is_empty() {
        return None;
    }
    let mut sorted = ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    Some(format!(
        "p50 {:>6.0} ms  p90 {:>6.0} ms  min {:>6.0} ms  max {:>6.0} ms  (n={})",
        at(0.5),
        at(0.9),
        sorted[0],
        sorted[sorted.len() - 1],
        sorted.len()
    ))
}

async fn run_once(path: Path, client: &Client) -> Result<Hops, BoxError> {
    // A fresh stack per run: healthy, with Prometheus holding a healthy sample already.
    let mut evidence = Evidence::start(path.options()).await?;
    let prometheus = &evidence.prometheus;
    let ns = unique_namespace("bench");
    create_namespace(client, &ns).await?;
    let config = Config {
        namespace: Some(ns.clone()),
        identity: "bench".into(),
        leader: None,
        http_addr: None,
        webhook_token: Some(WEBHOOK_TOKEN.into()),
        aws: Default::default(),
        policy: None,
    };
    let listener = evidence.operator_listener.take();
    let operator = Operator::start_with(client.clone(), config, listener)?;
    let api: Api<Migration> = Api::namespaced(client.clone(), &ns);
    let mut spec = json!({
        "service": "chat",
        "flags": { "configMap": { "name": "flags" } },
        "shadow": { "duration": "0s" },
        "steps": [10, 50],
        "bakeTime": "1h",
        "rollback": { "onAlerts": [ALERT] },
    });
    match path {
        Path::Gate => {
            spec["rollback"] = json!({ "onAlerts": [] });
            spec["analysis"] = json!({
                "prometheus": { "url": prometheus.url() }, "interval": "1s", "failureLimit": 1,
                "gates": [{ "name": "drift", "query": format!("max({DRIFT})"), "max": 0.01 }],
            });
        }
        Path::AlertPolled => {
            spec["analysis"] =
                json!({ "prometheus": { "url": prometheus.url() }, "interval": "1s" })
        }
        Path::AlertPushed | Path::WebhookToFlags => {}
    }
    let m: Migration = serde_json::from_value(
        json!({ "apiVersion": "ficus.dev/v1alpha1", "kind": "Migration", "metadata": { "name": "m" }, "spec": spec }),
    )?;
    api.create(&PostParams::default(), &m).await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    wait_flags(&cms, "10", &operator).await?;

    // Not phase-locked to the scrape/evaluation cycle: start anywhere in it.
    let offset = rand::rng().random_range(0..1000);
    tokio::time::sleep(Duration::from_millis(offset)).await;

    let started = Timestamp::now();
    let start = Instant::now();
    if path == Path::WebhookToFlags {
        let body = json!({ "alerts": [{ "status": "firing", "labels": { "alertname": ALERT, "service": "chat" } }] });
        let response = prometheus_http_query::reqwest::Client::new()
            .post(evidence.webhook_url())
            .bearer_auth(WEBHOOK_TOKEN)
            .json(&body)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!("webhook answered {}", response.status()).into());
        }
    } else {
        evidence.set_drift(0.5);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut hops = Hops::default();
    let http = prometheus_http_query::reqwest::Client::new();
    loop {
        if start.elapsed() > TIMEOUT {
            return Err("flags never reached the safe state".into());
        }
        operator.assert_running();
        if path == Path::AlertPushed && hops.webhook_received.is_none() {
            let m = api.get("m").await?;
            if m.annotations().contains_key("ficus.dev/firing-alerts") {
                hops.webhook_received = Some(ms(start.elapsed()));
            }
        }
        if matches!(path, Path::AlertPushed | Path::AlertPolled)
            && hops.alert_active.is_none()
            && let Some(at) = active_at(&http, &prometheus.url()).await?
        {
            let since = at.duration_since(started);
            hops.alert_active = Some(since.as_secs_f64() * 1000.0);
        }
        if flags_are(&cms, "0").await? {
            hops.flags_safe = ms(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if matches!(path, Path::AlertPushed | Path::AlertPolled) && hops.alert_active.is_none() {
        hops.alert_active = active_at(&http, &prometheus.url())
            .await?
            .map(|at| at.duration_since(started).as_secs_f64() * 1000.0);
    }
    Ok(hops)
}

/// `activeAt` of the firing [`ALERT`] from Prometheus's `/api/v1/alerts`.
async fn active_at(
    http: &prometheus_http_query::reqwest::Client,
    prometheus: &str,
) -> Result<Option<Timestamp>, BoxError> {
    let body: serde_json::Value = http
        .get(format!("{prometheus}/api/v1/alerts"))
        .send()
        .await?
        .json()
        .await?;
    let alerts = body["data"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let at = alerts
        .iter()
        .find(|a| a["labels"]["alertname"] == ALERT && a["state"] == "firing")
        .and_then(|a| a["activeAt"].as_str())
        .map(str::parse::<Timestamp>)
        .transpose()?;
    Ok(at)
}

/// Whether the flag ConfigMap has `read_split_percent` = `split` (and, for "0", legacy primary).
async fn flags_are(cms: &Api<ConfigMap>, split: &str) -> Result<bool, BoxError> {
    let Some(cm) = cms.get_opt("flags").await? else {
        return Ok(false);
    };
    let data = cm.data.unwrap_or_default();
    let safe = split != "0" || data.get("write_primary").map(String::as_str) == Some("legacy");
    Ok(data.get("read_split_percent").map(String::as_str) == Some(split) && safe)
}

/// Polls the flag ConfigMap every 5 ms until it has the value.
async fn wait_flags(
    cms: &Api<ConfigMap>,
    split: &str,
    operator: &Operator,
) -> Result<(), BoxError> {
    let start = Instant::now();
    while start.elapsed() < TIMEOUT {
        operator.assert_running();
        if flags_are(cms, split).await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!("flags never reached read_split_percent={split}").into())
}
