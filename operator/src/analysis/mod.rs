//! Gate evaluation and polled alerts against Prometheus.
//!
//! One batch per Migration per interval: every gate query runs concurrently under one timeout,
//! inside the reconcile that found it due; there is no task or thread per Migration.

mod verdict;

pub use verdict::{Outcome, judge};

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use prometheus_http_query::Client;
use prometheus_http_query::response::Data;

use crate::crd::{Gate, GateResult};

/// Prometheus clients by URL and timeout, so connections are reused across reconciles.
#[derive(Default)]
pub struct Clients {
    by_url: Mutex<HashMap<String, Prometheus>>,
}

impl Clients {
    pub fn get(&self, url: &str, timeout: Duration) -> Result<Prometheus, String> {
        let key = format!("{url} {}", timeout.as_millis());
        let mut map = self.by_url.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map.get(&key) {
            return Ok(p.clone());
        }
        let p = Prometheus::new(url, timeout)?;
        map.insert(key, p.clone());
        Ok(p)
    }
}

#[derive(Clone)]
pub struct Prometheus {
    client: Client,
}

impl Prometheus {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let http = prometheus_http_query::reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let client =
            Client::from(http, url).map_err(|e| format!("invalid Prometheus URL {url:?}: {e}"))?;
        Ok(Self { client })
    }

    pub async fn query(&self, promql: &str) -> Outcome {
        match self.client.query(promql).get().await {
            Ok(result) => Outcome::Values(match result.data() {
                Data::Vector(v) => v.iter().map(|s| s.sample().value()).collect(),
                Data::Scalar(s) => vec![s.value()],
                Data::Matrix(_) => return Outcome::Invalid(
                    "the query returns a range vector; gates need an instant vector or a scalar"
                        .into(),
                ),
            }),
            Err(prometheus_http_query::Error::Prometheus(e)) if e.is_bad_data() => {
                Outcome::Invalid(e.message().to_string())
            }
            Err(prometheus_http_query::Error::ParseUrl(e)) => {
                Outcome::Invalid(format!("bad Prometheus URL: {e}"))
            }
            Err(e) => Outcome::Unreachable(crate::error_chain(&e)),
        }
    }

    /// Evaluates every gate concurrently: its query and its `samplesQuery`. A gate whose
    /// cohorts have no users at `traffic_percent` is not queried and comes back Skipped.
    pub async fn evaluate(&self, gates: &[Gate], traffic_percent: i32) -> Vec<GateResult> {
        let applies = |g: &Gate| g.cohorts.served_at(traffic_percent);
        let outcomes = join_all(gates.iter().map(|g| async move {
            if !applies(g) {
                return None;
            }
            let samples = async {
                match &g.samples_query {
                    Some(q) => Some(self.query(q).await),
                    None => None,
                }
            };
            Some(futures::join!(self.query(&g.query), samples))
        }))
        .await;
        gates
            .iter()
            .zip(outcomes)
            .map(|(g, o)| match o {
                Some((outcome, samples)) => judge(g, &outcome, samples.as_ref()),
                None => skipped(g, traffic_percent),
            })
            .collect()
    }

    /// The alerts among `names` firing now for this Migration, from the `ALERTS` series.
    pub async fn firing(
        &self,
        names: &[String],
        selector: &BTreeMap<String, String>,
        namespace: &str,
    ) -> AlertPoll {
        if names.is_empty() {
            return AlertPoll::Firing(Vec::new());
        }
        let query = match alerts_query(names, selector, namespace) {
            Ok(q) => q,
            Err(message) => return AlertPoll::Invalid(message),
        };
        let result = match self.client.query(&query).get().await {
            Ok(result) => result,
            Err(prometheus_http_query::Error::Prometheus(e)) if e.is_bad_data() => {
                return AlertPoll::Invalid(format!("{query}: {}", e.message()));
            }
            Err(e) => return AlertPoll::Unreachable(crate::error_chain(&e)),
        };
        let mut firing: Vec<String> = match result.data() {
            Data::Vector(v) => v
                .iter()
                .filter_map(|s| s.metric().get("alertname").cloned())
                .collect(),
            _ => Vec::new(),
        };
        firing.sort();
        firing.dedup();
        AlertPoll::Firing(firing)
    }
}

/// What one poll of `ALERTS` found.
#[derive(Clone, Debug, PartialEq)]
pub enum AlertPoll {
    /// Prometheus answered: these are firing (possibly none).
    Firing(Vec<String>),
    /// No answer: no evidence either way.
    Unreachable(String),
    /// The selector cannot be asked (a label name Prometheus rejects): a spec problem.
    Invalid(String),
}

fn skipped(gate: &Gate, traffic_percent: i32) -> GateResult {
    GateResult {
        name: gate.name.clone(),
        verdict: crate::crd::Verdict::Skipped,
        value: None,
        min: gate.min,
        max: gate.max,
        message: Some(format!(
            "not evaluated: the gate reads {} and {traffic_percent}% of users are on the new system",
            gate.cohorts.describe()
        )),
        failing_since: None,
    }
}

/// `ALERTS{alertstate="firing", alertname=~"A|B", service="chat", namespace=~"ns|"}`: an alert
/// without a namespace label matches any namespace. A label name Prometheus would reject is an
/// error, never a selector that silently matches nothing.
pub fn alerts_query(
    names: &[String],
    selector: &BTreeMap<String, String>,
    namespace: &str,
) -> Result<String, String> {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let alternatives: Vec<String> = names.iter().map(|n| regex_escape(n)).collect();
    let mut matchers = vec![
        r#"alertstate="firing""#.to_string(),
        format!(r#"alertname=~"{}""#, quote(&alternatives.join("|"))),
    ];
    for (k, v) in selector {
        if !crate::crd::is_label_name(k) {
            return Err(format!(
                "rollback.alertLabels: {k:?} is not a Prometheus label name (letters, digits and '_', not starting with '__'); alerts carry e.g. app_kubernetes_io_name"
            ));
        }
        if k != "namespace" {
            matchers.push(format!(r#"{k}="{}""#, quote(v)));
        }
    }
    matchers.push(format!(
        r#"namespace=~"{}|""#,
        quote(&regex_escape(namespace))
    ));
    Ok(format!("ALERTS{{{}}}", matchers.join(",")))
}

fn regex_escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_query_scopes_by_name_labels_and_namespace() {
        let q = alerts_query(
            &[
                "ChatDataInconsistency".into(),
                "ChatDualWriteFailureRate".into(),
            ],
            &[("service".to_string(), "chat".to_string())].into(),
            "prod",
        )
        .expect("a valid selector");
        assert_eq!(
            q,
            r#"ALERTS{alertstate="firing",alertname=~"ChatDataInconsistency|ChatDualWriteFailureRate",service="chat",namespace=~"prod|"}"#
        );
    }

    #[test]
    fn a_label_name_prometheus_rejects_is_an_error_not_a_selector() {
        let names = ["ChatDataInconsistency".to_string()];
        for key in ["app.kubernetes.io/name", "__name__", "1st", ""] {
            let selector = [(key.to_string(), "chat".to_string())].into();
            let q = alerts_query(&names, &selector, "prod");
            assert!(q.is_err(), "{key:?} must be refused, got {q:?}");
        }
        let ok = [("app_kubernetes_io_name".to_string(), "chat".to_string())].into();
        assert!(alerts_query(&names, &ok, "prod").is_ok());
    }
}
