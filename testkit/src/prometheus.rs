//! A real Prometheus (the Debian `prometheus` package, 2.42) on a free loopback port, scraping
//! and evaluating rules every second so tests see changes within a couple of seconds.
//!
//! Ready is not scraping: Prometheus applies discovered targets through two fixed 5s throttles
//! (discovery and scrape manager, not configurable in 2.42), so the first scrape comes ~5-6s
//! after start and after every restart. [`Prometheus::wait_for_targets`] waits for it.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::{
    HarnessError, http,
    process::locate_binary,
    server::{Instance, Server, command, impl_test_server},
};

/// How often the waits for scraped data ask again.
const POLL: Duration = Duration::from_millis(100);

/// What a test [`Prometheus`] scrapes and evaluates. Scrape and evaluation interval are 1s.
#[derive(Debug, Clone, Default)]
pub struct PrometheusConfig {
    /// `host:port` targets, scraped at `/metrics` as job `test`.
    pub targets: Vec<String>,
    /// Body of a rule file (YAML with `groups:`, e.g. alerting rules).
    pub rules: Option<String>,
    /// `host:port` of an Alertmanager that firing alerts are sent to.
    pub alertmanager: Option<String>,
    /// Labels put on every scraped series (as service discovery would, e.g. `namespace`).
    pub labels: BTreeMap<String, String>,
}

/// One element of an instant-query result (a scalar result has no labels).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A running Prometheus; dropping it kills the process and removes its directory (with
/// `prometheus.yml`, `rules.yml`, the TSDB in `data/` and `prometheus.log`). A restart keeps
/// config and data.
#[derive(Debug)]
pub struct Prometheus {
    instance: Instance,
    targets: usize,
}

impl Prometheus {
    /// Writes the config to a temp dir, starts Prometheus and blocks until `/-/ready` (~1s).
    ///
    /// The binary is `$FICUS_PROMETHEUS`, else `prometheus` on `PATH`; without one this is
    /// [`HarnessError::Missing`]. Callable from inside a tokio runtime.
    pub fn start(config: PrometheusConfig) -> Result<Self, HarnessError> {
        let targets = config.targets.len();
        let locate = || locate_binary("prometheus", "FICUS_PROMETHEUS", "prometheus");
        let instance = Instance::start(locate, |bin, dir, addr| {
            let mut yml = serde_json::json!({
                "global": {
                    "scrape_interval": "1s",
                    // The default (10s) must not exceed the interval.
                    "scrape_timeout": "1s",
                    "evaluation_interval": "1s",
                },
                "scrape_configs": [{
                    "job_name": "test",
                    "static_configs": [{"targets": config.targets, "labels": config.labels}],
                }],
            });
            if let Some(rules) = &config.rules {
                let path = dir.join("rules.yml");
                std::fs::write(&path, rules).map_err(HarnessError::io("writing", &path))?;
                yml["rule_files"] = serde_json::json!([path]);
            }
            if let Some(am) = &config.alertmanager {
                yml["alerting"] = serde_json::json!({
                    "alertmanagers": [{"static_configs": [{"targets": [am]}]}],
                });
            }
            // JSON is YAML, and serde_json gets the quoting right.
            let config_file = dir.join("prometheus.yml");
            std::fs::write(&config_file, yml.to_string())
                .map_err(HarnessError::io("writing", &config_file))?;

            let args = vec![
                format!("--config.file={}", config_file.display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address={addr}"),
            ];
            let log = dir.join("prometheus.log");
            Server::builder("prometheus", log, command(bin, args))
                .ready_on_http(addr, "/-/ready")
                .start()
        })?;
        Ok(Self { instance, targets })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.instance.addr)
    }

    /// Runs the instant query `promql` (at the current time) once.
    ///
    /// A stopped Prometheus gives [`HarnessError::Request`] (see
    /// [`HarnessError::is_connection_refused`]); a query error gives [`HarnessError::Response`].
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>, HarnessError> {
        let path = format!("/api/v1/query?query={}", http::encode(promql));
        let response = http::get(self.instance.addr, &path)
            .await
            .map_err(http::request_error(self.instance.addr, &path))?;
        parse_query(&response.body).map_err(|reason| HarnessError::Response {
            url: format!("{}{path}", self.url()),
            reason: format!("HTTP {}: {reason}", response.status),
        })
    }

    /// Waits until every configured target has been scraped at least once (up or down), i.e.
    /// scraping is running; ~5-6s after [`start`](Self::start) or [`restart`](Self::restart).
    pub async fn wait_for_targets(&self, timeout: Duration) -> Result<(), HarnessError> {
        #[derive(Deserialize)]
        struct Answer {
            data: Targets,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Targets {
            active_targets: Vec<Target>,
        }
        #[derive(Deserialize)]
        struct Target {
            // "unknown" until the first scrape, then "up" or "down".
            health: String,
        }
        const PATH: &str = "/api/v1/targets?state=active";
        let deadline = Instant::now() + timeout;
        loop {
            let last = match http::get(self.instance.addr, PATH).await {
                Ok(r) => match serde_json::from_str::<Answer>(&r.body) {
                    Ok(a)
                        if a.data.active_targets.len() >= self.targets
                            && a.data.active_targets.iter().all(|t| t.health != "unknown") =>
                    {
                        return Ok(());
                    }
                    _ => r.body,
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("{} targets scraped by {}", self.targets, self.url()),
                    after: timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls `promql` until `check` maps its result to `Some`, and returns that.
    /// Failed queries count as "not yet", so this also rides out a restart.
    pub async fn wait_for<T>(
        &self,
        promql: &str,
        timeout: Duration,
        mut check: impl FnMut(&[Sample]) -> Option<T>,
    ) -> Result<T, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.query(promql).await {
                Ok(samples) => match check(&samples) {
                    Some(done) => return Ok(done),
                    None => format!("{samples:?}"),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("query `{promql}` on {}", self.url()),
                    after: timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls `promql` until it returns at least one sample, and returns the first one's value.
    pub async fn wait_for_value(
        &self,
        promql: &str,
        timeout: Duration,
    ) -> Result<f64, HarnessError> {
        self.wait_for(promql, timeout, |samples| samples.first().map(|s| s.value))
            .await
    }
}

impl_test_server!(Prometheus, instance);

/// Parses a `/api/v1/query` answer (vector or scalar) into samples, or says what is wrong.
fn parse_query(body: &str) -> Result<Vec<Sample>, String> {
    #[derive(Deserialize)]
    #[serde(tag = "status", rename_all = "lowercase")]
    enum Answer {
        Success {
            data: Data,
        },
        Error {
            #[serde(rename = "errorType")]
            error_type: String,
            error: String,
        },
    }
    #[derive(Deserialize)]
    #[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
    enum Data {
        Vector(Vec<VectorSample>),
        Scalar((f64, String)),
        // A matrix (range query) or string fails to parse, naming the unexpected variant.
    }
    #[derive(Deserialize)]
    struct VectorSample {
        metric: BTreeMap<String, String>,
        // [unix seconds, "value"]: values are strings so that NaN and ±Inf survive JSON.
        value: (f64, String),
    }
    let number = |v: &str| {
        v.parse::<f64>()
            .map_err(|e| format!("sample value {v:?}: {e}"))
    };

    match serde_json::from_str::<Answer>(body) {
        Ok(Answer::Success {
            data: Data::Vector(samples),
        }) => samples
            .into_iter()
            .map(|s| {
                Ok(Sample {
                    value: number(&s.value.1)?,
                    labels: s.metric,
                })
            })
            .collect(),
        Ok(Answer::Success {
            data: Data::Scalar((_, v)),
        }) => Ok(vec![Sample {
            labels: BTreeMap::new(),
            value: number(&v)?,
        }]),
        Ok(Answer::Error { error_type, error }) => Err(format!("{error_type}: {error}")),
        Err(e) => Err(format!("unexpected answer ({e}): {body}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_query_answers() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"m","service":"chat"},"value":[1700000000.123,"NaN"]},
            {"metric":{},"value":[1700000000.123,"+Inf"]}]}}"#;
        let samples = parse_query(body).unwrap();
        assert_eq!(samples[0].labels["service"], "chat");
        assert!(samples[0].value.is_nan());
        assert_eq!(samples[1].value, f64::INFINITY);

        let body = r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"2"]}}"#;
        assert_eq!(parse_query(body).unwrap()[0].value, 2.0);

        let body = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert_eq!(parse_query(body).unwrap_err(), "bad_data: parse error");
    }
}
