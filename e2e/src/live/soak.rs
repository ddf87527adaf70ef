//! The soak: the user flow at a steady rate for a long time through the router while the
//! shipped Migration holds in Split, sampling what could grow without bound — each
//! chat-service's resident memory and open file descriptors, its database connections, the
//! outbox depth — and the latency the clients see, interval by interval. `soak` (a binary, run
//! on demand for 10 minutes or more) prints the table; the live test suite runs a short one and
//! checks the same figures.

use std::time::{Duration, Instant};

use chat_service::flow::Flow;
use ficus_operator::crd::Phase;
use ficus_testkit::HarnessError;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::scenarios::{RATE, USERS, WHOLE_RUN};
use super::watch::{Frame, Record};
use super::{HistorySpec, LiveOptions, LiveStack, Timing};

/// How long and where.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    pub duration: Duration,
    pub sample_every: Duration,
    /// Calls per second over all users.
    pub rate: f64,
    /// The Split step's traffic the Migration is held at (the first step with at least this).
    pub hold_percent: i32,
    pub timing: Timing,
    pub history: HistorySpec,
}

impl SoakConfig {
    pub fn new(duration: Duration) -> SoakConfig {
        SoakConfig {
            duration,
            sample_every: Duration::from_secs(15),
            rate: RATE,
            hold_percent: 50,
            timing: Timing::quick(),
            history: HistorySpec::quick(),
        }
    }
}

/// One process's footprint.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Footprint {
    pub rss_mib: f64,
    pub fds: u64,
}

/// One interval of the soak.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Since the soak started.
    pub at: Duration,
    /// Per chat-service instance.
    pub processes: Vec<Footprint>,
    /// Pool connections of every instance to both stores (`chat_database_connections`).
    pub db_connections: Option<f64>,
    /// Entries in the outboxes (`chat_retry_queue_size`, the largest instance's view).
    pub outbox: Option<f64>,
    /// Calls and errors in the interval, and the latency of its successful calls.
    pub calls: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// What the soak saw.
#[derive(Debug)]
pub struct SoakReport {
    pub samples: Vec<Sample>,
    pub calls: u64,
    pub server_errors: u64,
    pub acked_writes: usize,
    pub lost: usize,
    /// The traffic percent the Migration was held at, or why it never got there.
    pub held_at: Result<i32, String>,
    /// Whether the outboxes were empty within a minute of the load stopping.
    pub outbox_drained: bool,
}

/// Growth of a series between the first and the second half of the soak: the largest value of
/// the second half over the largest of the first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Growth {
    pub first_half_max: f64,
    pub second_half_max: f64,
}

impl Growth {
    pub fn of(values: &[f64]) -> Option<Growth> {
        if values.len() < 2 {
            return None;
        }
        let (a, b) = values.split_at(values.len() / 2);
        let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
        Some(Growth {
            first_half_max: max(a),
            second_half_max: max(b),
        })
    }

    pub fn ratio(&self) -> f64 {
        if self.first_half_max <= 0.0 {
            return 1.0;
        }
        self.second_half_max / self.first_half_max
    }
}

impl SoakReport {
    /// Each instance's resident memory over the samples.
    pub fn rss_mib(&self, instance: usize) -> Vec<f64> {
        self.samples
            .iter()
            .filter_map(|s| s.processes.get(instance).map(|p| p.rss_mib))
            .collect()
    }

    pub fn fds(&self, instance: usize) -> Vec<f64> {
        self.samples
            .iter()
            .filter_map(|s| s.processes.get(instance).map(|p| p.fds as f64))
            .collect()
    }

    pub fn series(&self, f: impl Fn(&Sample) -> Option<f64>) -> Vec<f64> {
        self.samples.iter().filter_map(f).collect()
    }

    pub fn instances(&self) -> usize {
        self.samples.first().map_or(0, |s| s.processes.len())
    }

    pub fn print(&self) {
        println!("--- soak ---");
        match &self.held_at {
            Ok(p) => println!("held in Split at {p} %"),
            Err(why) => println!("not held in Split: {why}"),
        }
        let n = self.instances();
        let mut head = String::from("    at");
        for i in 0..n {
            head.push_str(&format!("  rss{i} MiB  fds{i}"));
        }
        head.push_str("  db conns  outbox  calls/s  errors  p50 ms  p99 ms");
        println!("{head}");
        let mut last = Duration::ZERO;
        for s in &self.samples {
            let mut line = format!("{:>5.0}s", s.at.as_secs_f64());
            for p in &s.processes {
                line.push_str(&format!("  {:>9.1}  {:>4}", p.rss_mib, p.fds));
            }
            let secs = s.at.saturating_sub(last).as_secs_f64().max(0.001);
            last = s.at;
            line.push_str(&format!(
                "  {:>8}  {:>6}  {:>7.1}  {:>6}  {:>6.1}  {:>6.1}",
                s.db_connections.map_or("-".into(), |v| format!("{v:.0}")),
                s.outbox.map_or("-".into(), |v| format!("{v:.0}")),
                s.calls as f64 / secs,
                s.errors,
                s.p50_ms,
                s.p99_ms
            ));
            println!("{line}");
        }
        for i in 0..n {
            if let (Some(rss), Some(fds)) = (Growth::of(&self.rss_mib(i)), Growth::of(&self.fds(i)))
            {
                println!(
                    "instance {i}: peak RSS {:.1} MiB in the first half, {:.1} MiB in the second ({:.2}x); peak fds {:.0} then {:.0}",
                    rss.first_half_max,
                    rss.second_half_max,
                    rss.ratio(),
                    fds.first_half_max,
                    fds.second_half_max
                );
            }
        }
        let outbox = self.series(|s| s.outbox);
        println!(
            "outbox: peak {:.0}, last {:.0}, drained after the load: {}",
            outbox.iter().copied().fold(0.0, f64::max),
            outbox.last().copied().unwrap_or(0.0),
            self.outbox_drained
        );
        println!(
            "calls {}, 5xx {}, writes acknowledged {}, lost {}",
            self.calls, self.server_errors, self.acked_writes, self.lost
        );
    }
}

/// Resident memory and open descriptors of `pid`, from `/proc`.
fn footprint(pid: u32) -> Footprint {
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    Footprint {
        rss_mib: rss_kib / 1024.0,
        fds,
    }
}

/// Holds the Migration where it is (`spec.paused`): the flags stay as they are.
async fn pause(stack: &LiveStack) -> Result<(), HarnessError> {
    stack
        .migrations()
        .patch(
            &stack.migration_name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "paused": true } })),
        )
        .await
        .map(drop)
        .map_err(|e| HarnessError::setup("pausing the Migration", e))
}

/// Runs the soak on a fresh stack.
pub async fn run_soak(config: SoakConfig) -> Result<SoakReport, HarnessError> {
    let mut options = LiveOptions::new("soak");
    options.timing = config.timing.clone();
    options.history = config.history;
    let mut stack = LiveStack::start(options).await?;
    let flow = stack.start_flow(USERS, config.rate);
    let mut record = Record::default();
    stack.apply_migration().await?;
    let hold = config.hold_percent;
    let held = |f: &Frame| {
        (f.phase == Some(Phase::Split) && f.traffic >= hold)
            || matches!(f.phase, Some(Phase::Completed | Phase::RolledBack))
    };
    stack
        .follow(Some(&flow), &mut record, WHOLE_RUN, held)
        .await;
    let (phase, traffic, rollback) = record
        .frames
        .last()
        .map(|f| (f.phase, f.traffic, f.rollback.clone()))
        .unwrap_or((None, 0, None));
    let held_at = if phase == Some(Phase::Split) {
        pause(&stack).await?;
        println!(
            ">>> held in Split at {} %: soaking for {:.0} s",
            traffic,
            config.duration.as_secs_f64()
        );
        Ok(traffic)
    } else {
        Err(format!(
            "the Migration ended in {:?} ({})",
            phase,
            rollback.as_deref().unwrap_or("no rollback")
        ))
    };
    let samples = if held_at.is_ok() {
        sample(&stack, &flow, &config).await
    } else {
        Vec::new()
    };
    let (ledger, report) = flow.stop().await;
    let outbox_drained = stack
        .prometheus
        .wait_for("max(chat_retry_queue_size)", Duration::from_secs(60), |s| {
            s.first().filter(|s| s.value == 0.0).map(|_| ())
        })
        .await
        .is_ok();
    let lost = super::scenarios::lost_writes(&stack, &ledger).await?;
    let soak = SoakReport {
        samples,
        calls: report.ok() + report.errors(),
        server_errors: report.server_errors(),
        acked_writes: ledger.writes(),
        lost,
        held_at,
        outbox_drained,
    };
    soak.print();
    Ok(soak)
}

/// Samples every `sample_every` for `duration`.
async fn sample(stack: &LiveStack, flow: &Flow, config: &SoakConfig) -> Vec<Sample> {
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut seen = flow.report();
    while started.elapsed() < config.duration {
        tokio::time::sleep(config.sample_every).await;
        let now = flow.report();
        let mut latencies = now
            .latencies_ms
            .get(seen.latencies_ms.len()..)
            .unwrap_or_default()
            .to_vec();
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if latencies.is_empty() {
                return 0.0;
            }
            let i = ((p / 100.0) * (latencies.len() - 1) as f64).round() as usize;
            latencies[i.min(latencies.len() - 1)]
        };
        let s = Sample {
            at: started.elapsed(),
            processes: stack
                .chats
                .iter()
                .map(|c| footprint(c.server.pid()))
                .collect(),
            db_connections: stack.value("sum(chat_database_connections)").await,
            outbox: stack.value("max(chat_retry_queue_size)").await,
            calls: (now.ok() + now.errors()).saturating_sub(seen.ok() + seen.errors()),
            errors: now.errors().saturating_sub(seen.errors()),
            p50_ms: pct(50.0),
            p99_ms: pct(99.0),
        };
        println!(
            "[soak {:>5.0}s] rss {:?} MiB, fds {:?}, outbox {:?}, {} calls, {} errors, p99 {:.1} ms",
            s.at.as_secs_f64(),
            s.processes
                .iter()
                .map(|p| (p.rss_mib * 10.0).round() / 10.0)
                .collect::<Vec<_>>(),
            s.processes.iter().map(|p| p.fds).collect::<Vec<_>>(),
            s.outbox,
            s.calls,
            s.errors,
            s.p99_ms
        );
        samples.push(s);
        seen = now;
    }
    samples
}
