//! Toxiproxy (built from its Go module by `scripts/build-toxiproxy.sh`): a TCP proxy whose
//! faults — latency, timeouts, reset connections, cut bandwidth, a proxy taken down — are set
//! through its HTTP API while traffic flows. The live scenario suite puts one between the
//! chat-service instances and the CQL store.

use std::{env, net::SocketAddr, path::PathBuf};

use serde_json::{Value, json};

use crate::{
    HarnessError,
    dirs::cache_dir,
    http,
    ports::free_addr,
    server::{Instance, Server, command, impl_test_server},
};

const DEFAULT_VERSION: &str = "v2.5.0";

/// A fault, as Toxiproxy names them (applied to traffic towards the upstream unless `upstream`
/// is false).
#[derive(Clone, Debug, PartialEq)]
pub enum Toxic {
    /// Delay every chunk by `latency_ms` ± `jitter_ms`.
    Latency { latency_ms: u64, jitter_ms: u64 },
    /// Stop all data and close the connection after `timeout_ms` (0: never close: a hang).
    Timeout { timeout_ms: u64 },
    /// Reset connections (RST) after `timeout_ms`.
    ResetPeer { timeout_ms: u64 },
    /// Close connections once `bytes` have passed: later data is dropped.
    LimitData { bytes: u64 },
}

impl Toxic {
    fn body(&self, name: &str) -> Value {
        let (kind, attributes) = match self {
            Toxic::Latency {
                latency_ms,
                jitter_ms,
            } => (
                "latency",
                json!({ "latency": latency_ms, "jitter": jitter_ms }),
            ),
            Toxic::Timeout { timeout_ms } => ("timeout", json!({ "timeout": timeout_ms })),
            Toxic::ResetPeer { timeout_ms } => ("reset_peer", json!({ "timeout": timeout_ms })),
            Toxic::LimitData { bytes } => ("limit_data", json!({ "bytes": bytes })),
        };
        json!({ "name": name, "type": kind, "stream": "downstream", "toxicity": 1.0, "attributes": attributes })
    }
}

/// A running Toxiproxy server; dropping it kills the process (and every proxy). Its proxies
/// live in its memory: a stop drops every proxied connection and a restart comes up without
/// proxies (create them again). [`addr`](Self::addr) is its API.
#[derive(Debug)]
pub struct Toxiproxy(Instance);

/// One proxy of a [`Toxiproxy`]: `listen` forwards to `upstream`.
#[derive(Clone, Debug)]
pub struct Proxy {
    api: SocketAddr,
    pub name: String,
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
}

impl Toxiproxy {
    /// Starts `toxiproxy-server` on a free port and blocks until its API answers.
    ///
    /// The binary is `$FICUS_TOXIPROXY`, else the cached build of
    /// `scripts/build-toxiproxy.sh`; without one this is [`HarnessError::Missing`].
    pub fn start() -> Result<Self, HarnessError> {
        Instance::start(locate, |bin, dir, api| {
            let args = ["-host", "127.0.0.1", "-port", &api.port().to_string()].map(String::from);
            let log = dir.join("toxiproxy.log");
            Server::builder("toxiproxy", log, command(bin, args.into()))
                .ready_on_http(api, "/version")
                .start()
        })
        .map(Self)
    }

    /// `http://127.0.0.1:<port>` of the API.
    pub fn url(&self) -> String {
        format!("http://{}", self.0.addr)
    }

    /// A proxy on a free loopback port to `upstream`.
    pub fn proxy(&self, name: &str, upstream: SocketAddr) -> Result<Proxy, HarnessError> {
        let listen = free_addr()?;
        let body = json!({ "name": name, "listen": listen.to_string(), "upstream": upstream.to_string(), "enabled": true });
        call(self.0.addr, "POST", "/proxies", &body)?;
        Ok(Proxy {
            api: self.0.addr,
            name: name.to_owned(),
            listen,
            upstream,
        })
    }
}

impl Proxy {
    /// Adds fault `toxic` under `name` (replacing nothing: names must be unique per proxy).
    pub fn add(&self, name: &str, toxic: &Toxic) -> Result<(), HarnessError> {
        call(
            self.api,
            "POST",
            &format!("/proxies/{}/toxics", self.name),
            &toxic.body(name),
        )
        .map(drop)
    }

    /// Removes fault `name`.
    pub fn remove(&self, name: &str) -> Result<(), HarnessError> {
        call(
            self.api,
            "DELETE",
            &format!("/proxies/{}/toxics/{name}", self.name),
            &Value::Null,
        )
        .map(drop)
    }

    /// Takes the proxy down (`false`: every connection is closed and new ones are refused) or
    /// up again.
    pub fn set_enabled(&self, enabled: bool) -> Result<(), HarnessError> {
        call(
            self.api,
            "POST",
            &format!("/proxies/{}", self.name),
            &json!({ "enabled": enabled }),
        )
        .map(drop)
    }
}

impl_test_server!(Toxiproxy, 0);

/// One API call; a status of 300 or above is an error carrying the reply.
fn call(api: SocketAddr, method: &str, path: &str, body: &Value) -> Result<String, HarnessError> {
    let payload = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let response =
        http::send_blocking(api, method, path, &payload).map_err(http::request_error(api, path))?;
    if response.status >= 300 {
        return Err(HarnessError::Api {
            url: format!("http://{api}{path}"),
            status: response.status,
            body: response.body,
        });
    }
    Ok(response.body)
}

/// `$FICUS_TOXIPROXY`, else the cached `toxiproxy-server-<version>`.
fn locate() -> Result<PathBuf, HarnessError> {
    if let Some(path) = env::var_os("FICUS_TOXIPROXY") {
        return Ok(PathBuf::from(path));
    }
    let version =
        env::var("FICUS_TOXIPROXY_VERSION").unwrap_or_else(|_| DEFAULT_VERSION.to_owned());
    let cached = cache_dir()
        .join("bin")
        .join(format!("toxiproxy-server-{version}"));
    if cached.is_file() {
        Ok(cached)
    } else {
        Err(HarnessError::Missing {
            component: "toxiproxy".into(),
            reason: format!(
                "{} not built and FICUS_TOXIPROXY not set: run scripts/build-toxiproxy.sh",
                cached.display()
            ),
        })
    }
}
