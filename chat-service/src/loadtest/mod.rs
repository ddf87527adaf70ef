//! The load client: the original system's load test (k6), in Rust.
//!
//! Set-up creates `rooms` group rooms whose participants are all the virtual users. Then every
//! virtual user loops until the run is over or the iteration budget is spent: send a message to
//! a random room, read that room's latest 20 messages, list their rooms (first page of 20), then
//! think for `think_time`. The virtual users follow a [`Ramp`]: all of them for the duration, or
//! k6's stages (`2m:10,5m:50,...`). The report gives per-method counts, errors, p50/p95/p99
//! latencies and throughput, and the [`thresholds`] verdicts. [`drive`] (the closed-loop runner)
//! is shared with the benchmark.

pub mod ramp;
pub mod thresholds;

pub use ramp::{Ramp, Stage};
pub use thresholds::{DEFAULT_THRESHOLDS, Observed, Threshold, Verdict};

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client::{CallError, ChatClient};
use crate::ids::{RoomId, UserId};

#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub base_url: String,
    pub jwt_secret: Vec<u8>,
    /// Virtual users, all running at once.
    pub users: u32,
    pub rooms: u32,
    pub duration: Duration,
    /// Stop after this many iterations in total (all users), even before `duration`.
    pub max_iterations: Option<u64>,
    /// Virtual users are `first_user_id ..= first_user_id + users - 1`.
    pub first_user_id: i32,
    pub think_time: Duration,
    /// k6's stages instead of `users` for `duration` (then `users` is unused: the stages'
    /// highest target is the number of virtual users).
    pub stages: Option<Ramp>,
}

impl LoadConfig {
    /// The virtual users over time.
    pub fn ramp(&self) -> Ramp {
        self.stages
            .clone()
            .unwrap_or_else(|| Ramp::constant(self.users, self.duration))
    }
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            base_url: "http://127.0.0.1:8080".into(),
            jwt_secret: Vec::new(),
            users: 50,
            rooms: 10,
            duration: Duration::from_secs(30),
            max_iterations: None,
            first_user_id: 1_000_000,
            think_time: Duration::ZERO,
            stages: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "load test set-up failed (is the service at the base URL and CHAT_JWT_SECRET its secret?): {0}"
    )]
    Setup(#[from] CallError),
    #[error("invalid load test settings: {0}")]
    Settings(String),
}

/// One timed call.
#[derive(Clone, Debug)]
pub struct Sample {
    pub op: &'static str,
    pub latency: Duration,
    pub error: Option<String>,
}

/// Times `call` as operation `op`; the value on success.
pub async fn timed<T, E: fmt::Display>(
    op: &'static str,
    call: impl Future<Output = Result<T, E>>,
) -> (Sample, Option<T>) {
    let start = Instant::now();
    let result = call.await;
    let latency = start.elapsed();
    match result {
        Ok(v) => (
            Sample {
                op,
                latency,
                error: None,
            },
            Some(v),
        ),
        Err(e) => (
            Sample {
                op,
                latency,
                error: Some(e.to_string()),
            },
            None,
        ),
    }
}

/// Latency percentiles (nearest rank).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: usize,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl LatencySummary {
    pub fn from_samples(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self::from_sorted(&samples)
    }

    fn from_sorted(samples: &[Duration]) -> Self {
        let rank = |q: f64| -> Duration {
            if samples.is_empty() {
                return Duration::ZERO;
            }
            let index = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[index]
        };
        LatencySummary {
            count: samples.len(),
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct OpStats {
    pub ok: u64,
    pub errors: u64,
    pub latency: LatencySummary,
}

/// What a [`drive`] run did.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub elapsed: Duration,
    pub iterations: u64,
    pub ops: BTreeMap<&'static str, OpStats>,
    /// The first few distinct error messages.
    pub error_samples: Vec<String>,
    /// The most virtual users running at once.
    pub peak_users: u32,
    /// Every call's latency by operation, ascending (for thresholds).
    latencies: BTreeMap<&'static str, Vec<Duration>>,
}

const ERROR_SAMPLES: usize = 10;

impl RunReport {
    pub fn errors(&self) -> u64 {
        self.ops.values().map(|o| o.errors).sum()
    }

    pub fn calls(&self) -> u64 {
        self.ops.values().map(|o| o.ok + o.errors).sum()
    }

    /// Each threshold's verdict on this run.
    pub fn check(&self, thresholds: &[Threshold]) -> Vec<Verdict> {
        let mut requests: Vec<Duration> = self.latencies.values().flatten().copied().collect();
        requests.sort_unstable();
        let observed = Observed {
            requests: &requests,
            messages: self
                .latencies
                .get("SendMessage")
                .map_or(&[][..], Vec::as_slice),
            calls: self.calls(),
            errors: self.errors(),
        };
        thresholds.iter().map(|t| t.evaluate(&observed)).collect()
    }

    fn from_samples(samples: Vec<Sample>, iterations: u64, elapsed: Duration) -> Self {
        let mut latencies: BTreeMap<&'static str, (OpStats, Vec<Duration>)> = BTreeMap::new();
        let mut error_samples = Vec::new();
        for s in samples {
            let (stats, lat) = latencies.entry(s.op).or_default();
            lat.push(s.latency);
            match s.error {
                None => stats.ok += 1,
                Some(e) => {
                    stats.errors += 1;
                    if error_samples.len() < ERROR_SAMPLES && !error_samples.contains(&e) {
                        error_samples.push(e);
                    }
                }
            }
        }
        let mut ops = BTreeMap::new();
        let mut sorted = BTreeMap::new();
        for (op, (stats, mut lat)) in latencies {
            lat.sort_unstable();
            ops.insert(
                op,
                OpStats {
                    latency: LatencySummary::from_sorted(&lat),
                    ..stats
                },
            );
            sorted.insert(op, lat);
        }
        RunReport {
            elapsed,
            iterations,
            ops,
            error_samples,
            peak_users: 0,
            latencies: sorted,
        }
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(f64::EPSILON);
        writeln!(
            f,
            "{} iterations, {} calls, {} errors in {:.1}s ({:.0} calls/s)",
            self.iterations,
            self.calls(),
            self.errors(),
            secs,
            self.calls() as f64 / secs
        )?;
        writeln!(
            f,
            "{:<20} {:>9} {:>7} {:>9} {:>10} {:>10} {:>10} {:>10}",
            "method", "ok", "errors", "per s", "p50 ms", "p95 ms", "p99 ms", "max ms"
        )?;
        for (op, s) in &self.ops {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            writeln!(
                f,
                "{:<20} {:>9} {:>7} {:>9.0} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                op,
                s.ok,
                s.errors,
                (s.ok + s.errors) as f64 / secs,
                ms(s.latency.p50),
                ms(s.latency.p95),
                ms(s.latency.p99),
                ms(s.latency.max)
            )?;
        }
        for e in &self.error_samples {
            writeln!(f, "error: {e}")?;
        }
        Ok(())
    }
}

/// Runs `workers` closed loops for `duration` (and at most `max_iterations` iterations in
/// total): each worker calls `iteration(worker)` again as soon as the previous one finished
/// (after `think`), and the samples of all iterations are summarised.
pub async fn drive<F, Fut>(
    workers: u32,
    duration: Duration,
    max_iterations: Option<u64>,
    think: Duration,
    iteration: F,
) -> RunReport
where
    F: Fn(u32) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<Sample>> + Send,
{
    drive_ramp(
        &Ramp::constant(workers, duration),
        max_iterations,
        think,
        iteration,
    )
    .await
}

/// How often an idle virtual user (above the ramp's current target) looks again.
const IDLE_CHECK: Duration = Duration::from_millis(50);

/// [`drive`] with the virtual users of `ramp`: worker `i` runs iterations while `i` is below
/// the ramp's target at that moment and waits otherwise (k6's `ramping-vus`: a user above the
/// target finishes its iteration, then stops).
pub async fn drive_ramp<F, Fut>(
    ramp: &Ramp,
    max_iterations: Option<u64>,
    think: Duration,
    iteration: F,
) -> RunReport
where
    F: Fn(u32) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<Sample>> + Send,
{
    let budget = Arc::new(AtomicU64::new(max_iterations.unwrap_or(u64::MAX)));
    let running = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let total = ramp.total();
    let tasks: Vec<_> = (0..ramp.max_target())
        .map(|worker| {
            let (iteration, budget) = (iteration.clone(), budget.clone());
            let (running, peak, ramp) = (running.clone(), peak.clone(), ramp.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut done = 0u64;
                while start.elapsed() < total {
                    if worker >= ramp.target_at(start.elapsed()) {
                        tokio::time::sleep(IDLE_CHECK).await;
                        continue;
                    }
                    // Take one unit of the shared budget per iteration; none left means stop.
                    if budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_err()
                    {
                        break;
                    }
                    let now = running.fetch_add(1, Ordering::Relaxed) + 1;
                    peak.fetch_max(now, Ordering::Relaxed);
                    samples.extend(iteration(worker).await);
                    running.fetch_sub(1, Ordering::Relaxed);
                    done += 1;
                    if !think.is_zero() {
                        tokio::time::sleep(think).await;
                    }
                }
                (samples, done)
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut iterations = 0;
    for task in tasks {
        match task.await {
            Ok((s, n)) => {
                samples.extend(s);
                iterations += n;
            }
            Err(e) => samples.push(Sample {
                op: "worker",
                latency: Duration::ZERO,
                error: Some(format!("worker task failed: {e}")),
            }),
        }
    }
    let mut report = RunReport::from_samples(samples, iterations, start.elapsed());
    report.peak_users = u32::try_from(peak.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
    report
}

/// The load test: set-up, then the virtual users' loops.
pub async fn run(config: &LoadConfig) -> Result<RunReport, LoadError> {
    let ramp = config.ramp();
    let user_count = ramp.max_target();
    if user_count == 0 || config.rooms == 0 {
        return Err(LoadError::Settings(
            "users (or the stages' highest target) and rooms must be at least 1".into(),
        ));
    }
    let last = i64::from(config.first_user_id) + i64::from(user_count) - 1;
    if config.first_user_id <= 0 || last > i64::from(i32::MAX) {
        return Err(LoadError::Settings(
            "virtual user ids must be positive 32-bit integers".into(),
        ));
    }
    let client = ChatClient::new(&config.base_url, &config.jwt_secret);
    let users: Vec<UserId> = (0..user_count as i32)
        .map(|i| UserId(config.first_user_id + i))
        .collect();
    let mut rooms = Vec::new();
    for i in 0..config.rooms {
        rooms.push(
            client
                .create_room(users[0], &format!("Load Test Room {i}"), "group", &users)
                .await?,
        );
    }
    let shared = Arc::new((client, users, rooms));
    let report = drive_ramp(
        &ramp,
        config.max_iterations,
        config.think_time,
        move |worker| {
            let shared = shared.clone();
            async move {
                let (client, users, rooms) = &*shared;
                let user = users[worker as usize];
                let room: RoomId = rooms[rand::random_range(0..rooms.len())];
                let content = format!(
                    "Load test message from user {user} at {}",
                    chrono::Utc::now().to_rfc3339()
                );
                vec![
                    timed("SendMessage", client.send_message(user, room, &content))
                        .await
                        .0,
                    timed("GetMessageHistory", client.history(user, room, 20, None))
                        .await
                        .0,
                    timed("GetRooms", client.rooms(user, 1, 20)).await.0,
                ]
            }
        },
    )
    .await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = LatencySummary::from_samples((1..=100).rev().map(ms).collect());
        assert_eq!(
            (s.count, s.p50, s.p99, s.max),
            (100, ms(50), ms(99), ms(100))
        );
        let one = LatencySummary::from_samples(vec![ms(7)]);
        assert_eq!((one.p50, one.p99, one.max), (ms(7), ms(7), ms(7)));
        assert_eq!(
            LatencySummary::from_samples(vec![]),
            LatencySummary::default()
        );
    }

    #[test]
    fn reports_count_errors_per_operation() {
        let samples = vec![
            Sample {
                op: "A",
                latency: ms(1),
                error: None,
            },
            Sample {
                op: "A",
                latency: ms(3),
                error: Some("boom".into()),
            },
            Sample {
                op: "A",
                latency: ms(2),
                error: Some("boom".into()),
            },
            Sample {
                op: "B",
                latency: ms(5),
                error: None,
            },
        ];
        let r = RunReport::from_samples(samples, 2, Duration::from_secs(1));
        assert_eq!((r.calls(), r.errors()), (4, 2));
        assert_eq!(
            (r.ops["A"].ok, r.ops["A"].errors, r.ops["A"].latency.max),
            (1, 2, ms(3))
        );
        assert_eq!(
            r.error_samples,
            vec!["boom".to_owned()],
            "distinct errors only"
        );
        assert!(r.to_string().contains("2 errors"));
    }

    #[tokio::test]
    async fn drive_stops_at_the_iteration_budget() {
        let r = drive(
            4,
            Duration::from_secs(30),
            Some(10),
            Duration::ZERO,
            |_| async {
                vec![Sample {
                    op: "noop",
                    latency: Duration::ZERO,
                    error: None,
                }]
            },
        )
        .await;
        assert_eq!(r.iterations, 10);
        assert_eq!(r.ops["noop"].ok, 10);
    }

    #[tokio::test]
    async fn drive_stops_at_the_deadline() {
        let start = Instant::now();
        let r = drive(2, ms(100), None, ms(10), |_| async { Vec::new() }).await;
        assert!(r.iterations > 0);
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
