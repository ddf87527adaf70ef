//! time-to-rollback: from the moment the evidence turns bad to the moment the flag ConfigMap
//! shows the safe state (0 % new, legacy primary), against a real API server, Prometheus and
//! Alertmanager. Prints min/median/max per path; asserts nothing.
//!
//! `cargo run --release -p ficus-e2e --bin bench-rollback [-- RUNS]`

use std::time::{Duration, Instant};

use ficus_e2e::evidence::{ALERT, DRIFT, Evidence, EvidenceOptions, HEALTHY_DRIFT, WEBHOOK_TOKEN};
use ficus_e2e::operator::{Operator, install_crds};
use ficus_operator::crd::Migration;
use ficus_operator::run::Config;
use ficus_testkit::{ControlPlane, create_namespace, unique_namespace};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, PostParams};
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
            Path::Gate => "gate fails (failureLimit 1): exporter bad -> flags safe",
            Path::AlertPushed => "alert via Alertmanager webhook: exporter bad -> flags safe",
            Path::AlertPolled => "alert via polled ALERTS: exporter bad -> flags safe",
            Path::WebhookToFlags => "webhook push received -> flags safe (operator only)",
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    ficus_testkit::init();
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let cp = ControlPlane::start()?;
    install_crds(&cp)?;
    let client = cp.client().await?;
    let evidence = Evidence::start(EvidenceOptions {
        alert_rule: true,
        alertmanager: true,
    })
    .await?;

    println!("time-to-rollback, {runs} runs per path");
    println!(
        "settings: Prometheus scrape 1s and rule evaluation 1s; gate interval 1s; Alertmanager group_wait 0s, group_interval 1s"
    );
    for path in [
        Path::Gate,
        Path::AlertPushed,
        Path::AlertPolled,
        Path::WebhookToFlags,
    ] {
        let mut samples = Vec::new();
        for _ in 0..runs {
            let took = run_once(path, &client, &evidence)
                .await
                .map_err(|e| format!("{}: {e}", path.describe()))?;
            samples.push(took);
        }
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:<62} min {:>7.0} ms  median {:>7.0} ms  max {:>7.0} ms",
            path.describe(),
            ms(samples[0]),
            ms(samples[samples.len() / 2]),
            ms(samples[samples.len() - 1])
        );
    }
    Ok(())
}

async fn run_once(path: Path, client: &Client, evidence: &Evidence) -> Result<Duration, BoxError> {
    let prometheus = &evidence.prometheus;
    // Quiet start: the metric is healthy and no alert is firing anywhere. Prometheus must have
    // scraped the healthy value already: a gate reading the previous run's bad one would roll
    // this run back before its first step.
    evidence.set_drift(HEALTHY_DRIFT);
    let healthy = |s: &[ficus_testkit::Sample]| {
        (!s.is_empty() && s.iter().all(|s| s.value == HEALTHY_DRIFT)).then_some(())
    };
    prometheus.wait_for(DRIFT, TIMEOUT, healthy).await?;
    prometheus
        .wait_for("ALERTS", TIMEOUT, |s| s.is_empty().then_some(()))
        .await?;
    // Alertmanager too: an alert it still holds from the previous run would be pushed to this
    // run's operator at once and make the run look instant.
    if let Some(alertmanager) = &evidence.alertmanager {
        let start = Instant::now();
        while !alertmanager.active_alerts()?.is_empty() {
            if start.elapsed() > TIMEOUT {
                return Err("Alertmanager still holds an alert from the previous run".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let ns = unique_namespace("bench");
    create_namespace(client, &ns).await?;
    let config = Config {
        namespace: Some(ns.clone()),
        identity: "bench".into(),
        leader: None,
        http_addr: Some(evidence.operator_addr),
        webhook_token: Some(WEBHOOK_TOKEN.into()),
        aws: Default::default(),
    };
    let operator = Operator::start_with(client.clone(), config);
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
    wait_flags(&cms, "10").await?;

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
    wait_flags(&cms, "0").await?;
    let took = start.elapsed();
    drop(operator);
    // The operator's HTTP port is reused by the next run: give the listener time to close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(took)
}

/// Polls the flag ConfigMap every 5 ms until `read_split_percent` has the value.
async fn wait_flags(cms: &Api<ConfigMap>, split: &str) -> Result<(), BoxError> {
    let start = Instant::now();
    while start.elapsed() < TIMEOUT {
        if let Some(cm) = cms.get_opt("flags").await? {
            let data = cm.data.unwrap_or_default();
            let safe =
                split != "0" || data.get("write_primary").map(String::as_str) == Some("legacy");
            if data.get("read_split_percent").map(String::as_str) == Some(split) && safe {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!("flags never reached read_split_percent={split}").into())
}
