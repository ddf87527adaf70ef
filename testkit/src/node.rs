//! A real single-node cluster (`scripts/node.sh`): the control plane plus scheduler,
//! controller-manager, kube-proxy and a kubelet that runs pods through a private containerd.
//! Unlike [`ControlPlane`](crate::ControlPlane), Deployments become ready and Jobs succeed by
//! themselves here, from images built by `scripts/build-images.sh`.
//!
//! Pods reach the host at the node IP ([`NODE_IP`], the host end of the node's bridge): test
//! servers that listen on loopback (PostgreSQL, Cassandra) are exposed there by a
//! [`HostForward`], and [`PodPrometheus`] listens there itself, discovering pods through the API.
//!
//! One node per machine (it owns a bridge, iptables chains and fixed ports), so tests that use it
//! run one at a time in one test binary.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use tempfile::TempDir;

use crate::{
    HarnessError, KubectlOutput,
    dirs::{cache_dir, repo_root, temp_dir},
    http,
    kubectl::kubectl_binary,
    process::{Proc, executable, locate_binary},
};

/// The host end of the node's bridge: node IP, API server address, and where pods reach the host.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

const KUBE_VERSION: &str = "v1.35.4";
const PAUSE_TAG: &str = "3.10.1";
const NODE_BINARIES: [&str; 7] = [
    "etcd",
    "kube-apiserver",
    "kubectl",
    "kubelet",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-proxy",
];

/// A running node; dropping it stops the node if this value started it (unless
/// `FICUS_NODE_KEEP=1`, which leaves it running for `kubectl` after a test).
#[derive(Debug)]
pub struct Node {
    kubeconfig: PathBuf,
    started_here: bool,
}

impl Node {
    /// Starts the node with `scripts/node.sh start`, or reuses a running one (~30s cold).
    ///
    /// What it needs and is not there is [`HarnessError::Missing`] (tests skip locally, fail
    /// under CI): root, containerd, runc, the CNI plugins, the cached binaries and the sandbox
    /// image of `scripts/build-control-plane.sh node`.
    pub fn start() -> Result<Self, HarnessError> {
        crate::init();
        check_prerequisites()?;
        let running = node_script(&["status"])?.success();
        let begin = Instant::now();
        let out = node_script(&["start"])?;
        if !out.success() {
            return Err(HarnessError::Startup {
                component: "node",
                reason: format!("scripts/node.sh start failed with {}", out.status),
                log: PathBuf::from(node_dir()).join("logs"),
                tail: out.stderr,
            });
        }
        let kubeconfig = PathBuf::from(out.stdout.trim());
        tracing::info!(kubeconfig = %kubeconfig.display(), elapsed = ?begin.elapsed(), reused = running, "node ready");
        Ok(Self {
            kubeconfig,
            started_here: !running,
        })
    }

    /// A handle on a node started elsewhere (by another [`Node`] or by hand): it is not
    /// stopped when this handle drops.
    pub fn attach(kubeconfig: PathBuf) -> Self {
        Self {
            kubeconfig,
            started_here: false,
        }
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Where the node keeps its logs (`containerd.log`, `kubelet.log`, ...).
    pub fn logs_dir(&self) -> PathBuf {
        PathBuf::from(node_dir()).join("logs")
    }

    /// `kubectl --kubeconfig <admin> <args>`; a non-zero exit is not an error.
    pub fn kubectl(&self, args: &[&str]) -> Result<KubectlOutput, HarnessError> {
        self.run("kubectl", &kubectl_binary(), &["--kubeconfig"], args, None)
    }

    /// Like [`kubectl`](Self::kubectl) with `stdin` piped in.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<KubectlOutput, HarnessError> {
        self.run(
            "kubectl",
            &kubectl_binary(),
            &["--kubeconfig"],
            args,
            Some(stdin),
        )
    }

    /// `helm <args> --kubeconfig <admin>` with a throwaway helm home.
    pub fn helm(&self, args: &[&str]) -> Result<KubectlOutput, HarnessError> {
        let bin = crate::helm::helm_binary()?;
        let home = temp_dir()?;
        let mut all: Vec<&str> = args.to_vec();
        let kubeconfig = self.kubeconfig.to_string_lossy();
        all.extend(["--kubeconfig", &kubeconfig]);
        let output = Command::new(&bin)
            .args(&all)
            .env("HELM_CACHE_HOME", home.path().join("cache"))
            .env("HELM_CONFIG_HOME", home.path().join("config"))
            .env("HELM_DATA_HOME", home.path().join("data"))
            .output()
            .map_err(HarnessError::io("running", &bin))?;
        Ok(KubectlOutput::new("helm", args, output))
    }

    fn run(
        &self,
        program: &'static str,
        bin: &str,
        before: &[&str],
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<KubectlOutput, HarnessError> {
        let mut cmd = Command::new(bin);
        cmd.args(before)
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(HarnessError::io("running", bin))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .map_err(HarnessError::io("writing to", bin))?;
        }
        let output = child
            .wait_with_output()
            .map_err(HarnessError::io("running", bin))?;
        Ok(KubectlOutput::new(program, args, output))
    }

    /// Imports an image archive into the node's containerd (`scripts/node.sh load`).
    pub fn load(&self, archive: &Path) -> Result<(), HarnessError> {
        let archive = archive.to_string_lossy();
        let out = node_script(&["load", &archive])?;
        if out.success() {
            Ok(())
        } else {
            Err(HarnessError::Response {
                url: format!("scripts/node.sh load {archive}"),
                reason: out.to_string(),
            })
        }
    }

    /// A new admin client bound to the calling test's runtime.
    pub async fn client(&self) -> Result<Client, HarnessError> {
        let client_error = |e: Arc<dyn std::error::Error + Send + Sync>| HarnessError::Client {
            kubeconfig: self.kubeconfig.clone(),
            source: e,
        };
        let kubeconfig =
            Kubeconfig::read_from(&self.kubeconfig).map_err(|e| client_error(Arc::new(e)))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| client_error(Arc::new(e)))?;
        Client::try_from(config).map_err(|e| client_error(Arc::new(e)))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let keep = std::env::var("FICUS_NODE_KEEP").is_ok_and(|v| v == "1");
        if self.started_here && !keep {
            match node_script(&["stop"]) {
                Ok(out) if out.success() => tracing::info!("node stopped"),
                Ok(out) => tracing::warn!(%out, "stopping the node failed"),
                Err(e) => tracing::warn!(error = %e, "stopping the node failed"),
            }
        }
    }
}

fn node_dir() -> String {
    std::env::var("FICUS_NODE_DIR").unwrap_or_else(|_| "/var/tmp/ficus-node".into())
}

/// Inotify instances held by this process so that only a few of the machine's per-user limit
/// are left, as on a machine busy with other watchers (every process of the user counts: JVMs,
/// file watchers, the node's own components). Dropping it gives them back.
///
/// A kubelet started in that state exits ("Failed to start cAdvisor: inotify_init: too many
/// open files") unless `scripts/node.sh` raises the limit first.
#[derive(Debug)]
pub struct InotifyPressure {
    held: Vec<OwnedFd>,
}

impl InotifyPressure {
    /// Takes instances until the kernel refuses one, then gives `left_free` of them back.
    /// `None` when the limit is more than this process may hold open (its file limit): the
    /// machine cannot be squeezed from here.
    pub fn leaving(left_free: usize) -> io::Result<Option<Self>> {
        let limit: u64 = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")?
            .trim()
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut files = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // Room for the fds this process already has, so EMFILE below means the inotify limit.
        if limit.saturating_add(256) > files.rlim_cur {
            return Ok(None);
        }
        let mut held = Vec::new();
        loop {
            // SAFETY: inotify_init1 has no preconditions; a non-negative result is a new fd.
            let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
            if fd < 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EMFILE) {
                    break;
                }
                return Err(err);
            }
            // SAFETY: fd was just returned by inotify_init1 and is owned by nobody else.
            held.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        held.truncate(held.len().saturating_sub(left_free));
        Ok(Some(Self { held }))
    }

    /// How many instances this value holds.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

fn node_script(args: &[&str]) -> Result<KubectlOutput, HarnessError> {
    let script = repo_root().join("scripts/node.sh");
    let output = Command::new("bash")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(HarnessError::io("running", &script))?;
    Ok(KubectlOutput::new("node.sh", args, output))
}

fn missing(component: impl Into<String>, reason: impl Into<String>) -> HarnessError {
    HarnessError::Missing {
        component: component.into(),
        reason: reason.into(),
    }
}

/// Everything `scripts/node.sh start` needs, as [`HarnessError::Missing`] naming the first gap.
fn check_prerequisites() -> Result<(), HarnessError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(missing(
            "node",
            "needs root (a bridge, iptables rules, mounts)",
        ));
    }
    for tool in ["containerd", "runc", "ctr", "iptables", "openssl"] {
        locate_binary(tool, "FICUS_NODE_UNUSED", tool).map_err(|_| {
            missing(
                tool,
                "not on PATH: run scripts/install-deps.sh node (Debian packages containerd, runc, containernetworking-plugins)",
            )
        })?;
    }
    let cni = std::env::var("FICUS_CNI_BIN").unwrap_or_else(|_| "/usr/lib/cni".into());
    for plugin in ["bridge", "host-local", "loopback"] {
        if !executable(&Path::new(&cni).join(plugin)) {
            return Err(missing(
                format!("CNI plugin {plugin}"),
                format!("not in {cni}: run scripts/install-deps.sh node"),
            ));
        }
    }
    let version = std::env::var("FICUS_KUBE_VERSION").unwrap_or_else(|_| KUBE_VERSION.into());
    let etcd = std::env::var("FICUS_ETCD_VERSION").unwrap_or_else(|_| "v3.6.16".into());
    for name in NODE_BINARIES {
        let v = if name == "etcd" { &etcd } else { &version };
        let path = cache_dir().join("bin").join(format!("{name}-{v}"));
        if !executable(&path) {
            return Err(missing(
                format!("{name} {v}"),
                format!(
                    "{} not built: run scripts/build-control-plane.sh all && scripts/build-control-plane.sh node",
                    path.display()
                ),
            ));
        }
    }
    let pause = cache_dir()
        .join("images")
        .join(format!("pause-{PAUSE_TAG}.tar"));
    if !pause.is_file() {
        return Err(missing(
            "the sandbox (pause) image",
            format!(
                "{} not built: run scripts/build-control-plane.sh node",
                pause.display()
            ),
        ));
    }
    Ok(())
}

/// The operator and chat-service images of the last `scripts/build-images.sh`.
#[derive(Debug, Clone)]
pub struct Images {
    /// `ficus.local/ficus-operator:<hash>`
    pub operator: String,
    /// `ficus.local/chat-service:<hash>`
    pub chat: String,
    /// The image archive holding both.
    pub archive: PathBuf,
}

impl Images {
    /// Reads `$FICUS_CACHE/images/current.env`, written by `scripts/build-images.sh`.
    pub fn current() -> Result<Self, HarnessError> {
        let path = cache_dir().join("images/current.env");
        let text = std::fs::read_to_string(&path).map_err(|_| {
            missing(
                "the operator and chat-service images",
                format!("{} not found: run scripts/build-images.sh", path.display()),
            )
        })?;
        let vars: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |key: &str| {
            vars.get(key)
                .map(|v| v.to_string())
                .ok_or_else(|| HarnessError::Response {
                    url: path.display().to_string(),
                    reason: format!("no {key}"),
                })
        };
        let images = Self {
            operator: get("FICUS_OPERATOR_IMAGE")?,
            chat: get("FICUS_CHAT_IMAGE")?,
            archive: get("FICUS_IMAGES_ARCHIVE")?.into(),
        };
        if !images.archive.is_file() {
            return Err(missing(
                "the operator and chat-service images",
                format!(
                    "{} is gone: run scripts/build-images.sh",
                    images.archive.display()
                ),
            ));
        }
        Ok(images)
    }
}

/// `repository` and `tag` of an image reference `repository:tag`.
pub fn split_image(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (reference, "latest"),
    }
}

/// Forwards TCP connections from `NODE_IP:<port>` to a server on loopback, so pods reach test
/// servers that only listen on 127.0.0.1. Stops accepting when dropped.
#[derive(Debug)]
pub struct HostForward {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl HostForward {
    pub fn start(target: SocketAddr) -> Result<Self, HarnessError> {
        let listener = TcpListener::bind((NODE_IP, 0))
            .map_err(HarnessError::io("binding a port on", NODE_IP.to_string()))?;
        let addr = listener.local_addr().map_err(HarnessError::io(
            "reading the address of",
            NODE_IP.to_string(),
        ))?;
        listener
            .set_nonblocking(true)
            .map_err(HarnessError::io("configuring", addr.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        if let Err(e) = splice(client, target) {
                            tracing::debug!(%target, error = %e, "forwarded connection failed");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => tracing::warn!(%addr, error = %e, "accept failed"),
                }
            }
        });
        tracing::info!(%addr, %target, "forwarding for pods");
        Ok(Self { addr, stop })
    }

    /// `NODE_IP:<port>`, the address pods use.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HostForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies both directions of one connection on two threads.
fn splice(client: TcpStream, target: SocketAddr) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect(target)?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut c_read, mut s_write) = (client.try_clone()?, server.try_clone()?);
    let (mut s_read, mut c_write) = (server, client);
    std::thread::spawn(move || {
        let _ = io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let _ = io::copy(&mut s_read, &mut c_write);
        let _ = c_write.shutdown(Shutdown::Write);
    });
    Ok(())
}

/// A Prometheus on `NODE_IP` that scrapes the pods of one namespace annotated
/// `prometheus.io/scrape: "true"` at their `prometheus.io/port`, labelled `namespace` and `pod`
/// as the Prometheus Operator's pod monitors would. Scrape and evaluation every 2s.
///
/// Debian's Prometheus is built without Kubernetes service discovery, so a thread lists the
/// pods every 2s and writes them to a `file_sd` file, which Prometheus watches.
#[derive(Debug)]
pub struct PodPrometheus {
    // Killed before the directory goes.
    proc: Proc,
    addr: SocketAddr,
    /// Dropped to stop the thread that writes the scrape targets, joined before the directory
    /// it writes into goes.
    stop: Option<mpsc::Sender<()>>,
    lister: Option<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

impl PodPrometheus {
    pub fn start(node: &Node, namespace: &str) -> Result<Self, HarnessError> {
        let bin = locate_binary("prometheus", "FICUS_PROMETHEUS", "prometheus")?;
        let dir = temp_dir()?;
        let addr = {
            let l = TcpListener::bind((NODE_IP, 0))
                .map_err(HarnessError::io("binding a port on", NODE_IP.to_string()))?;
            l.local_addr().map_err(HarnessError::io(
                "reading the address of",
                NODE_IP.to_string(),
            ))?
        };
        let targets = dir.path().join("pods.json");
        write_atomically(&targets, "[]")?;
        let yml = serde_json::json!({
            "global": { "scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s" },
            "scrape_configs": [{
                "job_name": "pods",
                "file_sd_configs": [{ "files": [targets], "refresh_interval": "2s" }],
            }],
        });
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, yml.to_string()).map_err(HarnessError::io("writing", &config))?;
        let mut cmd = Command::new(&bin);
        cmd.args([
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={addr}"),
        ]);
        let log = dir.path().join("prometheus.log");
        let mut proc = Proc::spawn("prometheus", cmd, &log, false)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match http::get_blocking(addr, "/-/ready") {
                Ok(r) if r.status == 200 => break,
                _ if Instant::now() < deadline && proc.exited().is_none() => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                last => {
                    proc.kill();
                    return Err(HarnessError::Startup {
                        component: "prometheus",
                        reason: format!("no 200 from /-/ready: {:?}", last.map(|r| r.status)),
                        log: log.clone(),
                        tail: crate::process::log_tail(&log, 20),
                    });
                }
            }
        }

        let (stop, stopped) = mpsc::channel::<()>();
        let (lister, ns) = (Node::attach(node.kubeconfig.clone()), namespace.to_owned());
        let lister = std::thread::spawn(move || {
            loop {
                match scrape_targets(&lister, &ns) {
                    Ok(json) => {
                        if let Err(e) = write_atomically(&targets, &json) {
                            tracing::warn!(error = %e, "writing the scrape targets");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "listing pods to scrape"),
                }
                // Every 2 s, until the sender is dropped.
                if stopped.recv_timeout(Duration::from_secs(2)) != Err(RecvTimeoutError::Timeout) {
                    break;
                }
            }
        });
        tracing::info!(%addr, "prometheus for pods ready");
        Ok(Self {
            proc,
            addr,
            stop: Some(stop),
            lister: Some(lister),
            _dir: dir,
        })
    }

    /// `http://NODE_IP:<port>`, reachable from pods and from the host.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The running, annotated pods of `ns` as `file_sd` JSON.
fn scrape_targets(node: &Node, ns: &str) -> Result<String, HarnessError> {
    let out = node.kubectl(&["get", "pods", "-n", ns, "-o", "json"])?;
    if !out.success() {
        return Err(HarnessError::Response {
            url: "kubectl get pods".into(),
            reason: out.to_string(),
        });
    }
    let list: serde_json::Value =
        serde_json::from_str(&out.stdout).map_err(|e| HarnessError::Response {
            url: "kubectl get pods".into(),
            reason: e.to_string(),
        })?;
    let empty = Vec::new();
    let groups: Vec<serde_json::Value> = list["items"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter(|p| p["status"]["phase"] == "Running")
        .filter(|p| p["metadata"]["annotations"]["prometheus.io/scrape"] == "true")
        .filter_map(|p| {
            let ip = p["status"]["podIP"].as_str()?;
            let port = p["metadata"]["annotations"]["prometheus.io/port"].as_str()?;
            Some(serde_json::json!({
                "targets": [format!("{ip}:{port}")],
                "labels": { "namespace": ns, "pod": p["metadata"]["name"] },
            }))
        })
        .collect();
    Ok(serde_json::Value::Array(groups).to_string())
}

/// Writes through a temp file and a rename, so a watcher never reads half a file.
fn write_atomically(path: &Path, content: &str) -> Result<(), HarnessError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).map_err(HarnessError::io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(HarnessError::io("renaming", &tmp))
}

impl Drop for PodPrometheus {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(lister) = self.lister.take() {
            let _ = lister.join();
        }
        self.proc.kill();
    }
}
