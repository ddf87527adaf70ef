//! Following a live run: one line per change of phase, step, traffic, flags or rollback, with
//! the evidence the gates see (drift, error rate and p99 per cohort), backfill progress and the
//! load's acknowledged writes — the demo's terminal view and the scenarios' record.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_service::flow::Flow;
use ficus_operator::crd::{Migration, Phase};

use super::LiveStack;

/// One sample of the run.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub at: Duration,
    pub phase: Option<Phase>,
    pub step: Option<i32>,
    pub traffic: i32,
    /// The shipped drift gate's value (None: no data).
    pub drift: Option<f64>,
    pub error_rate: BTreeMap<&'static str, f64>,
    pub p99_ms: BTreeMap<&'static str, f64>,
    pub acked_writes: usize,
    pub calls: u64,
    pub rollback: Option<String>,
    /// While Paused: why (the gates without evidence, and their messages).
    pub paused: Option<String>,
}

/// Everything a run saw, frame by frame.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub frames: Vec<Frame>,
}

impl Record {
    /// The phases entered, in order, without repeats.
    pub fn phases(&self) -> Vec<Phase> {
        let mut out: Vec<Phase> = Vec::new();
        for p in self.frames.iter().filter_map(|f| f.phase) {
            if out.last() != Some(&p) {
                out.push(p);
            }
        }
        out
    }

    /// The largest drift seen in each phase (phases with no drift data are absent).
    pub fn max_drift_by_phase(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for f in &self.frames {
            if let (Some(p), Some(d)) = (f.phase, f.drift) {
                let e = out.entry(p.to_string()).or_insert(0.0f64);
                *e = e.max(d);
            }
        }
        out
    }

    /// When the run first reached `phase`.
    pub fn reached(&self, phase: Phase) -> Option<Duration> {
        self.frames
            .iter()
            .find(|f| f.phase == Some(phase))
            .map(|f| f.at)
    }
}

fn cohort_error_rate(cohort: &str, window: &str) -> String {
    format!(
        r#"sum(rate(chat_requests_total{{cohort="{cohort}",code!~"ok|2.."}}[{window}])) / sum(rate(chat_requests_total{{cohort="{cohort}"}}[{window}]))"#
    )
}

fn cohort_p99(cohort: &str, window: &str) -> String {
    format!(
        r#"histogram_quantile(0.99, sum by (le) (rate(chat_request_duration_seconds_bucket{{cohort="{cohort}"}}[{window}]))) * 1000"#
    )
}

impl LiveStack {
    /// One frame now.
    pub async fn frame(&self, flow: Option<&Flow>, started: Instant) -> Frame {
        let m: Option<Migration> = self.migration().await;
        let status = m
            .as_ref()
            .and_then(|m| m.status.clone())
            .unwrap_or_default();
        let drift_query = self
            .shipped_migration()
            .ok()
            .and_then(|m| m.spec.analysis)
            .and_then(|a| a.gates.into_iter().find(|g| g.name == "drift"))
            .map(|g| g.query);
        let drift = match drift_query {
            Some(q) => self.value(&q).await,
            None => None,
        };
        let window = self.options.timing.window;
        let mut error_rate = BTreeMap::new();
        let mut p99_ms = BTreeMap::new();
        for cohort in ["legacy", "new"] {
            if let Some(v) = self.value(&cohort_error_rate(cohort, window)).await {
                error_rate.insert(cohort, v);
            }
            if let Some(v) = self.value(&cohort_p99(cohort, window)).await {
                p99_ms.insert(cohort, v);
            }
        }
        let (calls, acked_writes) = flow.map_or((0, 0), Flow::progress);
        Frame {
            at: started.elapsed(),
            phase: m.as_ref().map(|_| status.phase),
            step: status.step,
            traffic: status.traffic_percent,
            drift,
            error_rate,
            p99_ms,
            acked_writes,
            calls,
            rollback: status
                .last_rollback
                .as_ref()
                .map(|r| format!("{}: {}", r.reason, r.message)),
            paused: (status.phase == Phase::Paused).then(|| paused_because(&status)),
        }
    }

    /// Samples every `every` until `done` holds for a frame or `timeout` passes; prints a line
    /// whenever what a person follows changes (and every 5 s). Returns the record and whether
    /// `done` held.
    pub async fn follow(
        &self,
        flow: Option<&Flow>,
        record: &mut Record,
        timeout: Duration,
        done: impl Fn(&Frame) -> bool,
    ) -> bool {
        let started = Instant::now();
        let base = record.frames.last().map_or(Duration::ZERO, |f| f.at);
        let mut last_print = Instant::now() - Duration::from_secs(60);
        loop {
            let mut f = self.frame(flow, started).await;
            f.at += base;
            let changed = record.frames.last().is_none_or(|l| {
                (l.phase, l.step, l.traffic, &l.rollback)
                    != (f.phase, f.step, f.traffic, &f.rollback)
            });
            if changed || last_print.elapsed() >= Duration::from_secs(5) {
                println!("{}", line(&f));
                last_print = Instant::now();
            }
            let finished = done(&f);
            record.frames.push(f);
            if finished {
                return true;
            }
            if started.elapsed() > timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The gates of the last evaluation that had no answer, with their messages.
fn paused_because(status: &ficus_operator::crd::MigrationStatus) -> String {
    let gates: Vec<String> = status
        .last_analysis
        .iter()
        .flat_map(|a| a.gates.iter().chain(a.alerts.iter()))
        .filter(|g| g.verdict == ficus_operator::crd::Verdict::Inconclusive)
        .map(|g| {
            format!(
                "{} ({})",
                g.name,
                g.message.as_deref().unwrap_or("no answer")
            )
        })
        .collect();
    if gates.is_empty() {
        "paused".to_owned()
    } else {
        format!("waiting for evidence: {}", gates.join("; "))
    }
}

fn opt(v: Option<&f64>, scale: f64, unit: &str) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.2}{unit}", v * scale))
}

/// `[ 12.3s] Split 1/4  10%  drift 0.00%  err legacy 0.00% new 0.00%  p99 legacy 3.1ms new 4.0ms  acked 812`
pub fn line(f: &Frame) -> String {
    let phase = match (f.phase, f.step) {
        (Some(Phase::Split), Some(s)) => format!("Split {s}"),
        (Some(p), _) => p.to_string(),
        (None, _) => "(no Migration)".into(),
    };
    let mut s = format!(
        "[{:>6.1}s] {:<12} {:>3}%  drift {:>7}  err legacy {:>7} new {:>7}  p99 legacy {:>8} new {:>8}  calls {:>6} acked writes {:>6}",
        f.at.as_secs_f64(),
        phase,
        f.traffic,
        opt(f.drift.as_ref(), 100.0, "%"),
        opt(f.error_rate.get("legacy"), 100.0, "%"),
        opt(f.error_rate.get("new"), 100.0, "%"),
        opt(f.p99_ms.get("legacy"), 1.0, "ms"),
        opt(f.p99_ms.get("new"), 1.0, "ms"),
        f.calls,
        f.acked_writes,
    );
    if let Some(r) = &f.rollback {
        s.push_str(&format!("  rollback: {r}"));
    }
    if let Some(p) = &f.paused {
        s.push_str(&format!("  {p}"));
    }
    s
}
