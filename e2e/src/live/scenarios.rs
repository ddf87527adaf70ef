//! The live scenarios, shared by the tests (`e2e/tests/live.rs`, which assert on the
//! [`Outcome`]), the demo (`ficus-live`) and `bench-live`. Each starts its own stack, runs the
//! shipped Migration under the user flow, injects its fault, and reports what happened.

use std::time::{Duration, Instant};

use chat_service::flow::{Flow, FlowReport, Ledger, verify};
use ficus_operator::crd::Phase;
use ficus_testkit::HarnessError;
use ficus_testkit::toxiproxy::Toxic;

use super::watch::{Frame, Record};
use super::{HistorySpec, LiveOptions, LiveStack, Timing};

/// The flow every scenario runs: calls per second over all users.
pub const RATE: f64 = 40.0;
pub const USERS: u32 = 24;
/// Long enough for every phase with the scaled durations on a slow machine.
pub const WHOLE_RUN: Duration = Duration::from_secs(420);

/// The scenarios by name (`cargo test -p ficus-e2e --test live -- <name>`, `ficus-live <name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// No fault: Completed, nothing lost, drift 0 in every phase.
    Clean,
    /// The new store goes away mid-Split (Toxiproxy takes the proxy down).
    Errors,
    /// The new store gets slow (150 ms on every CQL chunk).
    Latency,
    /// `ficus.dev/abort` in CutOver, after writes made with the new store primary.
    AbortFromCutover,
    /// Legacy PostgreSQL goes away in CutOver (Toxiproxy takes its proxy down): the reverse
    /// dual writes fail or time out, the p99 gate fails or `ChatDualWriteFailureRate` fires
    /// (pushed by Alertmanager), whichever first, and the operator rolls back; legacy comes back
    /// once the flags are safe, and the writes made meanwhile drain into it.
    AlertFromCutover,
    /// chat-service instance 1 SIGKILLed in Split and again in CutOver.
    ChatSigkill,
    /// The new store silently loses every message written from Split step 1 on (a test-only
    /// fault: the harness deletes them from the CQL table; no proxy can drop a write and
    /// acknowledge it).
    Drift,
    /// Two operators; the leader SIGKILLed in Backfill, in Split and in CutOver.
    OperatorSigkill,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::Clean,
        Scenario::Errors,
        Scenario::Latency,
        Scenario::AbortFromCutover,
        Scenario::AlertFromCutover,
        Scenario::ChatSigkill,
        Scenario::Drift,
        Scenario::OperatorSigkill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Clean => "clean",
            Scenario::Errors => "errors",
            Scenario::Latency => "latency",
            Scenario::AbortFromCutover => "abort-from-cutover",
            Scenario::AlertFromCutover => "alert-from-cutover",
            Scenario::ChatSigkill => "chat-sigkill",
            Scenario::Drift => "drift",
            Scenario::OperatorSigkill => "operator-sigkill",
        }
    }

    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What a scenario saw.
#[derive(Debug)]
pub struct Outcome {
    pub scenario: Scenario,
    pub record: Record,
    pub flow: FlowReport,
    pub ledger: Ledger,
    /// Acknowledged writes the API no longer shows.
    pub lost: usize,
    /// Whether the Migration ended (Completed or RolledBack) in time.
    pub ended: bool,
    /// Seconds into the run when the fault was injected, and when the flags were safe again.
    pub fault_at: Option<Duration>,
    pub safe_at: Option<Duration>,
    /// Errors the flow saw from the fault to the safe flags (the clients' view of the rollback).
    pub errors_until_safe: Option<u64>,
    /// Errors of the flow after the rollback (legacy alone serving).
    pub errors_after_rollback: Option<u64>,
    /// Whether the outbox drained to 0 after the fault was removed.
    pub outbox_drained: Option<bool>,
    pub last_rollback: Option<String>,
    /// The Migration's own record of its transitions (`status.history`, the latest 20).
    pub history: Vec<ficus_operator::crd::Transition>,
}

impl Outcome {
    pub fn last_phase(&self) -> Option<Phase> {
        self.record.phases().last().copied()
    }

    /// The figures, one block.
    pub fn print(&self) {
        let flow = &self.flow;
        let ledger = &self.ledger;
        println!("--- live scenario {} ---", self.scenario.name());
        println!("phases reached: {:?}", self.record.phases());
        println!(
            "max drift per phase: {:?}",
            self.record.max_drift_by_phase()
        );
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
            "writes acknowledged {} (messages {}, rooms {}, reactions {}, read marks {}, leaves {}, pins {}, device tokens {}), lost {}",
            ledger.writes(),
            ledger.messages.len(),
            ledger.rooms.len(),
            ledger.reactions.len(),
            ledger.read.values().map(|r| r.len()).sum::<usize>(),
            ledger.leaves(),
            ledger.pins.len(),
            ledger.devices.len(),
            self.lost
        );
        if let (Some(fault), Some(safe)) = (self.fault_at, self.safe_at) {
            println!(
                "fault at {:.1}s, flags safe at {:.1}s: {:.1}s from fault to safe flags",
                fault.as_secs_f64(),
                safe.as_secs_f64(),
                safe.saturating_sub(fault).as_secs_f64()
            );
        }
        if let Some(errors) = self.errors_until_safe {
            println!("client errors from the fault to safe flags: {errors}");
        }
        if let Some(r) = &self.last_rollback {
            println!("rollback: {r}");
        }
    }
}

fn ended(f: &Frame) -> bool {
    matches!(f.phase, Some(Phase::Completed | Phase::RolledBack))
}

/// Every acknowledged write, checked through instance 0's API (what it serves from now).
pub(crate) async fn lost_writes(stack: &LiveStack, ledger: &Ledger) -> Result<usize, HarnessError> {
    let missing = verify(ledger, &stack.chat_client(0))
        .await
        .map_err(|e| HarnessError::setup("checking the acknowledged writes", e))?;
    if !missing.is_empty() {
        println!(
            "missing: {} messages (first {:?}), {} memberships {:?}, {} read markers, {} pins {:?}",
            missing.messages.len(),
            missing.messages.first(),
            missing.memberships.len(),
            missing.memberships.first(),
            missing.read_markers.len(),
            missing.pins.len(),
            missing.pins.first()
        );
        if !missing.devices.is_empty() {
            println!(
                "missing: {} device tokens, e.g. {:?}",
                missing.devices.len(),
                missing.devices.first()
            );
        }
    }
    Ok(missing.total())
}

/// The fault of [`Scenario::Drift`]: until aborted, deletes from the CQL store every message
/// written since `since` (found in legacy PostgreSQL), twice a second. Best effort: an error
/// is printed and the next round tries again.
async fn lose_new_writes(
    legacy_url: String,
    cql: std::net::SocketAddr,
    keyspace: String,
    since: chrono::DateTime<chrono::Utc>,
) {
    let pg = match sqlx::PgPool::connect(&legacy_url).await {
        Ok(pg) => pg,
        Err(e) => return println!("drift fault: PostgreSQL: {e}"),
    };
    let session = match scylla::client::session_builder::SessionBuilder::new()
        .known_node_addr(cql)
        .build()
        .await
    {
        Ok(s) => s,
        Err(e) => return println!("drift fault: CQL: {e}"),
    };
    let delete =
        format!("DELETE FROM {keyspace}.messages_by_room WHERE room_id = ? AND message_id = ?");
    let mut gone = std::collections::HashSet::new();
    loop {
        let rows: Vec<(uuid::Uuid, uuid::Uuid)> =
            sqlx::query_as("select room_id, id from room_message where created_at >= $1")
                .bind(since)
                .fetch_all(&pg)
                .await
                .unwrap_or_default();
        for (room, id) in rows {
            if gone.contains(&id) {
                continue;
            }
            let values = (room, scylla::value::CqlTimeuuid::from(id));
            match session.query_unpaged(delete.as_str(), values).await {
                Ok(_) => {
                    gone.insert(id);
                }
                Err(e) => println!("drift fault: delete: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether every outbox drains to 0 within two minutes (`chat_retry_queue_size`).
async fn outbox_drains(stack: &LiveStack) -> bool {
    stack
        .prometheus
        .wait_for(
            "max(chat_retry_queue_size)",
            Duration::from_secs(120),
            |s| s.first().filter(|s| s.value == 0.0).map(|_| ()),
        )
        .await
        .is_ok()
}

/// The flow's errors during the next `window`.
async fn errors_within(flow: &Flow, window: Duration) -> u64 {
    let before = flow.report().errors();
    tokio::time::sleep(window).await;
    flow.report().errors() - before
}

/// Started just before a fault is injected; [`RollbackClock::until_safe`] then waits for the
/// safe flags (legacy primary, nobody on new).
struct RollbackClock {
    /// When the fault was injected, in the run's time (`Frame::at`).
    fault_at: Option<Duration>,
    started: Instant,
    errors_before: u64,
}

/// What the clients saw between a fault and the safe flags.
#[derive(Default)]
struct Rollback {
    fault_at: Option<Duration>,
    safe_at: Option<Duration>,
    errors: Option<u64>,
}

impl RollbackClock {
    fn start(flow: &Flow, fault_at: Option<Duration>) -> RollbackClock {
        RollbackClock {
            fault_at,
            started: Instant::now(),
            errors_before: flow.report().errors(),
        }
    }

    async fn until_safe(self, stack: &LiveStack, flow: &Flow) -> Rollback {
        let timeout = Duration::from_secs(180);
        while self.started.elapsed() < timeout {
            let flags = stack.flags().await;
            if flags.get("write_primary").map(String::as_str) == Some("legacy")
                && flags.get("read_split_percent").map(String::as_str) == Some("0")
            {
                let took = self.started.elapsed();
                return Rollback {
                    fault_at: self.fault_at,
                    safe_at: self.fault_at.map(|at| at + took),
                    errors: Some(flow.report().errors() - self.errors_before),
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Rollback {
            fault_at: self.fault_at,
            ..Rollback::default()
        }
    }
}

/// Runs `scenario` on a fresh stack.
pub async fn run(scenario: Scenario) -> Result<Outcome, HarnessError> {
    run_with(scenario, Timing::default(), HistorySpec::from_env()).await
}

/// Runs `scenario` on a fresh stack at `timing`'s pace with `history`.
pub async fn run_with(
    scenario: Scenario,
    timing: Timing,
    history: HistorySpec,
) -> Result<Outcome, HarnessError> {
    let mut options = LiveOptions::new(scenario.name());
    options.timing = timing;
    options.history = history;
    if scenario == Scenario::OperatorSigkill {
        options.operators = 2;
    }
    let mut stack = LiveStack::start(options).await?;
    println!(
        "history: {} rooms, {} messages, {} reactions, {} read markers; {} chat-service instances",
        stack.seeded.rooms,
        stack.seeded.messages,
        stack.seeded.reactions,
        stack.seeded.read_markers,
        stack.chats.len()
    );
    let flow = stack.start_flow(USERS, RATE);
    let mut record = Record::default();
    stack.apply_migration().await?;
    let mut rollback = Rollback::default();
    let mut errors_after = None;
    let mut drained = None;
    let phase_reached = |phase: Phase| move |f: &Frame| f.phase == Some(phase) || ended(f);
    match scenario {
        Scenario::Clean => {}
        Scenario::Errors | Scenario::Latency => {
            stack
                .follow(
                    Some(&flow),
                    &mut record,
                    WHOLE_RUN,
                    phase_reached(Phase::Split),
                )
                .await;
            if record.phases().last() == Some(&Phase::Split) {
                let clock = RollbackClock::start(&flow, record.frames.last().map(|f| f.at));
                if scenario == Scenario::Errors {
                    stack.cql_proxy.set_enabled(false)?;
                    println!(">>> fault: the CQL store goes away (proxy down)");
                } else {
                    stack.cql_proxy.add(
                        "slow",
                        &Toxic::Latency {
                            latency_ms: 150,
                            jitter_ms: 20,
                        },
                    )?;
                    println!(">>> fault: the CQL store gets slow (+150 ms per chunk)");
                }
                rollback = clock.until_safe(&stack, &flow).await;
                stack
                    .follow(Some(&flow), &mut record, WHOLE_RUN, ended)
                    .await;
                errors_after = Some(errors_within(&flow, Duration::from_secs(5)).await);
                if scenario == Scenario::Errors {
                    stack.cql_proxy.set_enabled(true)?;
                } else {
                    stack.cql_proxy.remove("slow")?;
                }
                drained = Some(outbox_drains(&stack).await);
            }
        }
        Scenario::AbortFromCutover | Scenario::AlertFromCutover => {
            stack
                .follow(
                    Some(&flow),
                    &mut record,
                    WHOLE_RUN,
                    phase_reached(Phase::CutOver),
                )
                .await;
            if record.phases().last() == Some(&Phase::CutOver) {
                // Writes while the new store is primary (and legacy still gets their copies).
                tokio::time::sleep(Duration::from_secs(4)).await;
                let clock = RollbackClock::start(
                    &flow,
                    record.frames.last().map(|f| f.at + Duration::from_secs(4)),
                );
                if scenario == Scenario::AbortFromCutover {
                    stack.annotate("abort").await?;
                    println!(">>> abort in CutOver");
                } else {
                    stack.pg_proxy.set_enabled(false)?;
                    println!(">>> fault in CutOver: legacy PostgreSQL goes away (proxy down)");
                }
                rollback = clock.until_safe(&stack, &flow).await;
                if scenario == Scenario::AlertFromCutover {
                    // Legacy comes back: the rolled-back service needs it, and the copies of
                    // the writes made while the new store was primary drain into it.
                    stack.pg_proxy.set_enabled(true)?;
                    println!(">>> legacy PostgreSQL back");
                    stack
                        .follow(Some(&flow), &mut record, WHOLE_RUN, ended)
                        .await;
                    drained = Some(outbox_drains(&stack).await);
                    errors_after = Some(errors_within(&flow, Duration::from_secs(5)).await);
                }
            }
        }
        Scenario::Drift => {
            stack
                .follow(
                    Some(&flow),
                    &mut record,
                    WHOLE_RUN,
                    phase_reached(Phase::Split),
                )
                .await;
            if record.phases().last() == Some(&Phase::Split) {
                let clock = RollbackClock::start(&flow, record.frames.last().map(|f| f.at));
                let loss = tokio::spawn(lose_new_writes(
                    stack.legacy_url.clone(),
                    stack.cassandra.addr(),
                    stack.keyspace.clone(),
                    chrono::Utc::now(),
                ));
                println!(">>> fault: the new store silently loses every new message");
                rollback = clock.until_safe(&stack, &flow).await;
                loss.abort();
            }
        }
        Scenario::OperatorSigkill => {
            for phase in [Phase::Backfill, Phase::Split, Phase::CutOver] {
                stack
                    .follow(Some(&flow), &mut record, WHOLE_RUN, phase_reached(phase))
                    .await;
                if record.phases().last() != Some(&phase) {
                    break;
                }
                let Some(leader) = stack.leader().await else {
                    println!(">>> no operator holds the lease in {phase}");
                    break;
                };
                stack.operators[leader].server.stop();
                println!(
                    ">>> the leading operator ({}) SIGKILLed in {phase}",
                    stack.operators[leader].identity
                );
                // The standby takes the lease once it expires; the killed one comes back as
                // the new standby (restarted sooner, under its own name, it would simply
                // resume its own lease).
                let killed = Instant::now();
                let mut took_over = None;
                while took_over.is_none() && killed.elapsed() < Duration::from_secs(30) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    took_over = stack.leader().await.filter(|l| *l != leader);
                }
                match took_over {
                    Some(l) => println!(
                        ">>> {} took over after {:.1}s",
                        stack.operators[l].identity,
                        killed.elapsed().as_secs_f64()
                    ),
                    None => println!(">>> no standby took the lease within 30 s"),
                }
                stack.operators[leader].server.restart()?;
            }
        }
        Scenario::ChatSigkill => {
            for phase in [Phase::Split, Phase::CutOver] {
                stack
                    .follow(Some(&flow), &mut record, WHOLE_RUN, phase_reached(phase))
                    .await;
                if record.phases().last() != Some(&phase) {
                    break;
                }
                stack.chats[1].server.stop();
                println!(">>> chat-service instance 1 SIGKILLed in {phase}");
                tokio::time::sleep(Duration::from_secs(2)).await;
                stack.chats[1].server.restart()?;
            }
        }
    }
    let done = stack
        .follow(Some(&flow), &mut record, WHOLE_RUN, ended)
        .await;
    let (ledger, flow_report) = flow.stop().await;
    let lost = lost_writes(&stack, &ledger).await?;
    let status = stack.migration().await.and_then(|m| m.status);
    let last_rollback = status
        .as_ref()
        .and_then(|s| s.last_rollback.as_ref())
        .map(|r| format!("{}: {}", r.reason, r.message));
    let history = status.map(|s| s.history).unwrap_or_default();
    let outcome = Outcome {
        scenario,
        record,
        flow: flow_report,
        ledger,
        lost,
        ended: done,
        fault_at: rollback.fault_at,
        safe_at: rollback.safe_at,
        errors_until_safe: rollback.errors,
        errors_after_rollback: errors_after,
        outbox_drained: drained,
        last_rollback,
        history,
    };
    outcome.print();
    Ok(outcome)
}
