//! The Helm chart on a real node (`scripts/node.sh`): `helm install` of the whole chart with the
//! images `scripts/build-images.sh` built from the Dockerfile, and nothing faked — the kubelet
//! runs the operator (two replicas, leader election, webhook), the legacy and new chat-service,
//! and the backfill and validation Jobs the operator creates; Deployments become ready and Jobs
//! succeed by themselves; the chat load runs as pods through the chat Service.
//!
//! PostgreSQL, Cassandra (the ScyllaDB stand-in) and Prometheus run as local processes, not
//! pods: no registry is reachable for their images, the harness already runs them from Debian
//! packages and Maven Central, and what is under test is the chart's pods, not the databases'.
//! Pods reach them at the node IP (the host end of the node's bridge): Cassandra listens there,
//! PostgreSQL is forwarded there from loopback.
//!
//! The flow is a user's: the chat stack is installed first and serves (history lands in
//! PostgreSQL only), then `helm upgrade` turns the chart's Migration on with the backfill. The
//! chart's Migration shadows for 10 minutes and completes 24 hours after cut-over; the test
//! skips those two waits with `ficus.dev/promote`, as an operator in a hurry would. Each traffic
//! step is promoted once the operator has evaluated every gate on the pods' real metrics.
//! `helm uninstall` then leaves the flags in the state that is safe for a completed migration:
//! the chart's pre-delete hook (a Job of the operator image) deletes the Migration while the
//! operator still runs, and waits for its finalizer.
//!
//! Over 600 lines: one real node, started once, for the whole helm install and migration.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ficus_operator::crd::{Migration, Phase, Verdict};
use ficus_testkit::node::{
    HostForward, Images, InotifyPressure, NODE_IP, Node, PodPrometheus, split_image,
};
use ficus_testkit::{Cassandra, Postgres, skip_or_fail, unique_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// Helm names the resources `ficus-<component>` when the release name holds the chart name.
const RELEASE: &str = "ficus";
const JWT_SECRET: &str = "cluster-test-jwt-secret-0123456789abcdef";
/// base64 of 32 bytes.
const ENCRYPTION_KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
const READY: Duration = Duration::from_secs(240);
/// The chat load through both Split steps. The 50 % step needs 1,000 requests per cohort in
/// the p99 gates' window (about 75 s at this load's 28 calls/s) before it is judged, and the
/// 100 % step's gates read the same window: a load that ends before the last step is judged
/// leaves it without evidence, and the step never promotes.
const SPLIT_LOAD_SECS: u32 = 210;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_the_chart_on_a_real_node_and_the_chat_migration_completes()
-> anyhow::Result<()> {
    ficus_testkit::init();
    let begin = Instant::now();
    let images = skip_or_fail!(Images::current());
    skip_or_fail!(ficus_testkit::helm::helm_binary());
    // This test runs after many others, on a machine whose inotify instances (128 per user by
    // default) other processes may have nearly used up; a kubelet started then exits at once.
    // The node must come up anyway: start it with only a few left.
    const LEFT_FREE: usize = 4;
    let pressure = InotifyPressure::leaving(LEFT_FREE)?;
    if let Some(pressure) = &pressure {
        println!(
            "starting the node with {} inotify instances held by this test, {LEFT_FREE} left free",
            pressure.held()
        );
    }
    let node = skip_or_fail!(Node::start());
    drop(pressure);
    let pg = skip_or_fail!(Postgres::shared());
    // Its own node on the node IP: CQL drivers connect to the address the node announces.
    let cassandra = skip_or_fail!(Cassandra::start_on(NODE_IP));
    node.load(&images.archive)?;

    let ns = unique_namespace("cluster");
    let result = run(&node, &images, pg, &cassandra, &ns).await;
    if result.is_err() {
        diagnostics(&node, &ns);
        // A reused node keeps running: leave nothing behind that competes for its CPUs (the
        // Migration first, while the operator can still run its finalizer).
        let _ = node.kubectl(&["delete", "migrations", "--all", "-n", &ns, "--timeout=60s"]);
        let _ = node.helm(&["uninstall", RELEASE, "-n", &ns]);
        let _ = node.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    }
    println!("cluster test: {:?}", begin.elapsed());
    result
}

async fn run(
    node: &Node,
    images: &Images,
    pg: &Postgres,
    cassandra: &Cassandra,
    ns: &str,
) -> anyhow::Result<()> {
    let client = node.client().await?;
    ok(node.kubectl(&["create", "namespace", ns])?)?;

    // The databases, reachable from pods at the node IP.
    let db = pg.create_database("cluster").await?;
    let db_name = db.rsplit('/').next().unwrap_or_default().to_owned();
    let pg_for_pods = HostForward::start(pg.addr())?;
    let keyspace = cassandra.create_keyspace("cluster").await?;
    let prometheus = PodPrometheus::start(node, ns)?;

    let database_url = format!("postgres://postgres@{}/{db_name}", pg_for_pods.addr());
    ok(node.kubectl(&[
        "create",
        "secret",
        "generic",
        "chat-secrets",
        "-n",
        ns,
        &format!("--from-literal=DATABASE_URL={database_url}"),
        &format!("--from-literal=CHAT_JWT_SECRET={JWT_SECRET}"),
        &format!("--from-literal=CHAT_ENCRYPTION_KEY={ENCRYPTION_KEY}"),
    ])?)?;

    let (operator_repo, operator_tag) = split_image(&images.operator);
    let (chat_repo, chat_tag) = split_image(&images.chat);
    let mut sets: Vec<String> = vec![
        format!("operator.image.repository={operator_repo}"),
        format!("operator.image.tag={operator_tag}"),
        "operator.image.pullPolicy=Never".into(),
        format!("chat.image.repository={chat_repo}"),
        format!("chat.image.tag={chat_tag}"),
        "chat.image.pullPolicy=Never".into(),
        "chat.existingSecret=chat-secrets".into(),
        "chat.legacy.replicas=1".into(),
        "chat.new.replicas=1".into(),
        format!("chat.new.cql.contactPoints={{{}}}", cassandra.addr()),
        format!("chat.new.cql.keyspace={keyspace}"),
        // Two cores run the whole cluster: keep the pods' requests small enough to schedule.
        "operator.resources.requests.cpu=10m".into(),
        "chat.resources.requests.cpu=10m".into(),
    ];
    let chart = ficus_testkit::helm::chart_dir();
    let chart = chart.to_string_lossy().into_owned();

    // 1. The chat stack alone, as before any migration: helm waits for the Deployments to be
    //    ready, which only a kubelet running the pods can make true.
    let t = Instant::now();
    helm_chart(node, "install", &chart, ns, &sets)?;
    println!("helm install --wait: {:?}", t.elapsed());
    let chat_svc = service_addr(&client, ns, &format!("{RELEASE}-chat")).await?;
    let legacy_svc = service_addr(&client, ns, &format!("{RELEASE}-chat-legacy")).await?;
    let (status, body) = http(chat_svc, "GET", "/readyz", None, "")?;
    anyhow::ensure!(status == 200, "chat Service /readyz: {status} {body}");

    // History written before the migration, to PostgreSQL only (legacy Service).
    load(node, ns, images, "history", legacy_svc, 1_000, 15)?;

    // The operator: one of its two pods holds the Lease, and the webhook takes a payload with
    // the chart's token.
    let lease = wait_until(READY, "the operator's Lease", || async {
        let lease = Api::<Lease>::namespaced(client.clone(), ns)
            .get_opt("ficus-operator-leader")
            .await?;
        Ok(lease.and_then(|l| l.spec?.holder_identity))
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let operator_pods: Vec<String> = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=ficus-operator"))
        .await?
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    anyhow::ensure!(
        operator_pods.len() == 2 && operator_pods.iter().any(|p| lease.contains(p.as_str())),
        "Lease held by {lease}, operator pods {operator_pods:?}"
    );
    let token = ok(node.kubectl(&[
        "get",
        "secret",
        "-n",
        ns,
        &format!("{RELEASE}-operator-webhook"),
        "-o",
        "jsonpath={.data.token}",
    ])?)?;
    let token = String::from_utf8(base64_decode(token.trim())?)?;
    let operator_svc = service_addr(&client, ns, &format!("{RELEASE}-operator")).await?;
    wait_until(Duration::from_secs(60), "the webhook to answer 200", || {
        let token = token.clone();
        async move {
            let (status, body) = http(
                operator_svc,
                "POST",
                "/webhook/alertmanager",
                Some(&token),
                r#"{"alerts":[]}"#,
            )?;
            Ok((status == 200).then_some(body))
        }
    })
    .await?;

    // 2. The migration, turned on by an upgrade: dual writes start now.
    sets.extend([
        "chat.migration.enabled=true".into(),
        "chat.migration.steps={50,100}".into(),
        "chat.migration.bakeTime=20s".into(),
        // Enough compared reads for the drift gate (200 in 5 minutes) under this light load.
        "chat.migration.readSamplePercent=50".into(),
        format!("chat.migration.prometheusUrl={}", prometheus.url()),
        "chat.migration.backfill.enabled=true".into(),
        "chat.migration.backfill.parallelism=2".into(),
    ]);
    helm_chart(node, "upgrade", &chart, ns, &sets)?;
    let migrations: Api<Migration> = Api::namespaced(client.clone(), ns);
    let name = format!("{RELEASE}-chat");
    phase(&migrations, &name, Phase::Shadow, READY).await?;
    // The new cohort reads from the Cassandra JVM that shares this machine's cores with the
    // whole cluster: its p99 has reached 3.4 x the legacy cohort's here, and two failing
    // evaluations roll back before the drift gate has its 200 samples. The thresholds are
    // checked in shipped_gates.rs; this test lets them fail up to 8 times in a row instead.
    let patch = json!({ "spec": { "analysis": { "failureLimit": 8 } } });
    migrations
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    // No traffic in the shortened Shadow: its shadow reads of history the backfill has not
    // copied yet would count as drift in the first step's 5-minute gate window.
    promote(&migrations, &name).await?;

    // 3. Backfill and validation: Jobs the operator creates, run and finished by the kubelet.
    let t = Instant::now();
    phase(&migrations, &name, Phase::Split, READY).await?;
    println!("backfill + validation Jobs: {:?}", t.elapsed());
    let jobs: Vec<Job> = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=ficus"))
        .await?
        .items;
    anyhow::ensure!(jobs.len() >= 2, "backfill and validation Jobs: {jobs:?}");
    for job in &jobs {
        let status = job.status.clone().unwrap_or_default();
        anyhow::ensure!(
            status.succeeded.unwrap_or(0) >= 1 && status.failed.unwrap_or(0) == 0,
            "Job {} succeeded by itself: {status:?}",
            job.name_any()
        );
    }

    // 4. The steps, analysed on the pods' metrics while the chat load runs through the Service.
    //    Each step is promoted once the operator has evaluated every gate on real data (and
    //    seen the pods report the flag generation), not after a full bake: on two cores shared
    //    by the whole cluster p99-ratio has reached 1.57, over its threshold, so a full bake
    //    can roll back. Drift must be exactly 0: the history was backfilled, and writes in
    //    flight are not drift.
    let t = Instant::now();
    let driver = load_in_background(node, ns, images, "split", chat_svc, 3_000, SPLIT_LOAD_SECS);
    for step in 1..=2 {
        let analysed = wait_until(
            Duration::from_secs(180),
            &format!("step {step} analysed on the pods' metrics"),
            || async {
                let m = migrations.get(&name).await?;
                let Some(status) = m.status.clone() else {
                    return Ok(None);
                };
                anyhow::ensure!(
                    !matches!(status.phase, Phase::RollingBack | Phase::RolledBack),
                    "Migration {name} rolled back: {:#?}",
                    status.last_rollback
                );
                if status.phase == Phase::CutOver || status.step.unwrap_or(0) > step {
                    return Ok(Some(None));
                }
                // Every gate that applies at this step judged on enough samples: at 50 % the
                // cohort comparisons too, at 100 % (no legacy cohort) the new cohort's own p99.
                let since = status.step_started_at;
                let evaluated = status.last_analysis.as_ref().filter(|a| {
                    since.as_ref().is_none_or(|s| a.time > *s)
                        && a.gates
                            .iter()
                            .any(|g| g.name == "drift" && g.value.is_some())
                        && a.gates.iter().all(|g| {
                            matches!(g.verdict, Verdict::Pass | Verdict::Fail | Verdict::Skipped)
                        })
                });
                Ok(match evaluated {
                    Some(a)
                        if status.phase == Phase::Split
                            && status.step == Some(step)
                            && status.reported_generation.is_some() =>
                    {
                        Some(Some(a.clone()))
                    }
                    _ => None,
                })
            },
        )
        .await?;
        if let Some(analysis) = analysed {
            let gates: Vec<String> = analysis
                .gates
                .iter()
                .map(|g| format!("{}={:?} {:?}", g.name, g.value, g.verdict))
                .collect();
            println!("step {step}: {}", gates.join(", "));
            let drift = analysis.gates.iter().find(|g| g.name == "drift");
            anyhow::ensure!(
                drift.and_then(|g| g.value) == Some(0.0),
                "step {step}: drift on a clean migration: {drift:?}"
            );
            promote(&migrations, &name).await?;
        }
    }
    phase(&migrations, &name, Phase::CutOver, Duration::from_secs(120)).await?;
    println!(
        "Split 50 -> 100, analysed on live metrics: {:?}",
        t.elapsed()
    );
    // CutOver completes after the chart's 24h: now.
    promote(&migrations, &name).await?;
    driver
        .join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    let done = phase(&migrations, &name, Phase::Completed, READY).await?;
    let flags_name = "chat-migration-flags";
    let flags = flag_values(&client, ns, flags_name).await?;
    anyhow::ensure!(
        flags.get("write_primary").map(String::as_str) == Some("new")
            && flags.get("read_split_percent").map(String::as_str) == Some("100"),
        "flags at completion: {flags:?}"
    );
    let legacy = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(&format!("{RELEASE}-chat-legacy"))
        .await?;
    anyhow::ensure!(
        legacy.spec.replicas == Some(0),
        "legacy scaled down at completion"
    );
    println!(
        "Migration {name}: {:?}; history {:?}",
        done.status.as_ref().map(|s| s.phase),
        done.status.as_ref().map(|s| s
            .history
            .iter()
            .map(|t| format!("{:?}", t.to))
            .collect::<Vec<_>>())
    );
    // The new track still serves after cut-over.
    load(node, ns, images, "after", chat_svc, 4_000, 5)?;
    let pods_out = ok(node.kubectl(&["get", "pods,jobs", "-n", ns, "-o", "wide"])?)?;
    println!("{pods_out}");

    // 5. helm uninstall, nothing else: the chart's pre-delete hook deletes the Migration while
    //    the operator runs, whose finalizer leaves the flags safe for a completed migration
    //    (new store primary, no dual writes); then helm removes the rest.
    let uninstalled =
        ok(node.helm(&["uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "4m"])?)?;
    println!("{uninstalled}");
    let flags = flag_values(&client, ns, flags_name).await?;
    anyhow::ensure!(
        flags.get("write_primary").map(String::as_str) == Some("new")
            && flags.get("dual_write").map(String::as_str) == Some("off"),
        "flags after helm uninstall: {flags:?}"
    );
    let left = Api::<Migration>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await?;
    anyhow::ensure!(
        left.items.is_empty(),
        "Migrations left after helm uninstall: {:?}",
        left.items
            .iter()
            .map(|m| m.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    ok(node.kubectl(&["delete", "namespace", ns, "--wait=false"])?)?;
    Ok(())
}

/// `helm <verb> ficus <chart> -n <ns> --set ... --wait`.
fn helm_chart(
    node: &Node,
    verb: &str,
    chart: &str,
    ns: &str,
    sets: &[String],
) -> anyhow::Result<String> {
    let mut args = vec![verb, RELEASE, chart, "-n", ns, "--wait", "--timeout", "4m"];
    for set in sets {
        args.extend(["--set", set.as_str()]);
    }
    ok(node.helm(&args)?)
}

fn ok(out: ficus_testkit::KubectlOutput) -> anyhow::Result<String> {
    anyhow::ensure!(out.success(), "{out}");
    Ok(out.stdout)
}

/// The ClusterIP address of Service `name` (kube-proxy routes it from the host too).
async fn service_addr(client: &Client, ns: &str, name: &str) -> anyhow::Result<SocketAddr> {
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    let spec = svc.spec.unwrap_or_default();
    let ip = spec
        .cluster_ip
        .ok_or_else(|| anyhow::anyhow!("Service {name} has no ClusterIP"))?;
    let port = spec
        .ports
        .and_then(|p| p.first().map(|p| p.port))
        .ok_or_else(|| anyhow::anyhow!("Service {name} has no port"))?;
    Ok(SocketAddr::new(ip.parse()?, u16::try_from(port)?))
}

/// One HTTP/1.0 request; the status and body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no HTTP status from {addr}: {response}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Runs the chat load client (`chat-service loadtest`, the chart's image) as a Job against
/// `target` and waits for it: it exits non-zero on any failed call (its one threshold; the
/// default latency thresholds would make the test a timing assertion on whatever machine runs
/// it, so latencies are printed, not judged). The k6 scenario's pace: each virtual user thinks
/// a second between iterations.
fn load(
    node: &Node,
    ns: &str,
    images: &Images,
    name: &str,
    target: SocketAddr,
    first_user: i32,
    secs: u32,
) -> anyhow::Result<()> {
    let job = format!("load-{name}");
    let manifest = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": job, "namespace": ns },
        "spec": {
            "backoffLimit": 0,
            "template": { "spec": {
                "restartPolicy": "Never",
                "securityContext": { "runAsNonRoot": true, "runAsUser": 65532 },
                "containers": [{
                    "name": "load",
                    "image": images.chat,
                    "imagePullPolicy": "Never",
                    "args": ["loadtest", "--base-url", format!("http://{target}"),
                             "--users", "10", "--rooms", "10", "--duration-secs", secs.to_string(),
                             "--think-ms", "1000", "--first-user-id", first_user.to_string(),
                             "--threshold", "errors:rate<=0"],
                    "env": [{ "name": "CHAT_JWT_SECRET", "value": JWT_SECRET }],
                }],
            }},
        },
    });
    ok(node.kubectl_stdin(&["apply", "-f", "-"], &manifest.to_string())?)?;
    let t = Instant::now();
    let waited = node.kubectl(&[
        "wait",
        "-n",
        ns,
        &format!("job/{job}"),
        "--for=condition=Complete",
        &format!("--timeout={}s", secs + 120),
    ])?;
    let logs = node.kubectl(&["logs", "-n", ns, &format!("job/{job}")])?;
    println!("load {name} ({:?}):\n{}", t.elapsed(), logs.stdout);
    anyhow::ensure!(waited.success(), "load Job {job} failed: {waited}\n{logs}");
    Ok(())
}

/// [`load`] on a thread of its own, for load that runs while the test watches the Migration.
fn load_in_background(
    node: &Node,
    ns: &str,
    images: &Images,
    name: &'static str,
    target: SocketAddr,
    first_user: i32,
    secs: u32,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    let node = Node::attach(node.kubeconfig_path().to_owned());
    let (ns, images) = (ns.to_owned(), images.clone());
    std::thread::spawn(move || load(&node, &ns, &images, name, target, first_user, secs))
}

/// Waits until the Migration is in `want`; fails early when it rolls back.
async fn phase(
    api: &Api<Migration>,
    name: &str,
    want: Phase,
    timeout: Duration,
) -> anyhow::Result<Migration> {
    wait_until(
        timeout,
        &format!("Migration {name} in {want:?}"),
        || async {
            let m = api.get(name).await?;
            let phase = m.status.as_ref().map(|s| s.phase).unwrap_or_default();
            anyhow::ensure!(
                !matches!(phase, Phase::RollingBack | Phase::RolledBack) || want == phase,
                "Migration {name} rolled back: {:#?}",
                m.status
            );
            Ok((phase == want).then_some(m))
        },
    )
    .await
}

async fn promote(api: &Api<Migration>, name: &str) -> anyhow::Result<()> {
    let patch = json!({ "metadata": { "annotations": { "ficus.dev/promote": "" } } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn flag_values(
    client: &Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    Ok(Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(name)
        .await?
        .data
        .unwrap_or_default())
}

/// Polls `probe` every second until it returns `Some`; an error of `probe` ends the wait.
async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) if e.downcast_ref::<kube::Error>().is_some() => last = e.to_string(),
            Err(e) if e.downcast_ref::<std::io::Error>().is_some() => last = e.to_string(),
            Err(e) => return Err(e),
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what} (last error: {last})"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn base64_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or_else(|| anyhow::anyhow!("not base64: {s}"))?;
        acc = (acc << 6) | u32::try_from(v)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff)?);
        }
    }
    Ok(out)
}

/// What a failed run leaves for whoever reads the test output.
fn diagnostics(node: &Node, ns: &str) {
    for args in [
        vec![
            "get",
            "pods,jobs,deployments,migrations",
            "-n",
            ns,
            "-o",
            "wide",
        ],
        vec!["get", "events", "-n", ns, "--sort-by=.lastTimestamp"],
        vec!["describe", "migrations", "-n", ns],
        vec![
            "logs",
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/name=ficus-operator",
            "--tail=40",
            "--prefix",
        ],
        vec![
            "logs",
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/name=chat-service",
            "--tail=20",
            "--prefix",
        ],
        // The Jobs' pods (backfill, validation, load): why one failed.
        vec![
            "logs",
            "-n",
            ns,
            "-l",
            "batch.kubernetes.io/job-name",
            "--tail=20",
            "--prefix",
        ],
    ] {
        if let Ok(out) = node.kubectl(&args) {
            eprintln!("{out}");
        }
    }
    eprintln!(
        "node logs: {} (NODE_IP {NODE_IP})",
        node.logs_dir().display()
    );
}
