//! Synthetic evidence for tests and benchmarks of the operator alone: a test [`Exporter`] whose
//! values the test sets, a real Prometheus scraping it every second (optionally with a
//! synthetic alert rule), and optionally a real Alertmanager that posts to an operator webhook.
//!
//! Nothing here comes from chat-service. [`DRIFT`] is a stand-in gauge, not a metric
//! chat-service exports (chat-service counts `chat_shadow_reads_total` and
//! `chat_shadow_read_mismatches_total`), and [`RULES`] is not the shipped rule (the chart's
//! `ChatDataInconsistency` is a rate ratio with `for: 2m`). That is deliberate: a value the test
//! sets and an alert that fires on the next evaluation isolate what the operator does with
//! evidence from how the evidence is produced. The shipped gate queries and alert rules are
//! checked against a real chat-service router that served traffic in `e2e/tests/shipped_gates.rs`.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use ficus_testkit::{Alertmanager, Exporter, HarnessError, Prometheus, PrometheusConfig};

/// A synthetic drift gauge the test sets directly (see the module docs: chat-service has no
/// such metric).
pub const DRIFT: &str = "ficus_test_drift_ratio";
/// Drift well inside the gate (`max 0.01`) and below the alert threshold.
pub const HEALTHY_DRIFT: f64 = 0.001;
/// Bearer token Alertmanager sends to the operator's webhook.
pub const WEBHOOK_TOKEN: &str = "s3cret-webhook-token";
/// The alert [`RULES`] defines (named like the shipped alert so a Migration's `onAlerts`
/// reads the same).
pub const ALERT: &str = "ChatDataInconsistency";

/// A synthetic alerting rule on [`DRIFT`]: fires on the first evaluation above 1 % (`for: 0s`),
/// so the time an alert takes to reach the operator is not dominated by the rule's own wait.
/// Not the shipped rule.
pub const RULES: &str = r#"
groups:
  - name: chat
    rules:
      - alert: ChatDataInconsistency
        expr: max(ficus_test_drift_ratio) > 0.01
        for: 0s
        labels: { service: chat, severity: critical }
"#;

/// What to stage besides the exporter and Prometheus.
#[derive(Clone, Copy, Debug, Default)]
pub struct EvidenceOptions {
    /// Load [`RULES`] into Prometheus.
    pub alert_rule: bool,
    /// Start an Alertmanager that posts to `http://<operator_addr>/webhook/alertmanager`.
    pub alertmanager: bool,
}

/// Exporter + Prometheus (+ Alertmanager), started healthy: the drift is [`HEALTHY_DRIFT`] and
/// Prometheus already holds a sample of it.
#[derive(Debug)]
pub struct Evidence {
    pub exporter: Exporter,
    pub prometheus: Prometheus,
    pub alertmanager: Option<Alertmanager>,
    /// Where the operator's HTTP server (metrics, webhook) serves: the address of
    /// [`operator_listener`](Self::operator_listener).
    pub operator_addr: SocketAddr,
    /// Bound before Alertmanager learns the address, and held until the operator takes it
    /// ([`Operator::start_with`](crate::operator::Operator::start_with)), so no other process
    /// can take the port in between.
    pub operator_listener: Option<TcpListener>,
}

impl Evidence {
    pub async fn start(options: EvidenceOptions) -> Result<Self, HarnessError> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(HarnessError::io(
            "binding the operator's port on",
            "127.0.0.1",
        ))?;
        let operator_addr = listener.local_addr().map_err(HarnessError::io(
            "reading the address of",
            "the operator's listener",
        ))?;
        let alertmanager = if options.alertmanager {
            let webhook = format!("http://{operator_addr}/webhook/alertmanager");
            Some(Alertmanager::start(&webhook, WEBHOOK_TOKEN)?)
        } else {
            None
        };
        let exporter = Exporter::start()?;
        let prometheus = Prometheus::start(PrometheusConfig {
            targets: vec![exporter.addr().to_string()],
            rules: options.alert_rule.then(|| RULES.to_owned()),
            alertmanager: alertmanager.as_ref().map(|a| a.addr().to_string()),
            ..Default::default()
        })?;
        let evidence = Evidence {
            exporter,
            prometheus,
            alertmanager,
            operator_addr,
            operator_listener: Some(listener),
        };
        evidence.set_drift(HEALTHY_DRIFT);
        evidence
            .prometheus
            .wait_for_targets(Duration::from_secs(30))
            .await?;
        evidence
            .prometheus
            .wait_for_value(DRIFT, Duration::from_secs(15))
            .await?;
        Ok(evidence)
    }

    /// Sets the synthetic drift ratio (NaN allowed).
    pub fn set_drift(&self, ratio: f64) {
        self.exporter.set(DRIFT, &[("service", "chat")], ratio);
    }

    /// Takes the drift series off the exporter's page (Prometheus then marks it stale).
    pub fn remove_drift(&self) {
        self.exporter.remove(DRIFT);
    }

    /// `http://<operator_addr>/webhook/alertmanager`.
    pub fn webhook_url(&self) -> String {
        format!("http://{}/webhook/alertmanager", self.operator_addr)
    }
}
