//! The live scenario suite: a chat service with history and live users, moved from PostgreSQL to
//! the CQL store by the shipped Migration (`examples/chat-postgres-to-scylla.yaml`, durations
//! scaled down as `ficus_e2e::live::Timing` documents), under load, with real faults (Toxiproxy
//! between the chat-service processes and the CQL store, SIGKILL of processes), ending at
//! Completed or rolled back with no acknowledged write lost.
//!
//! One stack at a time (they are heavy): the scenarios of this binary run one after another.
//! Run one by name: `cargo test -p ficus-e2e --test live -- clean --nocapture`.

use std::time::{Duration, Instant};

use chat_service::flow::{FlowReport, Ledger, verify};
use ficus_e2e::live::watch::{Frame, Record};
use ficus_e2e::live::{LiveOptions, LiveStack};
use ficus_operator::crd::Phase;
use ficus_testkit::skip_or_fail;
use ficus_testkit::toxiproxy::Toxic;
use tokio::sync::Mutex;

/// One live stack at a time in this binary.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const RATE: f64 = 40.0;
const USERS: u32 = 24;
/// Long enough for every phase with the scaled durations, and a slow machine.
const WHOLE_RUN: Duration = Duration::from_secs(420);

fn ended(f: &Frame) -> bool {
    matches!(f.phase, Some(Phase::Completed | Phase::RolledBack))
}

/// Prints what a scenario measured, in one block.
fn report(
    name: &str,
    record: &Record,
    flow: &FlowReport,
    ledger: &Ledger,
    lost: usize,
    fault: Option<Duration>,
    safe: Option<Duration>,
) {
    println!("--- live scenario {name} ---");
    println!("phases reached: {:?}", record.phases());
    println!("max drift per phase: {:?}", record.max_drift_by_phase());
    println!(
        "calls {} ok {} errors {} (5xx {}), by code {:?}, p50 {:.1} ms p99 {:.1} ms",
        flow.ok() + flow.errors(),
        flow.ok(),
        flow.errors(),
        flow.server_errors(),
        flow.errors_by_code(),
        flow.percentile_ms(50.0),
        flow.percentile_ms(99.0)
    );
    println!(
        "writes acknowledged {} (messages {}, rooms {}, reactions {}, read marks {}, leaves {}), lost {lost}",
        ledger.writes(),
        ledger.messages.len(),
        ledger.rooms.len(),
        ledger.reactions.len(),
        ledger.read.values().map(|r| r.len()).sum::<usize>(),
        ledger.left.len()
    );
    if let (Some(fault), Some(safe)) = (fault, safe) {
        println!(
            "fault at {:.1}s, flags safe at {:.1}s: {:.1}s from fault to safe flags",
            fault.as_secs_f64(),
            safe.as_secs_f64(),
            safe.saturating_sub(fault).as_secs_f64()
        );
    }
}

/// Every acknowledged write, checked through instance 0's API (what it serves from now).
async fn lost_writes(stack: &LiveStack, ledger: &Ledger) -> usize {
    let missing = verify(ledger, &stack.chat_client(0))
        .await
        .expect("the API answers the check");
    if !missing.is_empty() {
        println!(
            "missing: {} messages (first {:?}), {} memberships {:?}, {} read markers",
            missing.messages.len(),
            missing.messages.first(),
            missing.memberships.len(),
            missing.memberships.first(),
            missing.read_markers.len()
        );
    }
    missing.total()
}

/// Waits for the safe flags (legacy primary, nobody on new): when a rollback took effect.
async fn wait_safe_flags(stack: &LiveStack, since: Instant) -> Duration {
    loop {
        let flags = stack.flags().await;
        if flags.get("write_primary").map(String::as_str) == Some("legacy")
            && flags.get("read_split_percent").map(String::as_str) == Some("0")
        {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(180),
            "flags never returned to the safe state: {flags:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clean() {
    let _one = ONE_AT_A_TIME.lock().await;
    ficus_testkit::init();
    let mut stack = skip_or_fail!(LiveStack::start(LiveOptions::new("clean")).await);
    println!("history: {:?}", stack.seeded);
    let flow = stack.start_flow(USERS, RATE);
    let mut record = Record::default();
    stack
        .apply_migration()
        .await
        .expect("the shipped Migration is accepted");
    let done = stack
        .follow(Some(&flow), &mut record, WHOLE_RUN, ended)
        .await;
    let (ledger, flow_report) = flow.stop().await;
    let lost = lost_writes(&stack, &ledger).await;
    report("clean", &record, &flow_report, &ledger, lost, None, None);
    assert!(done, "the migration did not end within {WHOLE_RUN:?}");
    assert_eq!(
        record.phases().last(),
        Some(&Phase::Completed),
        "{:?}",
        record.phases()
    );
    for phase in [Phase::Shadow, Phase::Backfill, Phase::Split, Phase::CutOver] {
        assert!(
            record.phases().contains(&phase),
            "{phase} skipped: {:?}",
            record.phases()
        );
    }
    assert_eq!(lost, 0, "acknowledged writes missing from the new store");
    for (phase, drift) in record.max_drift_by_phase() {
        assert_eq!(drift, 0.0, "drift signal in {phase}");
    }
    assert_eq!(
        flow_report.server_errors(),
        0,
        "{:?}",
        flow_report.errors_by_code()
    );
    assert!(ledger.writes() > 100, "the load wrote: {}", ledger.writes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_new_store_goes_away_mid_split() {
    let _one = ONE_AT_A_TIME.lock().await;
    ficus_testkit::init();
    let mut stack = skip_or_fail!(LiveStack::start(LiveOptions::new("errors")).await);
    let flow = stack.start_flow(USERS, RATE);
    let mut record = Record::default();
    stack
        .apply_migration()
        .await
        .expect("the shipped Migration is accepted");
    let in_split = stack
        .follow(Some(&flow), &mut record, WHOLE_RUN, |f| {
            f.phase == Some(Phase::Split)
        })
        .await;
    assert!(in_split, "never reached Split: {:?}", record.phases());
    let fault_at = record.frames.last().map(|f| f.at);
    let fault = Instant::now();
    stack
        .cql_proxy
        .set_enabled(false)
        .expect("the CQL proxy goes down");
    let safe_after = wait_safe_flags(&stack, fault).await;
    stack
        .follow(Some(&flow), &mut record, WHOLE_RUN, ended)
        .await;
    // Legacy keeps serving: from now on no call may fail.
    let before = flow.report();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = flow.report();
    stack
        .cql_proxy
        .set_enabled(true)
        .expect("the CQL proxy comes back");
    // The outbox drains once the store is back.
    let drained = stack
        .prometheus
        .wait_for(
            "max(chat_retry_queue_size)",
            Duration::from_secs(120),
            |s| s.first().filter(|s| s.value == 0.0).map(|_| ()),
        )
        .await;
    let (ledger, flow_report) = flow.stop().await;
    let lost = lost_writes(&stack, &ledger).await;
    report(
        "errors",
        &record,
        &flow_report,
        &ledger,
        lost,
        fault_at,
        fault_at.map(|f| f + safe_after),
    );
    assert_eq!(
        record.phases().last(),
        Some(&Phase::RolledBack),
        "{:?}",
        record.phases()
    );
    assert_eq!(lost, 0, "acknowledged writes missing from legacy");
    assert_eq!(
        after.errors(),
        before.errors(),
        "legacy alone served with errors after the rollback"
    );
    assert!(drained.is_ok(), "the outbox did not drain: {drained:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latency_new_store_gets_slow() {
    let _one = ONE_AT_A_TIME.lock().await;
    ficus_testkit::init();
    let mut stack = skip_or_fail!(LiveStack::start(LiveOptions::new("latency")).await);
    let flow = stack.start_flow(USERS, RATE);
    let mut record = Record::default();
    stack
        .apply_migration()
        .await
        .expect("the shipped Migration is accepted");
    let in_split = stack
        .follow(Some(&flow), &mut record, WHOLE_RUN, |f| {
            f.phase == Some(Phase::Split)
        })
        .await;
    assert!(in_split, "never reached Split: {:?}", record.phases());
    let fault_at = record.frames.last().map(|f| f.at);
    let fault = Instant::now();
    stack
        .cql_proxy
        .add(
            "slow",
            &Toxic::Latency {
                latency_ms: 150,
                jitter_ms: 20,
            },
        )
        .expect("latency on the CQL proxy");
    let safe_after = wait_safe_flags(&stack, fault).await;
    stack
        .follow(Some(&flow), &mut record, WHOLE_RUN, ended)
        .await;
    stack.cql_proxy.remove("slow").expect("latency removed");
    let (ledger, flow_report) = flow.stop().await;
    let lost = lost_writes(&stack, &ledger).await;
    report(
        "latency",
        &record,
        &flow_report,
        &ledger,
        lost,
        fault_at,
        fault_at.map(|f| f + safe_after),
    );
    let last = stack
        .migration()
        .await
        .and_then(|m| m.status)
        .and_then(|s| s.last_rollback);
    assert_eq!(
        record.phases().last(),
        Some(&Phase::RolledBack),
        "{:?}",
        record.phases()
    );
    println!("rollback: {last:?}");
    assert_eq!(lost, 0, "acknowledged writes missing from legacy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_from_cutover_keeps_every_write() {
    let _one = ONE_AT_A_TIME.lock().await;
    ficus_testkit::init();
    let mut stack = skip_or_fail!(LiveStack::start(LiveOptions::new("cutover")).await);
    let flow = stack.start_flow(USERS, RATE);
    let mut record = Record::default();
    stack
        .apply_migration()
        .await
        .expect("the shipped Migration is accepted");
    let in_cutover = stack
        .follow(Some(&flow), &mut record, WHOLE_RUN, |f| {
            f.phase == Some(Phase::CutOver)
        })
        .await;
    assert!(in_cutover, "never reached CutOver: {:?}", record.phases());
    // Writes while the new store is primary.
    let acked_in_cutover = flow.progress().1;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let fault_at = record.frames.last().map(|f| f.at);
    let fault = Instant::now();
    stack.annotate("abort").await.expect("abort");
    let safe_after = wait_safe_flags(&stack, fault).await;
    stack
        .follow(Some(&flow), &mut record, WHOLE_RUN, ended)
        .await;
    let (ledger, flow_report) = flow.stop().await;
    println!(
        "writes acknowledged before CutOver {acked_in_cutover}, in all {}",
        ledger.writes()
    );
    let lost = lost_writes(&stack, &ledger).await;
    report(
        "abort-from-cutover",
        &record,
        &flow_report,
        &ledger,
        lost,
        fault_at,
        fault_at.map(|f| f + safe_after),
    );
    assert_eq!(
        record.phases().last(),
        Some(&Phase::RolledBack),
        "{:?}",
        record.phases()
    );
    assert!(
        ledger.writes() > acked_in_cutover,
        "writes were made while new was primary"
    );
    assert_eq!(
        lost, 0,
        "writes acknowledged while new was primary are missing from legacy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chat_service_sigkill_under_load_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    ficus_testkit::init();
    let mut stack = skip_or_fail!(LiveStack::start(LiveOptions::new("sigkill")).await);
    let flow = stack.start_flow(USERS, RATE);
    let mut record = Record::default();
    stack
        .apply_migration()
        .await
        .expect("the shipped Migration is accepted");
    for phase in [Phase::Split, Phase::CutOver] {
        let reached = stack
            .follow(Some(&flow), &mut record, WHOLE_RUN, |f| {
                f.phase == Some(phase)
            })
            .await;
        assert!(reached, "never reached {phase}: {:?}", record.phases());
        stack.chats[1].server.stop();
        println!("chat-service instance 1 SIGKILLed in {phase}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        stack.chats[1]
            .server
            .restart()
            .expect("instance 1 restarts");
    }
    stack
        .follow(Some(&flow), &mut record, WHOLE_RUN, ended)
        .await;
    let (ledger, flow_report) = flow.stop().await;
    let lost = lost_writes(&stack, &ledger).await;
    report(
        "chat-service-sigkill",
        &record,
        &flow_report,
        &ledger,
        lost,
        None,
        None,
    );
    assert_eq!(lost, 0, "acknowledged writes lost across SIGKILL");
}
