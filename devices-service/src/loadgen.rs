//! The load generator (the plan's 200 events/s): virtual device owners send batches of their
//! devices' readings to the instances in turn, at a fixed event rate, and read their devices'
//! latest state and hourly aggregates. Every event id the service acknowledged is kept, so a
//! test can check that none was lost.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;
use tokio::sync::{Semaphore, watch};
use uuid::Uuid;

use crate::api::{Batch, USER_HEADER};
use crate::model::{DeviceId, EventIn, EventType, OwnerId};

#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Base URLs of the instances (`http://host:port`), used in turn.
    pub targets: Vec<String>,
    /// Events per second (the plan: 200).
    pub rate: f64,
    /// Events per batch request.
    pub batch: usize,
    /// Device owners (users); each has `devices_per_user` devices.
    pub users: usize,
    pub devices_per_user: usize,
    /// Reads per write request.
    pub reads_per_write: f64,
    /// Requests in flight at most.
    pub concurrency: usize,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            targets: vec!["http://127.0.0.1:8080".into()],
            rate: 200.0,
            batch: 10,
            users: 100,
            devices_per_user: 3,
            reads_per_write: 1.0,
            concurrency: 64,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub elapsed: Duration,
    /// Event ids the service acknowledged (201).
    pub acked: Vec<Uuid>,
    /// Events in requests that failed (not acknowledged: the client would resend them).
    pub failed_events: u64,
    pub reads: u64,
    pub failed_reads: u64,
    /// Write request latencies.
    pub write_latencies: Vec<Duration>,
}

impl LoadReport {
    pub fn events_per_second(&self) -> f64 {
        self.acked.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of the write latencies.
    pub fn write_quantile(&self, q: f64) -> Duration {
        let mut l = self.write_latencies.clone();
        l.sort();
        if l.is_empty() {
            return Duration::ZERO;
        }
        let i = ((l.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        l[i]
    }
}

#[derive(Default)]
struct Shared {
    report: LoadReport,
}

/// Runs until `stop` becomes true (or forever), then waits for the requests in flight.
pub async fn run(config: LoadConfig, mut stop: watch::Receiver<bool>) -> LoadReport {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let period = Duration::from_secs_f64(config.batch.max(1) as f64 / config.rate.max(0.001));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut n: usize = 0;
    let mut read_credit = 0.0;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = ticker.tick() => {}
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let target = config.targets[n % config.targets.len().max(1)].clone();
        let user = rand::rng().random_range(0..config.users.max(1));
        n += 1;
        let events = batch(&config, user);
        let (client2, shared2) = (client.clone(), shared.clone());
        read_credit += config.reads_per_write;
        let reads = read_credit.floor() as usize;
        read_credit -= reads as f64;
        let devices = config.devices_per_user.max(1);
        tokio::spawn(async move {
            let _permit = permit;
            let ids: Vec<Uuid> = events.iter().filter_map(|e| e.id).collect();
            let t = Instant::now();
            let ok = client2
                .post(format!("{target}/v1/events/batch"))
                .json(&Batch { events })
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::CREATED);
            let latency = t.elapsed();
            let mut read_results = Vec::new();
            for _ in 0..reads {
                let device = format!("dev-{user}-{}", rand::rng().random_range(0..devices));
                let path = if rand::rng().random_bool(0.8) {
                    format!("{target}/v1/devices/{device}/latest")
                } else {
                    let to = Utc::now();
                    let from = to - chrono::Duration::hours(2);
                    format!(
                        "{target}/v1/devices/{device}/hourly?from={}&to={}",
                        from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )
                };
                let r = client2
                    .get(path)
                    .header(USER_HEADER, format!("user-{user}"))
                    .send()
                    .await;
                // 404: a device without events yet is a good answer.
                read_results.push(r.is_ok_and(|r| {
                    r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND
                }));
            }
            let mut s = shared2.lock().unwrap_or_else(|e| e.into_inner());
            if ok {
                s.report.acked.extend(ids);
                s.report.write_latencies.push(latency);
            } else {
                s.report.failed_events += ids.len() as u64;
            }
            for r in read_results {
                s.report.reads += 1;
                if !r {
                    s.report.failed_reads += 1;
                }
            }
        });
    }
    // Wait for every request in flight.
    let _all = permits
        .acquire_many(u32::try_from(config.concurrency.max(1)).unwrap_or(u32::MAX))
        .await;
    let mut report = std::mem::take(&mut shared.lock().unwrap_or_else(|e| e.into_inner()).report);
    report.elapsed = start.elapsed();
    report
}

fn batch(config: &LoadConfig, user: usize) -> Vec<EventIn> {
    let mut rng = rand::rng();
    let owner = OwnerId::try_from(format!("user-{user}")).ok();
    (0..config.batch.max(1))
        .filter_map(|_| {
            let device = rng.random_range(0..config.devices_per_user.max(1));
            Some(EventIn {
                id: Some(Uuid::now_v7()),
                device_id: DeviceId::try_from(format!("dev-{user}-{device}")).ok()?,
                user_id: owner.clone()?,
                event_type: EventType::try_from("temperature").ok()?,
                // Two decimals: sums stay exact enough to compare.
                value: f64::from(rng.random_range(1500..3000_u32)) / 100.0,
                timestamp: Utc::now(),
            })
        })
        .collect()
}
