//! Operator cost with many Migrations: the real `ficus-operator` binary against a real
//! kube-apiserver runs N Migrations through their whole plan at once, then idles with them.
//! Prints wall time, reconciles, the operator's CPU time and peak memory (read from /proc);
//! asserts nothing.
//!
//! ```sh
//! cargo build --release -p ficus-operator -p ficus-e2e --bins
//! target/release/bench-scale [MIGRATIONS]        # default 200
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ficus_e2e::operator::install_crds;
use ficus_operator::crd::{Migration, Phase};
use ficus_testkit::{ControlPlane, create_namespace, free_addr, memory_mib};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const IDLE: Duration = Duration::from_secs(30);
/// How long all Migrations may take to complete: 10 minutes, and 60 ms more for each.
fn timeout(n: usize) -> Duration {
    Duration::from_secs(600) + Duration::from_millis(60) * n as u32
}

/// Kills the operator when the benchmark ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU seconds (user + system) and resident memory of a process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    cpu_secs: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
}

fn usage(pid: u32) -> Usage {
    let ticks = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of /proc/pid/stat, i.e. 11 and 12 after the name.
    Usage {
        cpu_secs: (field(11) + field(12)) / ticks,
        rss_mib: memory_mib(pid, "VmRSS"),
        peak_rss_mib: memory_mib(pid, "VmHWM"),
    }
}

/// Counter `name` summed over its labels, from the operator's /metrics.
async fn counter(addr: SocketAddr, name: &str) -> Result<f64, BoxError> {
    let body = prometheus_http_query::reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?;
    Ok(body
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum())
}

/// The `q` quantile of histogram `name` from its cumulative buckets, interpolated linearly
/// inside the bucket it falls in (as PromQL's `histogram_quantile` does).
async fn quantile(addr: SocketAddr, name: &str, q: f64) -> Result<f64, BoxError> {
    let body = prometheus_http_query::reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?;
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = body
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    if total == 0.0 {
        return Err(format!("{name} has no observations").into());
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Ok(lower);
            }
            return Ok(lower + (le - lower) * (rank - below) / (count - below).max(1.0));
        }
        (lower, below) = (le, count);
    }
    Ok(lower)
}

async fn reconciles(addr: SocketAddr) -> Result<f64, BoxError> {
    counter(addr, "ficus_reconciles_total").await
}

async fn completed_reconciles(addr: SocketAddr) -> Result<f64, BoxError> {
    counter(addr, "ficus_reconciles_total{phase=\"Completed\"}").await
}

fn spec(n: usize) -> serde_json::Value {
    json!({
        "service": format!("svc-{n}"),
        "flags": { "configMap": { "name": format!("flags-{n}") } },
        "shadow": { "duration": "2s" },
        "steps": [10, 50, 100],
        "bakeTime": "2s",
        "cutover": { "completeAfter": "2s" },
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    ficus_testkit::init();
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let cp = ControlPlane::start()?;
    install_crds(&cp)?;
    let client = cp.client().await?;
    let ns = "scale";
    create_namespace(&client, ns).await?;

    let bin = std::env::var("FICUS_OPERATOR_BIN")
        .map(Into::into)
        .unwrap_or_else(|_| {
            std::env::current_exe()
                .map(|p| p.with_file_name("ficus-operator"))
                .unwrap_or_default()
        });
    let addr = free_addr()?;
    let log = std::fs::File::create(cp.dir().join("operator.log"))?;
    let child = Command::new(&bin)
        .args(["--no-leader-election", "--http-addr", &addr.to_string()])
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start {}: {e}; build it with `cargo build --release -p ficus-operator`",
                bin.display()
            )
        })?;
    let operator = Running(child);
    let pid = operator.0.id();
    let start = Instant::now();
    while reconciles(addr).await.is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            return Err("the operator's /metrics never answered".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_rest = usage(pid);

    let api: Api<Migration> = Api::namespaced(client.clone(), ns);
    let begin = Instant::now();
    for i in 0..n {
        let m: Migration = serde_json::from_value(json!({
            "apiVersion": "ficus.dev/v1alpha1", "kind": "Migration",
            "metadata": { "name": format!("m-{i}") }, "spec": spec(i),
        }))?;
        api.create(&PostParams::default(), &m).await?;
    }
    let created = begin.elapsed();

    // Wait for every Migration to complete, sampling the operator's memory.
    let mut peak = at_rest;
    let mut phases = BTreeMap::new();
    loop {
        let now = usage(pid);
        if now.rss_mib > peak.rss_mib {
            peak = now;
        }
        let list = api.list(&ListParams::default()).await?;
        phases.clear();
        for m in &list.items {
            let phase = m.status.as_ref().map(|s| s.phase).unwrap_or_default();
            *phases.entry(format!("{phase:?}")).or_insert(0usize) += 1;
        }
        let done = list
            .items
            .iter()
            .filter(|m| {
                m.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Phase::Completed)
            })
            .count();
        if done == n {
            break;
        }
        if begin.elapsed() > timeout(n) {
            return Err(format!(
                "not all Migrations completed in {:?}: {phases:?}",
                timeout(n)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_done = begin.elapsed();
    let busy = usage(pid);
    let busy_reconciles = reconciles(addr).await?;
    let busy_resyncs = completed_reconciles(addr).await?;
    let conflicts = counter(addr, "ficus_status_conflicts_total").await?;
    let mut reconcile_ms = Vec::new();
    for q in [0.5, 0.9, 0.99] {
        reconcile_ms.push(quantile(addr, "ficus_reconcile_duration_seconds", q).await? * 1e3);
    }

    // Steady state: every Migration Completed, nothing to do but requeues.
    tokio::time::sleep(IDLE).await;
    let idle = usage(pid);
    let idle_reconciles = reconciles(addr).await? - busy_reconciles;
    let idle_resyncs = completed_reconciles(addr).await? - busy_resyncs;

    let plan = "shadow 2s, steps 10/50/100 % with bakeTime 2s, cut-over 2s (minimum ~10 s each)";
    println!("operator cost with many Migrations ({n} at once, no gates)");
    println!(
        "settings: {plan}; operator {} (release build recommended), one replica, all namespaces",
        bin.display()
    );
    println!(
        "machine: {} CPUs; API server and etcd on the same host",
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(0)
    );
    println!();
    println!(
        "created {n} Migrations in {:.1} s; all Completed after {:.1} s",
        created.as_secs_f64(),
        all_done.as_secs_f64()
    );
    println!(
        "reconciles until all Completed: {busy_reconciles:.0} ({:.1} per Migration; {conflicts:.0} status writes refused as stale and decided again)",
        busy_reconciles / n as f64
    );
    println!(
        "of them in phase Completed: {busy_resyncs:.0} ({:.2} per Migration; a Completed Migration is checked again every {} s plus up to a tenth)",
        busy_resyncs / n as f64,
        ficus_operator::machine::IDLE_REQUEUE.as_secs()
    );
    println!(
        "reconcile time without PromQL (ficus_reconcile_duration_seconds, from its buckets): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms",
        reconcile_ms[0], reconcile_ms[1], reconcile_ms[2]
    );
    let busy_cpu = busy.cpu_secs - at_rest.cpu_secs;
    println!(
        "operator CPU until all Completed: {busy_cpu:.2} s ({:.2} ms per reconcile, {:.0} % of one core)",
        busy_cpu * 1e3 / busy_reconciles.max(1.0),
        busy_cpu * 100.0 / all_done.as_secs_f64()
    );
    println!(
        "operator memory: {:.1} MiB at rest, {:.1} MiB peak (VmHWM {:.1} MiB), {:.1} MiB with {n} Completed",
        at_rest.rss_mib, peak.rss_mib, idle.peak_rss_mib, idle.rss_mib
    );
    println!(
        "idle with {n} Completed Migrations for {}s: {idle_reconciles:.0} reconciles ({idle_resyncs:.0} in phase Completed), {:.2} s CPU ({:.1} % of one core)",
        IDLE.as_secs(),
        idle.cpu_secs - busy.cpu_secs,
        (idle.cpu_secs - busy.cpu_secs) * 100.0 / IDLE.as_secs_f64()
    );
    Ok(())
}
