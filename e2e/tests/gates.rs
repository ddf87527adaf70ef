//! What the operator does with gates and alerts, against real Prometheus and Alertmanager on
//! synthetic evidence (`ficus_e2e::evidence`): a test exporter whose values the test sets is
//! scraped every second; the operator runs against the real API server. The gate here reads a
//! stand-in drift gauge, not a chat-service metric; the shipped gates and rules on a real
//! chat-service are `shipped_gates.rs`.
//!
//! Over 600 lines: one Prometheus/Alertmanager stack per test, built by the helpers at the top.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ficus_e2e::evidence::{DRIFT, Evidence, EvidenceOptions, WEBHOOK_TOKEN};
use ficus_e2e::operator::{Operator, split_steps, test_namespace, wait_for};
use ficus_operator::crd::{Migration, PauseReason, Phase, Verdict};
use ficus_operator::run::Config;
use ficus_testkit::{Prometheus, PrometheusConfig};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

struct Stack {
    client: Client,
    ns: String,
    api: Api<Migration>,
    evidence: Evidence,
    _operator: Operator,
}

/// Control plane (shared), the staged evidence (own exporter, Prometheus and, if asked,
/// Alertmanager posting to the operator's webhook), and an operator for a fresh namespace.
async fn stack(
    prefix: &str,
    alert_rule: bool,
    alertmanager: bool,
) -> anyhow::Result<Option<Stack>> {
    let Some((_cp, client, ns)) = test_namespace(prefix).await? else {
        return Ok(None);
    };
    let options = EvidenceOptions {
        alert_rule,
        alertmanager,
    };
    let mut evidence = match Evidence::start(options).await {
        Ok(evidence) => evidence,
        Err(e) => {
            // Skips locally when Prometheus or Alertmanager is not installed; fails under CI.
            ficus_testkit::skip_or_panic(&e);
            return Ok(None);
        }
    };
    let config = Config {
        namespace: Some(ns.clone()),
        identity: "gates".into(),
        leader: None,
        http_addr: None,
        webhook_token: Some(WEBHOOK_TOKEN.into()),
        aws: Default::default(),
        policy: None,
    };
    let listener = evidence.operator_listener.take();
    let operator = Operator::start_with(client.clone(), config, listener)?;
    let api = Api::namespaced(client.clone(), &ns);
    Ok(Some(Stack {
        client,
        ns,
        api,
        evidence,
        _operator: operator,
    }))
}

fn gated(prometheus: &str, bake: &str, failure_limit: i32, interval: &str) -> serde_json::Value {
    json!({
        "service": "chat",
        "flags": { "configMap": { "name": "flags" } },
        "shadow": { "duration": "0s" },
        "steps": [10, 50],
        "bakeTime": bake,
        "analysis": {
            "prometheus": { "url": prometheus },
            "interval": interval,
            "failureLimit": failure_limit,
            "inconclusiveLimit": 3,
            "gates": [{ "name": "drift", "query": format!("max({DRIFT})"), "max": 0.01 }],
        },
        "cutover": { "completeAfter": "1h" },
    })
}

async fn create(api: &Api<Migration>, spec: serde_json::Value) -> anyhow::Result<()> {
    let m: Migration = serde_json::from_value(json!({
        "apiVersion": "ficus.dev/v1alpha1", "kind": "Migration", "metadata": { "name": "m" }, "spec": spec,
    }))?;
    api.create(&PostParams::default(), &m).await?;
    Ok(())
}

fn phase(m: &Migration) -> Phase {
    m.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn step(m: &Migration) -> Option<i32> {
    m.status.as_ref().and_then(|s| s.step)
}

async fn flags(client: &Client, ns: &str) -> BTreeMap<String, String> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.get_opt("flags")
        .await
        .ok()
        .flatten()
        .and_then(|c| c.data)
        .unwrap_or_default()
}

#[tokio::test]
async fn healthy_gates_promote_step_by_step_after_the_bake() -> anyhow::Result<()> {
    let Some(s) = stack("gates-healthy", false, false).await? else {
        return Ok(());
    };
    create(&s.api, gated(&s.evidence.prometheus.url(), "2s", 2, "1s")).await?;
    let done = wait_for(&s.api, "m", LONG, "CutOver", |m| phase(m) == Phase::CutOver).await;
    assert_eq!(split_steps(&done), vec![10, 50]);
    let status = done.status.expect("status");
    let gate = &status
        .last_analysis
        .expect("an analysis was recorded")
        .gates[0];
    assert_eq!(
        (gate.name.as_str(), gate.verdict, gate.value, gate.max),
        ("drift", Verdict::Pass, Some(0.001), Some(0.01))
    );
    assert_eq!(status.healthy, Some(ficus_operator::crd::Health::True));
    Ok(())
}

#[tokio::test]
async fn a_failing_gate_rolls_back_after_exactly_failure_limit_evaluations() -> anyhow::Result<()> {
    let Some(s) = stack("gates-fail", false, false).await? else {
        return Ok(());
    };
    // Evaluations every 2 s so every count is observable; 3 failures roll back.
    create(&s.api, gated(&s.evidence.prometheus.url(), "1h", 3, "2s")).await?;
    wait_for(&s.api, "m", LONG, "step 1", |m| step(m) == Some(1)).await;
    s.evidence.set_drift(0.2);

    let mut counts = Vec::new();
    let start = Instant::now();
    let rolled = loop {
        assert!(
            start.elapsed() < LONG,
            "no rollback; failure counts seen: {counts:?}"
        );
        let m = s.api.get("m").await?;
        match phase(&m) {
            Phase::RollingBack | Phase::RolledBack => break m,
            _ => {
                let c = m.status.as_ref().map_or(0, |s| s.consecutive_failures);
                if counts.last() != Some(&c) {
                    counts.push(c);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        counts,
        vec![0, 1, 2],
        "rolled back on the 3rd failing evaluation, not before"
    );
    let record = rolled
        .status
        .as_ref()
        .and_then(|s| s.last_rollback.clone())
        .expect("a rollback record");
    assert_eq!(record.reason, "GateFailed");
    assert!(
        record.message.contains("drift = 0.2") && record.message.contains("max 0.01"),
        "the value and threshold are recorded: {}",
        record.message
    );
    wait_for(&s.api, "m", LONG, "RolledBack", |m| {
        phase(m) == Phase::RolledBack
    })
    .await;
    let f = flags(&s.client, &s.ns).await;
    assert_eq!(
        (
            f["read_split_percent"].as_str(),
            f["write_primary"].as_str()
        ),
        ("0", "legacy")
    );
    Ok(())
}

#[tokio::test]
async fn missing_data_pauses_after_the_inconclusive_limit_and_resumes_when_it_returns()
-> anyhow::Result<()> {
    let Some(s) = stack("gates-nodata", false, false).await? else {
        return Ok(());
    };
    create(&s.api, gated(&s.evidence.prometheus.url(), "4s", 2, "1s")).await?;
    wait_for(&s.api, "m", LONG, "step 1", |m| step(m) == Some(1)).await;
    s.evidence.remove_drift();
    let paused = wait_for(&s.api, "m", LONG, "Paused", |m| phase(m) == Phase::Paused).await;
    let status = paused.status.clone().expect("status");
    assert_eq!(
        status.paused.as_ref().map(|p| (p.from, p.reason)),
        Some((Phase::Split, PauseReason::Inconclusive))
    );
    assert_eq!(status.step, Some(1), "no promotion on missing evidence");
    assert_eq!(
        flags(&s.client, &s.ns).await["read_split_percent"],
        "10",
        "pausing changes nothing for users"
    );
    let progressing = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .expect("condition");
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("False", "Inconclusive")
    );

    // NaN (0/0 at no traffic) is no evidence either: still paused.
    s.evidence.set_drift(f64::NAN);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(phase(&s.api.get("m").await?), Phase::Paused);

    s.evidence.set_drift(0.001);
    wait_for(&s.api, "m", LONG, "resumed and promoted to step 2", |m| {
        step(m) == Some(2) && phase(m) == Phase::Split
    })
    .await;
    Ok(())
}

#[tokio::test]
async fn prometheus_down_pauses_without_promotion_and_its_return_continues() -> anyhow::Result<()> {
    let Some(s) = stack("gates-down", false, false).await? else {
        return Ok(());
    };
    create(&s.api, gated(&s.evidence.prometheus.url(), "4s", 2, "1s")).await?;
    wait_for(&s.api, "m", LONG, "step 1", |m| step(m) == Some(1)).await;
    s.evidence.prometheus.stop();
    let paused = wait_for(&s.api, "m", LONG, "Paused", |m| phase(m) == Phase::Paused).await;
    assert_eq!(step(&paused), Some(1));
    let gate = &paused
        .status
        .as_ref()
        .and_then(|s| s.last_analysis.clone())
        .expect("analysis")
        .gates[0];
    assert_eq!(gate.verdict, Verdict::Inconclusive);
    assert!(
        gate.message
            .as_deref()
            .unwrap_or_default()
            .contains("unreachable"),
        "{gate:?}"
    );

    s.evidence.prometheus.restart()?;
    s.evidence
        .prometheus
        .wait_for_targets(Duration::from_secs(30))
        .await?;
    wait_for(&s.api, "m", LONG, "step 2 after Prometheus returned", |m| {
        step(m) == Some(2)
    })
    .await;
    Ok(())
}

#[tokio::test]
async fn an_invalid_query_is_degraded_with_prometheus_message_and_never_rolls_back()
-> anyhow::Result<()> {
    let Some(s) = stack("gates-invalid", false, false).await? else {
        return Ok(());
    };
    let mut spec = gated(&s.evidence.prometheus.url(), "1s", 1, "1s");
    spec["analysis"]["gates"][0]["query"] = json!("sum(rate(chat_requests_total[5m])");
    create(&s.api, spec).await?;
    let degraded = wait_for(&s.api, "m", LONG, "Degraded", |m| {
        m.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.status == "True")
        })
    })
    .await;
    let condition = degraded
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded").cloned())
        .expect("Degraded");
    assert_eq!(condition.reason, "InvalidQuery");
    assert!(
        condition.message.contains("parse error"),
        "Prometheus's own message: {}",
        condition.message
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        phase(&s.api.get("m").await?),
        Phase::Preflight,
        "no promotion and no rollback on a spec problem"
    );
    Ok(())
}

fn alert_only(prometheus: Option<&str>) -> serde_json::Value {
    let mut spec = json!({
        "service": "chat",
        "flags": { "configMap": { "name": "flags" } },
        "shadow": { "duration": "0s" },
        "steps": [10, 50],
        "bakeTime": "1h",
        "rollback": { "onAlerts": ["ChatDataInconsistency"] },
    });
    if let Some(url) = prometheus {
        spec["analysis"] = json!({ "prometheus": { "url": url }, "interval": "1s" });
    }
    spec
}

#[tokio::test]
async fn a_firing_alert_pushed_by_alertmanager_rolls_back_and_unauthenticated_calls_are_refused()
-> anyhow::Result<()> {
    let Some(s) = stack("alerts-push", true, true).await? else {
        return Ok(());
    };
    // No analysis section: only the pushed path can roll this Migration back.
    create(&s.api, alert_only(None)).await?;
    wait_for(&s.api, "m", LONG, "step 1", |m| step(m) == Some(1)).await;

    let http = prometheus_http_query::reqwest::Client::new();
    let url = s.evidence.webhook_url();
    let forged = json!({ "alerts": [{ "status": "firing", "labels": { "alertname": "ChatDataInconsistency", "service": "chat" } }] });
    let anonymous = http.post(&url).json(&forged).send().await?;
    assert_eq!(anonymous.status().as_u16(), 401);
    let wrong = http
        .post(&url)
        .bearer_auth("guess")
        .json(&forged)
        .send()
        .await?;
    assert_eq!(wrong.status().as_u16(), 401);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        step(&s.api.get("m").await?),
        Some(1),
        "an unauthenticated call changes nothing"
    );

    s.evidence.set_drift(0.5);
    let rolled = wait_for(&s.api, "m", LONG, "RolledBack", |m| {
        phase(m) == Phase::RolledBack
    })
    .await;
    let record = rolled
        .status
        .and_then(|s| s.last_rollback)
        .expect("rollback record");
    assert_eq!(
        (record.reason.as_str(), record.message.as_str()),
        ("AlertFiring", "alert ChatDataInconsistency is firing")
    );
    assert_eq!(flags(&s.client, &s.ns).await["read_split_percent"], "0");

    // Resolved: the annotation clears, and a retry is no longer rolled back at once.
    s.evidence.set_drift(0.001);
    wait_for(&s.api, "m", LONG, "alert resolved", |m| {
        !m.annotations().contains_key("ficus.dev/firing-alerts")
    })
    .await;
    let retry = json!({ "metadata": { "annotations": { "ficus.dev/retry": "true" } } });
    s.api
        .patch("m", &PatchParams::default(), &Patch::Merge(&retry))
        .await?;
    wait_for(&s.api, "m", LONG, "step 1 after the retry", |m| {
        phase(m) == Phase::Split && step(m) == Some(1)
    })
    .await;
    // A still-firing alert would roll the retry back on its next reconcile, well within this
    // window (group_interval 1 s, reconcile on the annotation's watch event).
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(3) {
        let m = s.api.get("m").await?;
        assert_eq!(
            (phase(&m), step(&m)),
            (Phase::Split, Some(1)),
            "the retry stays at step 1 once the alert resolved"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_firing_alert_found_by_polling_alerts_rolls_back() -> anyhow::Result<()> {
    let Some(s) = stack("alerts-poll", true, false).await? else {
        return Ok(());
    };
    create(&s.api, alert_only(Some(&s.evidence.prometheus.url()))).await?;
    wait_for(&s.api, "m", LONG, "step 1", |m| step(m) == Some(1)).await;
    s.evidence.set_drift(0.5);
    let rolled = wait_for(&s.api, "m", LONG, "RolledBack", |m| {
        phase(m) == Phase::RolledBack
    })
    .await;
    let record = rolled
        .status
        .as_ref()
        .and_then(|s| s.last_rollback.clone())
        .expect("rollback record");
    assert_eq!(record.reason, "AlertFiring");
    // Polling is the only path here by construction: this stack has no Alertmanager, so
    // nothing can push. The rollback therefore came from the operator's ALERTS poll, which
    // it records.
    assert!(s.evidence.alertmanager.is_none());
    let poll = rolled
        .status
        .as_ref()
        .and_then(|s| s.last_analysis.as_ref())
        .and_then(|a| a.alerts.clone())
        .expect("the ALERTS poll is recorded");
    assert_ne!(poll.verdict, Verdict::Inconclusive, "{poll:?}");
    Ok(())
}

/// The shipped alert rules (the chart's rule file), the example Migration's gate queries and the
/// chart's dashboard queries parse for real Prometheus: the rules load, and every query
/// evaluates without a parse error. Only that: this Prometheus scrapes nothing, so every query
/// returns an empty result, and a misspelled metric or label would still pass here. That every
/// series they select exists, with its labels, on a chat-service that served traffic is checked
/// in `shipped_gates.rs`.
#[tokio::test]
async fn the_shipped_rules_gate_and_dashboard_queries_parse() -> anyhow::Result<()> {
    ficus_testkit::init();
    let root = ficus_testkit::repo_root().join("examples");
    let chart = ficus_testkit::helm::chart_dir();
    let rules = std::fs::read_to_string(chart.join("files/chat-alerts.rules.yml"))?;
    let prometheus = match Prometheus::start(PrometheusConfig {
        rules: Some(rules),
        ..Default::default()
    }) {
        Ok(p) => p,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return Ok(());
        }
    };
    let text = std::fs::read_to_string(root.join("chat-postgres-to-scylla.yaml"))?;
    let docs: Vec<serde_json::Value> = text
        .split("\n---")
        .filter_map(|d| serde_saphyr::from_str(d).ok())
        .collect();
    let migration = docs
        .iter()
        .find(|d| d["kind"] == "Migration")
        .expect("the example has a Migration");
    let gates = migration["spec"]["analysis"]["gates"]
        .as_array()
        .expect("gates");
    assert_eq!(gates.len(), 5);
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        chart.join("files/chat-migration-dashboard.json"),
    )?)?;
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let generation_query = migration["spec"]["analysis"]["appliedGenerationQuery"].clone();
    assert!(generation_query.is_string());
    let queries = gates
        .iter()
        .map(|g| (format!("gate {}", g["name"]), g["query"].clone()))
        .chain(gates.iter().map(|g| {
            (
                format!("samplesQuery of gate {}", g["name"]),
                g["samplesQuery"].clone(),
            )
        }))
        .chain([("appliedGenerationQuery".to_owned(), generation_query)])
        .chain(panels.iter().flat_map(|p| {
            let title = p["title"].clone();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (format!("dashboard panel {title}"), t["expr"].clone()))
        }));
    let checker =
        ficus_operator::analysis::Prometheus::new(&prometheus.url(), Duration::from_secs(5))
            .map_err(anyhow::Error::msg)?;
    for (what, query) in queries {
        let query = query.as_str().expect("a query string");
        let outcome = checker.query(query).await;
        assert!(
            matches!(outcome, ficus_operator::analysis::Outcome::Values(_)),
            "{what} must parse: {query}: {outcome:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_step_waits_until_every_instance_reports_the_written_flag_generation()
-> anyhow::Result<()> {
    let Some(s) = stack("gates-generation", false, false).await? else {
        return Ok(());
    };
    // Two instances of the service; one lags behind on generation 0.
    let generation = |instance: &str, g: f64| {
        s.evidence
            .exporter
            .set("chat_flags_generation", &[("instance", instance)], g)
    };
    generation("a", 0.0);
    generation("b", 0.0);
    s.evidence
        .prometheus
        .wait_for_value("chat_flags_generation", Duration::from_secs(15))
        .await?;
    let mut spec = gated(&s.evidence.prometheus.url(), "1s", 2, "1s");
    spec["analysis"]["appliedGenerationQuery"] = json!("min(chat_flags_generation)");
    create(&s.api, spec).await?;

    let written = |m: &Migration| {
        m.status
            .as_ref()
            .and_then(|s| s.applied_flags.as_ref())
            .map(|f| f.generation)
            .expect("flags written")
    };
    let progressing = |m: &Migration| {
        m.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Progressing"))
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };

    // Shadow (0 s) and its bake (1 s) are long over, but the instances run older flags.
    let shadow = wait_for(&s.api, "m", LONG, "Shadow with a report", |m| {
        phase(m) == Phase::Shadow
            && m.status
                .as_ref()
                .is_some_and(|s| s.reported_generation == Some(0))
    })
    .await;
    let shadow_flags = written(&shadow);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let m = s.api.get("m").await?;
    assert_eq!(
        phase(&m),
        Phase::Shadow,
        "no promotion before the flags are applied"
    );
    assert!(
        progressing(&m).contains(&format!(
            "apply flag generation {shadow_flags} (lowest reported: 0)"
        )),
        "{}",
        progressing(&m)
    );

    generation("a", shadow_flags as f64);
    generation("b", shadow_flags as f64);
    let first = wait_for(&s.api, "m", LONG, "step 1", |m| step(m) == Some(1)).await;
    let step_flags = written(&first);
    assert!(step_flags > shadow_flags);
    generation("a", step_flags as f64);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        step(&s.api.get("m").await?),
        Some(1),
        "one instance is still behind"
    );
    generation("b", step_flags as f64);
    wait_for(
        &s.api,
        "m",
        LONG,
        "step 2 once every instance applied",
        |m| step(m) == Some(2),
    )
    .await;
    Ok(())
}

#[tokio::test]
async fn with_alerts_and_no_gates_an_unreachable_prometheus_pauses_instead_of_promoting()
-> anyhow::Result<()> {
    let Some(s) = stack("alerts-down", true, false).await? else {
        return Ok(());
    };
    let mut spec = alert_only(Some(&s.evidence.prometheus.url()));
    spec["bakeTime"] = json!("2s");
    spec["analysis"]["inconclusiveLimit"] = json!(3);
    create(&s.api, spec).await?;
    wait_for(&s.api, "m", LONG, "step 1", |m| step(m) == Some(1)).await;
    s.evidence.prometheus.stop();
    let paused = wait_for(&s.api, "m", LONG, "Paused", |m| phase(m) == Phase::Paused).await;
    assert_eq!(step(&paused), Some(1), "no promotion without evidence");
    let alerts = paused
        .status
        .as_ref()
        .and_then(|s| s.last_analysis.as_ref())
        .and_then(|a| a.alerts.clone())
        .expect("the alert poll is recorded");
    assert_eq!(alerts.verdict, Verdict::Inconclusive);
    assert_eq!(
        flags(&s.client, &s.ns).await["read_split_percent"],
        "10",
        "users stay where they were"
    );

    s.evidence.prometheus.restart()?;
    s.evidence
        .prometheus
        .wait_for_targets(Duration::from_secs(30))
        .await?;
    wait_for(&s.api, "m", LONG, "step 2 once Prometheus answers", |m| {
        step(m) == Some(2)
    })
    .await;
    Ok(())
}
