//! A real Alertmanager (the Debian `prometheus-alertmanager` package, 0.25) on a free loopback
//! port, routing every alert straight to one webhook.

use std::{net::SocketAddr, path::Path};

use tempfile::TempDir;

use crate::{
    HarnessError,
    dirs::temp_dir,
    http,
    ports::free_addr,
    process::locate_binary,
    server::{Server, command, impl_test_server},
};

/// A running Alertmanager; dropping it kills the process and removes its directory.
#[derive(Debug)]
pub struct Alertmanager {
    // Fields drop in order: the process is killed before the temp dir goes.
    server: Server,
    addr: SocketAddr,
    dir: TempDir,
}

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
        crate::init();
        let bin = locate_binary(
            "alertmanager",
            "FICUS_ALERTMANAGER",
            "prometheus-alertmanager",
        )?;
        let dir = temp_dir()?;
        let addr = free_addr()?;

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
        let config_file = dir.path().join("alertmanager.yml");
        std::fs::write(&config_file, yml.to_string())
            .map_err(HarnessError::io("writing", &config_file))?;

        let args = vec![
            format!("--config.file={}", config_file.display()),
            format!("--storage.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={addr}"),
            // Empty disables HA mode: no gossip port, and no waiting for the cluster to settle.
            "--cluster.listen-address=".to_owned(),
        ];
        let log = dir.path().join("alertmanager.log");
        let server = Server::builder("alertmanager", log, command(bin, args))
            .ready_on_http(addr, "/-/ready")
            .start()?;
        Ok(Self { server, addr, dir })
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
        let response = http::get_blocking(self.addr, path).map_err(|e| HarnessError::Request {
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
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:<port>`, for [`PrometheusConfig::alertmanager`](crate::PrometheusConfig).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Temp dir with `alertmanager.yml`, its data and `alertmanager.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills Alertmanager (SIGKILL, like a crash); notifications stop. Its data dir and port
    /// stay for [`restart`](Self::restart).
    pub fn stop(&self) {
        self.server.stop();
    }

    /// Stops Alertmanager if running and starts it again on the same port with the same config
    /// and data (silences and the notification log survive); blocks until it is ready.
    pub fn restart(&self) -> Result<(), HarnessError> {
        self.server.restart()
    }

    /// The Alertmanager process: pid and log.
    pub fn server(&self) -> &Server {
        &self.server
    }
}

impl_test_server!(Alertmanager);
