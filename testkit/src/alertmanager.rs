//! A real Alertmanager (the Debian `prometheus-alertmanager` package, 0.25) on a free loopback
//! port, routing every alert straight to one webhook.

use crate::{
    HarnessError, http,
    process::locate_binary,
    server::{Instance, Server, command, impl_test_server},
};

/// A running Alertmanager; dropping it kills the process and removes its directory (with
/// `alertmanager.yml`, its data and `alertmanager.log`). A restart keeps config and data:
/// silences and the notification log survive.
#[derive(Debug)]
pub struct Alertmanager(Instance);

impl Alertmanager {
    /// Starts Alertmanager with a single route to the webhook `webhook_url`, sent with
    /// `Authorization: Bearer <bearer_token>`, resolved notifications included; blocks until
    /// `/-/ready` (~1s).
    ///
    /// Alerts are grouped by `alertname`, with `group_wait: 0s` (a new group is notified at
    /// once), `group_interval: 1s` (changes to a group follow within a second) and
    /// `repeat_interval: 1m`.
    ///
    /// The binary is `$FICUS_ALERTMANAGER`, else `prometheus-alertmanager` on `PATH`; without one
    /// this is [`HarnessError::Missing`]. Callable from inside a tokio runtime.
    pub fn start(webhook_url: &str, bearer_token: &str) -> Result<Self, HarnessError> {
        let locate = || {
            locate_binary(
                "alertmanager",
                "FICUS_ALERTMANAGER",
                "prometheus-alertmanager",
            )
        };
        Instance::start(locate, |bin, dir, addr| {
            // JSON is YAML, and serde_json gets the quoting of URL and token right.
            let yml = serde_json::json!({
                "route": {
                    "receiver": "webhook",
                    "group_by": ["alertname"],
                    "group_wait": "0s",
                    "group_interval": "1s",
                    "repeat_interval": "1m",
                },
                "receivers": [{
                    "name": "webhook",
                    "webhook_configs": [{
                        "url": webhook_url,
                        "send_resolved": true,
                        "http_config": {
                            "authorization": {"type": "Bearer", "credentials": bearer_token},
                        },
                    }],
                }],
            });
            let config_file = dir.join("alertmanager.yml");
            std::fs::write(&config_file, yml.to_string())
                .map_err(HarnessError::io("writing", &config_file))?;

            let args = vec![
                format!("--config.file={}", config_file.display()),
                format!("--storage.path={}", dir.join("data").display()),
                format!("--web.listen-address={addr}"),
                // Empty disables HA mode: no gossip port, and no waiting for the cluster to settle.
                "--cluster.listen-address=".to_owned(),
            ];
            let log = dir.join("alertmanager.log");
            Server::builder("alertmanager", log, command(bin, args))
                .ready_on_http(addr, "/-/ready")
                .start()
        })
        .map(Self)
    }

    /// Names of the alerts Alertmanager holds as active (firing, not silenced or inhibited).
    /// A resolved alert leaves this list once Prometheus has sent its resolution.
    pub fn active_alerts(&self) -> Result<Vec<String>, HarnessError> {
        #[derive(serde::Deserialize)]
        struct Alert {
            labels: std::collections::BTreeMap<String, String>,
        }
        let path = "/api/v2/alerts?active=true&silenced=false&inhibited=false";
        let url = format!("{}{path}", self.url());
        let response =
            http::get_blocking(self.0.addr, path).map_err(|e| HarnessError::Request {
                url: url.clone(),
                source: std::sync::Arc::new(e),
            })?;
        if response.status != 200 {
            let reason = format!("HTTP {}: {}", response.status, response.body.trim());
            return Err(HarnessError::Response { url, reason });
        }
        let alerts: Vec<Alert> =
            serde_json::from_str(&response.body).map_err(|e| HarnessError::Response {
                url,
                reason: format!("not a list of alerts: {e}"),
            })?;
        Ok(alerts
            .into_iter()
            .filter_map(|mut a| a.labels.remove("alertname"))
            .collect())
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.0.addr)
    }
}

impl_test_server!(Alertmanager, 0);
