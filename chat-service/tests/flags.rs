//! The flag reader with real components: `Flags::parse`, a real file watched with inotify, and
//! a ConfigMap on a real kube-apiserver (ficus-testkit's control plane; skipped locally when its
//! binaries are missing, a failure under CI=true).
//!
//! Apply latencies are printed (`--nocapture` to see them), not asserted: a loaded CI machine
//! must not fail a correctness test. Waits use a 5 s timeout.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chat_service::flags::{DualWrite, FlagError, FlagSource, FlagWatcher, Flags, Side};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(5);
/// Far longer than an event takes to apply (tens of ms): time enough for a change that must be
/// ignored to have been seen and ignored.
const SETTLE: Duration = Duration::from_millis(800);

use common::flag_doc as flags;

fn entries(f: &Flags) -> BTreeMap<String, String> {
    f.to_entries()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

fn text(f: &Flags) -> String {
    format!("# flag document (test)\n\n{}", f.to_file_text())
}

/// Waits for flags with `generation`; returns how long it took since `since`.
async fn wait_generation(
    rx: &mut watch::Receiver<Flags>,
    generation: i64,
    since: Instant,
) -> Duration {
    let outcome = tokio::time::timeout(WAIT, rx.wait_for(|f| f.generation == generation))
        .await
        .map(|r| r.is_ok());
    match outcome {
        Ok(true) => since.elapsed(),
        Ok(false) => panic!("flag channel closed while waiting for generation {generation}"),
        Err(_) => panic!(
            "generation {generation} not applied within {WAIT:?}; in force: {:?}",
            *rx.borrow()
        ),
    }
}

/// Asserts that nothing was applied: the subscriber saw no change and the flags are `expected`.
async fn assert_kept(
    watcher: &FlagWatcher,
    rx: &watch::Receiver<Flags>,
    gauge: &Gauge,
    expected: Flags,
    what: &str,
) {
    tokio::time::sleep(SETTLE).await;
    assert!(
        !rx.has_changed().unwrap_or(true),
        "{what}: the flags changed to {:?}",
        *rx.borrow()
    );
    assert_eq!(watcher.current(), expected, "{what}");
    assert_eq!(gauge.get(), expected.generation, "{what}: gauge");
}

// ---------------------------------------------------------------------------------------------
// Flags::parse

// ---------------------------------------------------------------------------------------------
// Static source

#[tokio::test]
async fn static_source() {
    let want = flags(4, Side::New, DualWrite::Off, 0, 100);
    let gauge = Gauge::default();
    let watcher = FlagWatcher::start(FlagSource::Static(want), gauge.clone())
        .await
        .expect("static flags");
    assert_eq!(watcher.current(), want);
    assert_eq!(watcher.clone().current(), want);
    assert_eq!(gauge.get(), 4);
    let rx = watcher.subscribe();
    assert!(!rx.has_changed().expect("the channel stays open"));

    // Percents above 100 cannot be built; a negative generation can.
    let bad = Flags {
        generation: -1,
        ..want
    };
    let err = FlagWatcher::start(FlagSource::Static(bad), Gauge::default())
        .await
        .expect_err("generation -1");
    assert!(err.to_string().contains("generation"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// File source

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("chat-flags-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `content` to a temp file in the same directory, then renames it over `path`: the way
/// editors, `kubectl cp` and config tools replace files atomically.
fn replace_atomically(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename over the flag file");
}

#[tokio::test]
async fn file_source_follows_changes_and_keeps_the_last_good_flags() {
    ficus_testkit::init();
    let dir = TempDir::new("follow");
    let path = dir.path().join("flags");
    let g1 = flags(1, Side::Legacy, DualWrite::Sync, 0, 0);
    std::fs::write(&path, text(&g1)).expect("write flags");

    let gauge = Gauge::default();
    let watcher = FlagWatcher::start(FlagSource::File(path.clone()), gauge.clone())
        .await
        .expect("start");
    assert_eq!(watcher.current(), g1);
    assert_eq!(gauge.get(), 1);
    let mut rx = watcher.subscribe();

    // In-place rewrite with generation + 1.
    let g2 = flags(2, Side::Legacy, DualWrite::Sync, 10, 0);
    let t = Instant::now();
    std::fs::write(&path, text(&g2)).expect("rewrite");
    let latency = wait_generation(&mut rx, 2, t).await;
    println!("file source: in-place rewrite applied in {latency:?}");
    assert_eq!(watcher.current(), g2);
    assert_eq!(gauge.get(), 2);
    rx.mark_unchanged();

    // Invalid values: rejected, generation 2 stays in force.
    let invalid = text(&flags(3, Side::New, DualWrite::Sync, 10, 0))
        .replace("write_primary=new", "write_primary=sideways");
    std::fs::write(&path, invalid).expect("invalid rewrite");
    assert_kept(&watcher, &rx, &gauge, g2, "invalid write_primary").await;
    std::fs::write(
        &path,
        text(&g2).replace("read_split_percent=0", "read_split_percent=101"),
    )
    .expect("invalid rewrite");
    assert_kept(&watcher, &rx, &gauge, g2, "read_split_percent=101").await;
    std::fs::write(&path, "generation=3\nthis line is not key value\n").expect("syntax error");
    assert_kept(&watcher, &rx, &gauge, g2, "syntax error").await;
    std::fs::write(&path, text(&g2).replace("dual_write=sync\n", "")).expect("missing key");
    assert_kept(&watcher, &rx, &gauge, g2, "missing dual_write").await;

    // A lower generation: ignored.
    std::fs::write(&path, text(&flags(1, Side::New, DualWrite::Off, 0, 0)))
        .expect("older document");
    assert_kept(&watcher, &rx, &gauge, g2, "lower generation").await;

    // Atomic rename-replace with a higher generation: picked up (the watch is on the directory).
    let g5 = flags(5, Side::New, DualWrite::Async, 50, 25);
    let t = Instant::now();
    replace_atomically(&path, &text(&g5));
    let latency = wait_generation(&mut rx, 5, t).await;
    println!("file source: atomic rename-replace applied in {latency:?}");
    assert_eq!(watcher.current(), g5);
    assert_eq!(gauge.get(), 5);
    rx.mark_unchanged();

    // The file disappears: keep the last good flags.
    std::fs::remove_file(&path).expect("remove flag file");
    assert_kept(&watcher, &rx, &gauge, g5, "file removed").await;

    // ... and following goes on when it comes back.
    let g6 = flags(6, Side::New, DualWrite::Off, 0, 100);
    let t = Instant::now();
    replace_atomically(&path, &text(&g6));
    let latency = wait_generation(&mut rx, 6, t).await;
    println!("file source: re-created file applied in {latency:?}");
    assert_eq!(gauge.get(), 6);

    // Every clone sees the same flags.
    assert_eq!(watcher.clone().current(), g6);
}

/// kubelet's ConfigMap volume layout: `flags -> ..data/flags`, `..data -> ..<timestamp>`, and an
/// update swaps the `..data` symlink by renaming a new one over it. No event names `flags`.
#[tokio::test]
async fn file_source_follows_a_kubelet_style_symlink_swap() {
    ficus_testkit::init();
    let dir = TempDir::new("kubelet");
    let root = dir.path();
    let publish = |version: &str, f: &Flags| {
        let ts = root.join(version);
        std::fs::create_dir(&ts).expect("timestamp dir");
        std::fs::write(ts.join("flags"), text(f)).expect("write flags");
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(version, &tmp).expect("symlink ..data_tmp");
        std::fs::rename(&tmp, root.join("..data")).expect("swap ..data");
    };
    let g1 = flags(1, Side::Legacy, DualWrite::Async, 0, 0);
    publish("..2026_01_01_00_00_00.1", &g1);
    std::os::unix::fs::symlink("..data/flags", root.join("flags")).expect("symlink flags");

    let gauge = Gauge::default();
    let watcher = FlagWatcher::start(FlagSource::File(root.join("flags")), gauge.clone())
        .await
        .expect("start");
    assert_eq!(watcher.current(), g1);
    let mut rx = watcher.subscribe();

    let g2 = flags(2, Side::New, DualWrite::Async, 5, 5);
    let t = Instant::now();
    publish("..2026_01_01_00_00_00.2", &g2);
    let latency = wait_generation(&mut rx, 2, t).await;
    println!("file source: kubelet-style ..data symlink swap applied in {latency:?}");
    assert_eq!(watcher.current(), g2);
    assert_eq!(gauge.get(), 2);
}

#[tokio::test]
async fn file_source_missing_at_start_means_defaults_until_the_file_appears() {
    ficus_testkit::init();
    let dir = TempDir::new("missing");
    let path = dir.path().join("flags");
    let gauge = Gauge::default();
    gauge.set(-1);
    let watcher = FlagWatcher::start(FlagSource::File(path.clone()), gauge.clone())
        .await
        .expect("start without a file");
    assert_eq!(watcher.current(), Flags::default());
    assert_eq!(
        gauge.get(),
        0,
        "the gauge shows generation 0 before any document"
    );
    let mut rx = watcher.subscribe();

    let g1 = flags(1, Side::Legacy, DualWrite::Sync, 0, 0);
    let t = Instant::now();
    replace_atomically(&path, &text(&g1));
    let latency = wait_generation(&mut rx, 1, t).await;
    println!("file source: newly created file applied in {latency:?}");
    assert_eq!(gauge.get(), 1);
}

#[tokio::test]
async fn file_source_start_rejects_an_invalid_document() {
    ficus_testkit::init();
    let dir = TempDir::new("invalid");
    let path = dir.path().join("flags");
    std::fs::write(
        &path,
        text(&flags(1, Side::Legacy, DualWrite::Off, 0, 0))
            .replace("dual_write=off", "dual_write=maybe"),
    )
    .expect("write");
    let err = FlagWatcher::start(FlagSource::File(path.clone()), Gauge::default())
        .await
        .expect_err("invalid document");
    let msg = err.to_string();
    println!("{msg}");
    assert!(
        msg.contains("dual_write")
            && msg.contains("\"maybe\"")
            && msg.contains(&path.display().to_string()),
        "{msg}"
    );

    let err = FlagWatcher::start(
        FlagSource::File(dir.path().join("no-such-dir/flags")),
        Gauge::default(),
    )
    .await
    .expect_err("no directory");
    assert!(matches!(err, FlagError::Watch { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// ConfigMap source, against a real kube-apiserver

async fn setup(prefix: &str) -> Option<(kube::Client, String)> {
    ficus_testkit::init();
    let cp = match ficus_testkit::ControlPlane::shared() {
        Ok(cp) => cp,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return None;
        }
    };
    let client = cp.client().await.expect("client");
    let ns = ficus_testkit::unique_namespace(prefix);
    ficus_testkit::create_namespace(&client, &ns)
        .await
        .expect("namespace");
    Some((client, ns))
}

fn config_map(name: &str, data: BTreeMap<String, String>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

async fn patch_data(api: &Api<ConfigMap>, name: &str, data: BTreeMap<String, String>) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": data })),
    )
    .await
    .expect("patch ConfigMap");
}

#[tokio::test]
async fn configmap_source_follows_changes_and_keeps_the_last_good_flags() {
    let Some((client, ns)) = setup("flags-cm").await else {
        return;
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let name = "chat-flags";
    let g1 = flags(1, Side::Legacy, DualWrite::Sync, 0, 0);
    api.create(&PostParams::default(), &config_map(name, entries(&g1)))
        .await
        .expect("create ConfigMap");

    let gauge = Gauge::default();
    let source = FlagSource::ConfigMap {
        namespace: ns.clone(),
        name: name.into(),
    };
    let watcher = FlagWatcher::start_with_client(source, client.clone(), gauge.clone())
        .await
        .expect("start");
    assert_eq!(watcher.current(), g1);
    assert_eq!(gauge.get(), 1);
    let mut rx = watcher.subscribe();

    // generation + 1
    let g2 = flags(2, Side::Legacy, DualWrite::Sync, 10, 0);
    let t = Instant::now();
    patch_data(&api, name, entries(&g2)).await;
    let latency = wait_generation(&mut rx, 2, t).await;
    println!("ConfigMap source: patch applied in {latency:?} (including the PATCH round trip)");
    assert_eq!(watcher.current(), g2);
    assert_eq!(gauge.get(), 2);
    rx.mark_unchanged();

    // Invalid value: rejected, generation 2 stays.
    let mut bad = entries(&flags(3, Side::New, DualWrite::Sync, 10, 0));
    bad.insert("dual_write".into(), "sometimes".into());
    patch_data(&api, name, bad).await;
    assert_kept(&watcher, &rx, &gauge, g2, "invalid dual_write").await;

    // A lower generation: ignored.
    patch_data(
        &api,
        name,
        entries(&flags(1, Side::New, DualWrite::Off, 0, 0)),
    )
    .await;
    assert_kept(&watcher, &rx, &gauge, g2, "lower generation").await;

    // Another valid change after the rejections.
    let g4 = flags(4, Side::New, DualWrite::Async, 100, 50);
    let t = Instant::now();
    patch_data(&api, name, entries(&g4)).await;
    let latency = wait_generation(&mut rx, 4, t).await;
    println!("ConfigMap source: second patch applied in {latency:?}");
    assert_eq!(gauge.get(), 4);
    rx.mark_unchanged();

    // Deleted: the last good flags stay in force.
    api.delete(name, &DeleteParams::default())
        .await
        .expect("delete ConfigMap");
    assert_kept(&watcher, &rx, &gauge, g4, "ConfigMap deleted").await;

    // Re-created by the operator with a higher generation: followed again.
    let g5 = flags(5, Side::New, DualWrite::Off, 0, 100);
    let t = Instant::now();
    api.create(&PostParams::default(), &config_map(name, entries(&g5)))
        .await
        .expect("re-create ConfigMap");
    let latency = wait_generation(&mut rx, 5, t).await;
    println!("ConfigMap source: re-created ConfigMap applied in {latency:?}");
    assert_eq!(watcher.current(), g5);
    assert_eq!(gauge.get(), 5);
}

#[tokio::test]
async fn configmap_source_missing_at_start_means_defaults_and_invalid_at_start_fails() {
    let Some((client, ns)) = setup("flags-cm-missing").await else {
        return;
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

    let gauge = Gauge::default();
    let source = FlagSource::ConfigMap {
        namespace: ns.clone(),
        name: "not-yet".into(),
    };
    let watcher = FlagWatcher::start_with_client(source, client.clone(), gauge.clone())
        .await
        .expect("start without the ConfigMap");
    assert_eq!(watcher.current(), Flags::default());
    assert_eq!(gauge.get(), 0);
    let mut rx = watcher.subscribe();

    let g1 = flags(1, Side::Legacy, DualWrite::Async, 0, 0);
    let t = Instant::now();
    api.create(&PostParams::default(), &config_map("not-yet", entries(&g1)))
        .await
        .expect("create ConfigMap");
    let latency = wait_generation(&mut rx, 1, t).await;
    println!("ConfigMap source: created ConfigMap applied in {latency:?}");
    assert_eq!(gauge.get(), 1);

    // An unrelated ConfigMap in the namespace changes nothing (the watch selects one name).
    let other = flags(9, Side::New, DualWrite::Off, 0, 100);
    api.create(
        &PostParams::default(),
        &config_map("unrelated", entries(&other)),
    )
    .await
    .expect("create other");
    rx.mark_unchanged();
    assert_kept(&watcher, &rx, &gauge, g1, "unrelated ConfigMap").await;

    // Invalid at start: an error naming the key and value.
    let mut bad = entries(&g1);
    bad.insert("shadow_read_percent".into(), "200".into());
    api.create(&PostParams::default(), &config_map("bad", bad))
        .await
        .expect("create bad");
    let source = FlagSource::ConfigMap {
        namespace: ns.clone(),
        name: "bad".into(),
    };
    let err = FlagWatcher::start_with_client(source, client.clone(), Gauge::default())
        .await
        .expect_err("invalid at start");
    let msg = err.to_string();
    println!("{msg}");
    assert!(
        msg.contains("shadow_read_percent") && msg.contains("\"200\"") && msg.contains("bad"),
        "{msg}"
    );
}
