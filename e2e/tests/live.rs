//! The live scenario suite: a chat service with history and live users, moved from PostgreSQL to
//! the CQL store by the shipped Migration (`examples/chat-postgres-to-scylla.yaml`, durations
//! scaled down as `ficus_e2e::live::Timing` documents), under load, with real faults (Toxiproxy
//! between the chat-service processes and the CQL store, SIGKILL of processes), ending at
//! Completed or rolled back with no acknowledged write lost. The scenarios themselves are
//! `ficus_e2e::live::scenarios` (the demo runs the same code).
//!
//! One stack at a time (they are heavy): the scenarios of this binary run one after another.
//! Run one by name: `cargo test -p ficus-e2e --test live -- clean --nocapture`.

use ficus_e2e::live::scenarios::{Outcome, Scenario, run};
use ficus_operator::crd::Phase;
use tokio::sync::Mutex;

/// One live stack at a time in this binary.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

async fn scenario(s: Scenario) -> Option<Outcome> {
    let _one = ONE_AT_A_TIME.lock().await;
    ficus_testkit::init();
    let outcome = match run(s).await {
        Ok(o) => o,
        Err(e) => {
            // A missing component skips locally (SKIP: line) and fails under CI.
            ficus_testkit::skip_or_panic(&e);
            return None;
        }
    };
    assert!(
        outcome.ended,
        "the Migration did not end: {:?}",
        outcome.record.phases()
    );
    assert_eq!(outcome.lost, 0, "acknowledged writes lost");
    Some(outcome)
}

/// A rollback happened, fast, and legacy then served without errors.
fn assert_rolled_back(o: &Outcome) {
    assert_eq!(
        o.last_phase(),
        Some(Phase::RolledBack),
        "{:?}",
        o.record.phases()
    );
    assert!(
        o.fault_at.is_some(),
        "the fault was never injected: the healthy run ended first, phases {:?}, rollback {:?} (a healthy run that fails a gate points at an overloaded machine or a bad threshold)",
        o.record.phases(),
        o.last_rollback
    );
    assert!(
        o.safe_at.is_some(),
        "the flags never returned to the safe state after the fault"
    );
    if let Some(errors) = o.errors_after_rollback {
        assert_eq!(
            errors, 0,
            "legacy alone served with errors after the rollback"
        );
    }
    if let Some(drained) = o.outbox_drained {
        assert!(drained, "the outbox did not drain once the store was back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clean() {
    let Some(o) = scenario(Scenario::Clean).await else {
        return;
    };
    assert_eq!(
        o.last_phase(),
        Some(Phase::Completed),
        "{:?}",
        o.record.phases()
    );
    for phase in [Phase::Shadow, Phase::Backfill, Phase::Split, Phase::CutOver] {
        assert!(
            o.record.phases().contains(&phase),
            "{phase} skipped: {:?}",
            o.record.phases()
        );
    }
    for (phase, drift) in o.record.max_drift_by_phase() {
        assert_eq!(drift, 0.0, "drift signal in {phase}");
    }
    assert_eq!(o.flow.server_errors(), 0, "{:?}", o.flow.errors_by_code());
    assert!(
        o.ledger.writes() > 100,
        "the load wrote: {}",
        o.ledger.writes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors() {
    if let Some(o) = scenario(Scenario::Errors).await {
        assert_rolled_back(&o);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latency() {
    if let Some(o) = scenario(Scenario::Latency).await {
        assert_rolled_back(&o);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_from_cutover() {
    if let Some(o) = scenario(Scenario::AbortFromCutover).await {
        assert_rolled_back(&o);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alert_from_cutover() {
    let Some(o) = scenario(Scenario::AlertFromCutover).await else {
        return;
    };
    assert_rolled_back(&o);
    let why = o.last_rollback.clone().unwrap_or_default();
    // Whichever evidence comes first: the p99 gate (the new cohort's writes wait for their
    // copies to legacy) or ChatDualWriteFailureRate pushed by Alertmanager. Never by hand.
    assert!(
        why.starts_with("GateFailed") || why.starts_with("AlertFiring"),
        "rolled back by the evidence: {why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chat_sigkill() {
    scenario(Scenario::ChatSigkill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift() {
    let Some(o) = scenario(Scenario::Drift).await else {
        return;
    };
    assert_rolled_back(&o);
    let why = o.last_rollback.clone().unwrap_or_default();
    assert!(
        why.contains("drift") || why.contains("ChatDataInconsistency"),
        "rolled back for the lost writes: {why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_sigkill() {
    let Some(o) = scenario(Scenario::OperatorSigkill).await else {
        return;
    };
    assert_eq!(
        o.last_phase(),
        Some(Phase::Completed),
        "{:?}",
        o.record.phases()
    );
    // The standby went on from where the killed leader was: every step once, in order.
    let entered: Vec<(Phase, i32)> = o
        .history
        .iter()
        .filter(|t| t.to != Phase::Paused && t.from != Phase::Paused)
        .map(|t| (t.to, t.traffic_percent))
        .collect();
    let splits: Vec<i32> = entered
        .iter()
        .filter(|(p, _)| *p == Phase::Split)
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(splits, [10, 25, 50, 100], "{entered:?}");
    for phase in [Phase::Backfill, Phase::CutOver, Phase::Completed] {
        assert_eq!(
            entered.iter().filter(|(p, _)| *p == phase).count(),
            1,
            "{phase} entered once: {entered:?}"
        );
    }
}

/// The short soak: two minutes of the flow held in Split at 50 %; nothing the service holds
/// grows from the first minute to the second beyond what warming up explains (the full one is
/// the `soak` binary, 10 minutes or more).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak() {
    use ficus_e2e::live::soak::{Growth, SoakConfig, run_soak};
    let _one = ONE_AT_A_TIME.lock().await;
    ficus_testkit::init();
    let mut config = SoakConfig::new(std::time::Duration::from_secs(120));
    config.sample_every = std::time::Duration::from_secs(10);
    let report = match run_soak(config).await {
        Ok(r) => r,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return;
        }
    };
    assert_eq!(
        report.held_at,
        Ok(50),
        "the Migration was not held in Split"
    );
    assert_eq!(report.lost, 0, "acknowledged writes lost");
    assert_eq!(report.server_errors, 0, "5xx answers during the soak");
    assert!(
        report.outbox_drained,
        "the outbox did not drain after the load"
    );
    assert!(
        report.samples.len() >= 10,
        "{} samples",
        report.samples.len()
    );
    for i in 0..report.instances() {
        let rss = Growth::of(&report.rss_mib(i)).expect("samples");
        assert!(
            rss.ratio() <= 1.5,
            "instance {i}: resident memory grew from {:.1} to {:.1} MiB between the halves",
            rss.first_half_max,
            rss.second_half_max
        );
        let fds = Growth::of(&report.fds(i)).expect("samples");
        assert!(
            fds.second_half_max <= fds.first_half_max + 16.0,
            "instance {i}: open descriptors grew from {} to {}",
            fds.first_half_max,
            fds.second_half_max
        );
    }
    let outbox = report.series(|s| s.outbox);
    let peak = outbox.iter().copied().fold(0.0, f64::max);
    assert!(
        peak <= 200.0,
        "the outbox reached {peak} entries with both stores healthy"
    );
}
