//! A real etcd + kube-apiserver on free loopback ports, envtest style.
//!
//! There is no controller-manager or scheduler: nothing garbage-collects owned objects,
//! finalizes deleted namespaces, or runs pods. Tests see exactly what the API server does.

use std::{
    env,
    net::TcpListener,
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
    process::Proc,
    shared::{SharedServer, on_own_runtime, shared},
};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Temp dirs are `ficus-e2e-<pid>-<random>`: the pid lets later runs clean up after killed ones.
const DIR_PREFIX: &str = "ficus-e2e-";

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

/// `$FICUS_CACHE`, else `~/.cache/ficus` (as in `scripts/build-control-plane.sh`).
pub fn cache_dir() -> PathBuf {
    env::var_os("FICUS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            env::home_dir()
                .unwrap_or_else(|| PathBuf::from("/root"))
                .join(".cache/ficus")
        })
}

/// A running etcd + kube-apiserver pair with an admin kubeconfig.
///
/// Holds nothing bound to a tokio runtime (each `#[tokio::test]` has its own), so one instance
/// can be shared by every test in a binary: ask it for a fresh [`Client`] per test.
#[derive(Debug)]
pub struct ControlPlane {
    // `Drop::drop` kills the processes before the fields drop, so the temp dir goes last.
    apiserver: Proc,
    etcd: Proc,
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
        let etcd = Proc::spawn(
            "etcd",
            &bins.etcd,
            &[
                format!("--data-dir={}", path("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                // Test data is disposable: skipping fsync makes etcd (and so every write) fast.
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            path("etcd.log"),
        )?;

        let server = format!("https://127.0.0.1:{api_port}");
        let file = |p: &Path| p.display().to_string();
        let apiserver = Proc::spawn(
            "kube-apiserver",
            &bins.kube_apiserver,
            &[
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
            ],
            path("kube-apiserver.log"),
        )?;

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

        let cp = Self {
            apiserver,
            etcd,
            server,
            kubeconfig,
            dir,
        };
        tracing::info!(
            etcd_pid = cp.etcd.pid(),
            apiserver_pid = cp.apiserver.pid(),
            dir = %cp.dir.path().display(),
            "control plane starting"
        );
        // On error `cp` is dropped here, which kills both processes.
        on_own_runtime(|runtime| runtime.block_on(cp.wait_ready(READY_TIMEOUT)))??;
        tracing::info!(server = %cp.server, elapsed = ?begin.elapsed(), "control plane ready");
        Ok(cp)
    }

    /// Polls `/readyz` with the admin identity until it says `ok`, failing early if a process dies.
    async fn wait_ready(&self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        let client = self.client().await?;
        loop {
            for proc in [&self.etcd, &self.apiserver] {
                if let Some(status) = proc.exited() {
                    return Err(proc.startup_error(format!("exited early with {status}")));
                }
            }
            let answer = match http::Request::get("/readyz").body(Vec::new()) {
                Ok(req) => {
                    match tokio::time::timeout(Duration::from_secs(5), client.request_text(req))
                        .await
                    {
                        Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                        Ok(Ok(body)) => body,
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "request timed out".into(),
                    }
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                let reason = format!("/readyz not ok after {timeout:?}; last answer: {answer}");
                return Err(self.apiserver.startup_error(reason));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
        let kubeconfig =
            Kubeconfig::read_from(&self.kubeconfig).map_err(|e| self.client_error(e))?;
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| self.client_error(e))
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
        Client::try_from(config).map_err(|e| self.client_error(e))
    }

    fn client_error(&self, e: impl std::error::Error + Send + Sync + 'static) -> HarnessError {
        HarnessError::Client {
            kubeconfig: self.kubeconfig.clone(),
            source: Arc::new(e),
        }
    }

    fn stop(&self) {
        self.apiserver.kill();
        self.etcd.kill();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh `ficus-e2e-<pid>-<random>` temp dir, after removing those of dead test binaries.
pub(crate) fn temp_dir() -> Result<TempDir, HarnessError> {
    let tmp = env::temp_dir();
    remove_stale_dirs(&tmp);
    tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(HarnessError::io("creating a temp dir in", &tmp))
}

/// Removes temp dirs left by test binaries that were killed (e.g. by a CI timeout) before their
/// cleanup ran; each holds ~120 MB of etcd WAL. Best effort.
fn remove_stale_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if !alive {
            tracing::debug!(dir = %entry.path().display(), "removing stale control-plane dir");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Distinct free loopback ports: bind port 0 and let the kernel pick. All listeners are held
/// until every port is read so the kernel cannot hand out the same port twice.
pub fn free_ports<const N: usize>() -> Result<[u16; N], HarnessError> {
    let bind = |_| {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| Ok((l.local_addr()?.port(), l)))
            .map_err(HarnessError::io("binding a free port on", "127.0.0.1"))
    };
    let listeners: Vec<(u16, TcpListener)> = (0..N).map(bind).collect::<Result<_, _>>()?;
    Ok(std::array::from_fn(|i| listeners[i].0))
}

impl SharedServer for ControlPlane {
    fn kill(&self) {
        self.stop();
    }

    fn files(&self) -> &Path {
        self.dir.path()
    }
}
