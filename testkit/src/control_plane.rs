//! A real etcd + kube-apiserver on free loopback ports, envtest style.
//!
//! There is no controller-manager or scheduler: nothing garbage-collects owned objects,
//! finalizes deleted namespaces, or runs pods. Tests see exactly what the API server does.

use std::{
    env,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use tempfile::TempDir;

use crate::{
    HarnessError, certs,
    dirs::{cache_dir, temp_dir},
    ports::{free_ports, loopback},
    server::{Server, TestServer, command},
    shared::shared,
};

/// A first start takes a few seconds; 2 busy cores can make that much longer.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
/// Per-attempt timeout of the `/readyz` request; everything is on loopback.
const READYZ_TIMEOUT: Duration = Duration::from_secs(5);

/// Where `scripts/build-control-plane.sh` caches the binaries (same env overrides and defaults).
#[derive(Debug, Clone)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
}

impl Binaries {
    /// Locates both binaries, or says which one is missing and how to build it.
    pub fn locate() -> Result<Self, HarnessError> {
        let cache = cache_dir();
        let find = |name: &str, var: &str, default: &str| {
            let version = env::var(var).unwrap_or_else(|_| default.to_owned());
            let path = cache.join("bin").join(format!("{name}-{version}"));
            if path.is_file() {
                Ok(path)
            } else {
                Err(HarnessError::Missing {
                    component: format!("{name} {version}"),
                    reason: format!(
                        "binary not found at {}: run scripts/build-control-plane.sh",
                        path.display()
                    ),
                })
            }
        };
        Ok(Self {
            etcd: find("etcd", "FICUS_ETCD_VERSION", "v3.6.16")?,
            kube_apiserver: find("kube-apiserver", "FICUS_KUBE_VERSION", "v1.35.4")?,
        })
    }
}

/// A running etcd + kube-apiserver pair with an admin kubeconfig.
///
/// Holds nothing bound to a tokio runtime (each `#[tokio::test]` has its own), so one instance
/// can be shared by every test in a binary: ask it for a fresh [`Client`] per test.
#[derive(Debug)]
pub struct ControlPlane {
    // Fields drop in order: the servers are killed before the temp dir goes.
    apiserver: Server,
    etcd: Server,
    server: String,
    kubeconfig: PathBuf,
    dir: TempDir,
}

impl ControlPlane {
    /// The control plane shared by every test in this test binary, started on first use.
    ///
    /// It lives until the process exits: the kernel kills the processes then (see
    /// `process.rs`) and an `atexit` hook removes the temp dir.
    pub fn shared() -> Result<&'static ControlPlane, HarnessError> {
        static SHARED: OnceLock<Result<ControlPlane, HarnessError>> = OnceLock::new();
        shared(&SHARED, Self::start)
    }

    /// Starts a private control plane; dropping it kills the processes and removes its files.
    ///
    /// Blocks until `/readyz` answers ok (a few seconds). Callable from inside a tokio runtime.
    pub fn start() -> Result<Self, HarnessError> {
        crate::init();
        let bins = Binaries::locate()?;
        let begin = Instant::now();
        let dir = temp_dir()?;
        let path = |name: &str| dir.path().join(name);
        let certs = certs::generate(dir.path())?;
        let [etcd_port, peer_port, api_port] = free_ports()?;

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_args = [
            format!("--data-dir={}", path("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            // Test data is disposable: skipping fsync makes etcd (and so every write) fast.
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ];
        let etcd = Server::builder(
            "etcd",
            path("etcd.log"),
            command(bins.etcd, etcd_args.into()),
        )
        .ready_on_http(loopback(etcd_port), "/health")
        .timeout(READY_TIMEOUT)
        .spawn()?;

        let server = format!("https://127.0.0.1:{api_port}");
        let file = |p: &Path| p.display().to_string();
        let apiserver_args = [
            "--advertise-address=127.0.0.1".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--etcd-servers={etcd_url}"),
            format!("--tls-cert-file={}", file(&certs.serving_cert)),
            format!("--tls-private-key-file={}", file(&certs.serving_key)),
            format!("--client-ca-file={}", file(&certs.ca_cert)),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://localhost".into(),
            format!(
                "--service-account-key-file={}",
                file(&certs.service_account_pub)
            ),
            format!(
                "--service-account-signing-key-file={}",
                file(&certs.service_account_key)
            ),
            // Without a controller-manager no token controller exists to satisfy it.
            "--disable-admission-plugins=ServiceAccount".into(),
        ];

        let kubeconfig = path("kubeconfig");
        let json = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "ficus-e2e", "cluster": {
                "server": server,
                "certificate-authority": certs.ca_cert,
            }}],
            "users": [{"name": certs::ADMIN_USER, "user": {
                "client-certificate": certs.admin_cert,
                "client-key": certs.admin_key,
            }}],
            "contexts": [{"name": "ficus-e2e", "context": {
                "cluster": "ficus-e2e",
                "user": certs::ADMIN_USER,
            }}],
            "current-context": "ficus-e2e",
        });
        // kubectl and kube both read JSON kubeconfigs (JSON is YAML).
        std::fs::write(&kubeconfig, json.to_string())
            .map_err(HarnessError::io("writing", &kubeconfig))?;

        let probe_kubeconfig = kubeconfig.clone();
        let apiserver = Server::builder(
            "kube-apiserver",
            path("kube-apiserver.log"),
            command(bins.kube_apiserver, apiserver_args.into()),
        )
        .ready_when_async(format!("ok from {server}/readyz"), move || {
            readyz(probe_kubeconfig.clone())
        })
        .timeout(READY_TIMEOUT)
        .poll(POLL)
        .spawn()?;

        let cp = Self {
            apiserver,
            etcd,
            server,
            kubeconfig,
            dir,
        };
        // Both start at once (the API server retries etcd). On error `cp` is dropped here,
        // which kills both processes.
        cp.etcd.wait_ready()?;
        cp.apiserver.wait_ready()?;
        tracing::info!(server = %cp.server, elapsed = ?begin.elapsed(), "control plane ready");
        Ok(cp)
    }

    /// Kills the API server and etcd (SIGKILL, like a crash of the node); clients get refused
    /// connections. Ports and etcd's data stay for [`restart`](Self::restart).
    pub fn stop(&self) {
        self.apiserver.stop();
        self.etcd.stop();
    }

    /// Stops both if running and starts etcd and then the API server again on the same ports
    /// and data; blocks until `/readyz` says ok. Existing clients reconnect by themselves.
    pub fn restart(&self) -> Result<(), HarnessError> {
        self.apiserver.stop();
        self.etcd.restart()?;
        self.apiserver.restart()
    }

    /// The etcd process: pid and log.
    pub fn etcd(&self) -> &Server {
        &self.etcd
    }

    /// The kube-apiserver process: pid and log.
    pub fn apiserver(&self) -> &Server {
        &self.apiserver
    }

    /// Admin kubeconfig (user `ficus-admin` in `system:masters`), for `kubectl --kubeconfig`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>` of the API server.
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// Temp dir with certificates, kubeconfig, etcd data and the process logs
    /// (`etcd.log`, `kube-apiserver.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kube `Config` for the admin user, built fresh from the kubeconfig.
    pub async fn config(&self) -> Result<Config, HarnessError> {
        admin_config(&self.kubeconfig).await
    }

    /// A new admin client bound to the calling test's runtime.
    pub async fn client(&self) -> Result<Client, HarnessError> {
        let config = self.config().await?;
        self.client_from(config)
    }

    /// A client that impersonates `user` in `groups`, so code under test runs with only the RBAC
    /// that the test grants that user (the apiserver adds `system:authenticated` itself).
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> Result<Client, HarnessError> {
        let mut config = self.config().await?;
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
        self.client_from(config)
    }

    fn client_from(&self, config: Config) -> Result<Client, HarnessError> {
        crate::init();
        Client::try_from(config).map_err(client_error(&self.kubeconfig))
    }
}

impl TestServer for ControlPlane {
    /// [`server_url`](ControlPlane::server_url).
    fn url(&self) -> String {
        self.server.clone()
    }
    fn dir(&self) -> &Path {
        ControlPlane::dir(self)
    }
    fn stop(&self) {
        ControlPlane::stop(self)
    }
    fn restart(&self) -> Result<(), HarnessError> {
        ControlPlane::restart(self)
    }
}

/// `ok` from `/readyz` with the admin identity of `kubeconfig`, or what it said instead.
async fn readyz(kubeconfig: PathBuf) -> Result<(), String> {
    let config = admin_config(&kubeconfig).await.map_err(|e| e.to_string())?;
    let client = Client::try_from(config).map_err(|e| e.to_string())?;
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(READYZ_TIMEOUT, client.request_text(request)).await {
        Ok(Ok(body)) if body.trim() == "ok" => Ok(()),
        Ok(Ok(body)) => Err(body),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("request timed out".into()),
    }
}

/// A kube `Config` for the admin user of `kubeconfig`, read fresh from the file.
async fn admin_config(kubeconfig: &Path) -> Result<Config, HarnessError> {
    let file = Kubeconfig::read_from(kubeconfig).map_err(client_error(kubeconfig))?;
    Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(client_error(kubeconfig))
}

/// Helper for `map_err`: building a client from `kubeconfig` failed.
fn client_error<E: std::error::Error + Send + Sync + 'static>(
    kubeconfig: &Path,
) -> impl FnOnce(E) -> HarnessError {
    let kubeconfig = kubeconfig.to_owned();
    move |e| HarnessError::Client {
        kubeconfig,
        source: Arc::new(e),
    }
}
