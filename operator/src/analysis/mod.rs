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

    /// Evaluates every gate concurrently.
    pub async fn evaluate(&self, gates: &[Gate]) -> Vec<GateResult> {
        let outcomes = join_all(gates.iter().map(|g| self.query(&g.query))).await;
        gates
            .iter()
            .zip(&outcomes)
            .map(|(g, o)| judge(g, o))
            .collect()
    }

    /// Names of the alerts among `names` firing now for this Migration, from the `ALERTS` series.
    pub async fn firing(
        &self,
        names: &[String],
        selector: &BTreeMap<String, String>,
        namespace: &str,
    ) -> Result<Vec<String>, String> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let query = alerts_query(names, selector, namespace);
        let result = self
            .client
            .query(&query)
            .get()
            .await
            .map_err(|e| crate::error_chain(&e))?;
        let mut firing: Vec<String> = match result.data() {
            Data::Vector(v) => v
                .iter()
                .filter_map(|s| s.metric().get("alertname").cloned())
                .collect(),
            _ => Vec::new(),
        };
        firing.sort();
        firing.dedup();
        Ok(firing)
    }
}

/// `ALERTS{alertstate="firing", alertname=~"A|B", service="chat", namespace=~"ns|"}`: an alert
/// without a namespace label matches any namespace.
pub fn alerts_query(
    names: &[String],
    selector: &BTreeMap<String, String>,
    namespace: &str,
) -> String {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let alternatives: Vec<String> = names.iter().map(|n| regex_escape(n)).collect();
    let mut matchers = vec![
        r#"alertstate="firing""#.to_string(),
        format!(r#"alertname=~"{}""#, quote(&alternatives.join("|"))),
    ];
    for (k, v) in selector {
        if k != "namespace" {
            matchers.push(format!(r#"{k}="{}""#, quote(v)));
        }
    }
    matchers.push(format!(
        r#"namespace=~"{}|""#,
        quote(&regex_escape(namespace))
    ));
    format!("ALERTS{{{}}}", matchers.join(","))
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
        );
        assert_eq!(
            q,
            r#"ALERTS{alertstate="firing",alertname=~"ChatDataInconsistency|ChatDualWriteFailureRate",service="chat",namespace=~"prod|"}"#
        );
    }
}
