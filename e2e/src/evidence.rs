//! The evidence an operator acts on, staged for tests and benchmarks: a test [`Exporter`] with
//! the chat service's drift metric, a real Prometheus scraping it every second (optionally with
//! the drift alert rule), and optionally a real Alertmanager that posts to an operator webhook.

use std::net::SocketAddr;
use std::time::Duration;

use ficus_testkit::{
    Alertmanager, Exporter, HarnessError, Prometheus, PrometheusConfig, free_addr,
};

/// The drift metric the chat service exports (and the gates and the alert rule read).
pub const DRIFT: &str = "chat_shadow_drift_ratio";
/// Drift well inside the gate (`max 0.01`) and below the alert threshold.
pub const HEALTHY_DRIFT: f64 = 0.001;
/// Bearer token Alertmanager sends to the operator's webhook.
pub const WEBHOOK_TOKEN: &str = "s3cret-webhook-token";
/// The alert [`RULES`] defines.
pub const ALERT: &str = "ChatDataInconsistency";

/// Alerting rule shaped like the shipped example: drift above 1 % for the chat service.
pub const RULES: &str = r#"
groups:
  - name: chat
    rules:
      - alert: ChatDataInconsistency
        expr: max(chat_shadow_drift_ratio) > 0.01
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
    /// A free port reserved for the operator's HTTP server (metrics, webhook).
    pub operator_addr: SocketAddr,
}

impl Evidence {
    pub async fn start(options: EvidenceOptions) -> Result<Self, HarnessError> {
        let operator_addr = free_addr()?;
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

    /// Sets the chat service's drift ratio (NaN allowed).
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
