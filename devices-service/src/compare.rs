//! The hourly comparison of the two stores (the plan's `validate-shadow-mode.sh`, done as a
//! service task and a command): per bucket of event time (an hour by default), the number of
//! events and the sum of their values in each store, over the events received in a window that
//! ends `settle` ago (copies still in flight or in the outbox are not drift yet) and starts no
//! earlier than the shadow epoch (the new store holds nothing older unless backfilled).
//!
//! Drift is two ratios, computed by [`compare`] (pure):
//! * count: `Σ |legacy − new|` over the buckets / `Σ legacy`;
//! * value: `Σ |Σvalue legacy − Σvalue new|` / `Σ |Σvalue legacy|`;
//!
//! exported as `devices_event_drift_ratio{kind}` after every run (the `DevicesEventDrift`
//! alert fires above 0.01) and returned by `devices-service validate`, which exits 2 above
//! `--max-drift`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ficus_flags::Side;

use crate::store::{self, StoreResult, Stores};

/// One bucket of one store.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub start: DateTime<Utc>,
    pub count: i64,
    pub sum: f64,
}

/// One bucket of both stores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketDiff {
    pub start: DateTime<Utc>,
    pub legacy_count: i64,
    pub new_count: i64,
    pub legacy_sum: f64,
    pub new_sum: f64,
}

impl BucketDiff {
    pub fn matches(&self) -> bool {
        self.legacy_count == self.new_count && same_sum(self.legacy_sum, self.new_sum)
    }
}

/// Sums of the same values added in another order differ in the last bits.
fn same_sum(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// The outcome of one comparison.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Comparison {
    pub buckets: Vec<BucketDiff>,
    pub count_drift: f64,
    pub value_drift: f64,
}

impl Comparison {
    /// The larger of the two ratios: what the threshold applies to.
    pub fn drift(&self) -> f64 {
        self.count_drift.max(self.value_drift)
    }

    pub fn mismatching(&self) -> usize {
        self.buckets.iter().filter(|b| !b.matches()).count()
    }
}

/// `part / whole`, where nothing of nothing is no drift and something of nothing is all drift.
fn ratio(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part / whole
    } else if part > 0.0 {
        1.0
    } else {
        0.0
    }
}

/// Compares the buckets of the two stores (a bucket missing from one side counts as empty).
pub fn compare(legacy: &[Bucket], new: &[Bucket]) -> Comparison {
    let mut all: BTreeMap<DateTime<Utc>, BucketDiff> = BTreeMap::new();
    let empty = |start| BucketDiff {
        start,
        legacy_count: 0,
        new_count: 0,
        legacy_sum: 0.0,
        new_sum: 0.0,
    };
    for b in legacy {
        let d = all.entry(b.start).or_insert_with(|| empty(b.start));
        d.legacy_count += b.count;
        d.legacy_sum += b.sum;
    }
    for b in new {
        let d = all.entry(b.start).or_insert_with(|| empty(b.start));
        d.new_count += b.count;
        d.new_sum += b.sum;
    }
    let buckets: Vec<BucketDiff> = all.into_values().collect();
    let (mut count_diff, mut count_total, mut value_diff, mut value_total) = (0.0, 0.0, 0.0, 0.0);
    for b in &buckets {
        count_diff += (b.legacy_count - b.new_count).unsigned_abs() as f64;
        count_total += b.legacy_count as f64;
        if !same_sum(b.legacy_sum, b.new_sum) {
            value_diff += (b.legacy_sum - b.new_sum).abs();
        }
        value_total += b.legacy_sum.abs();
    }
    Comparison {
        buckets,
        count_drift: ratio(count_diff, count_total),
        value_drift: ratio(value_diff, value_total),
    }
}

/// The received-time window a comparison at `now` covers: `[max(now − lookback, since +
/// settle), now − settle)`, or `None` when that is empty. `since` is the shadow epoch, when the
/// first instance saw dual writes on; the others follow within a poll of the flags, so the
/// window starts `settle` after it: events an instance wrote before it applied the flags are
/// not in the new store and are no drift.
pub fn window(
    now: DateTime<Utc>,
    since: Option<DateTime<Utc>>,
    lookback: Duration,
    settle: Duration,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let to = now - chrono::Duration::from_std(settle).ok()?;
    let mut from = now - chrono::Duration::from_std(lookback).ok()?;
    if let Some(since) = since {
        from = from.max(since + chrono::Duration::from_std(settle).ok()?);
    }
    (from < to).then_some((from, to))
}

/// How a comparison is run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompareConfig {
    /// Bucket width (the plan: an hour).
    pub bucket: Duration,
    /// How far back a run looks.
    pub lookback: Duration,
    /// Events received more recently than this are left out (copies still on their way).
    pub settle: Duration,
    /// Drift above this is a failed comparison (`devices_event_compare_runs_total{status="fail"}`);
    /// the alert rule has its own threshold, the same 1 % by default.
    pub max_drift: f64,
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig {
            bucket: Duration::from_secs(3600),
            lookback: Duration::from_secs(24 * 3600),
            settle: Duration::from_secs(30),
            max_drift: 0.01,
        }
    }
}

/// Reads both stores' buckets over `[from, to)` and compares them.
pub async fn run(
    stores: &Stores,
    bucket: Duration,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> StoreResult<Comparison> {
    let width = bucket.as_secs_f64();
    let (legacy, new) = tokio::try_join!(
        store::buckets(&stores.legacy, Side::Legacy, width, from, to),
        store::buckets(&stores.new, Side::New, width, from, to),
    )?;
    Ok(compare(&legacy, &new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn hour(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, h, 0, 0)
            .single()
            .expect("time")
    }

    fn b(h: u32, count: i64, sum: f64) -> Bucket {
        Bucket {
            start: hour(h),
            count,
            sum,
        }
    }

    #[test]
    fn drift_table() {
        struct Case {
            name: &'static str,
            legacy: Vec<Bucket>,
            new: Vec<Bucket>,
            count: f64,
            value: f64,
            mismatching: usize,
        }
        let cases = [
            Case {
                name: "nothing yet",
                legacy: vec![],
                new: vec![],
                count: 0.0,
                value: 0.0,
                mismatching: 0,
            },
            Case {
                name: "identical",
                legacy: vec![b(1, 100, 50.0), b(2, 100, 25.0)],
                new: vec![b(1, 100, 50.0), b(2, 100, 25.0)],
                count: 0.0,
                value: 0.0,
                mismatching: 0,
            },
            Case {
                name: "float order",
                legacy: vec![b(1, 3, 0.1 + 0.2 + 0.3)],
                new: vec![b(1, 3, 0.3 + 0.2 + 0.1)],
                count: 0.0,
                value: 0.0,
                mismatching: 0,
            },
            Case {
                name: "new dropped 2 of 200",
                legacy: vec![b(1, 100, 100.0), b(2, 100, 100.0)],
                new: vec![b(1, 99, 99.0), b(2, 99, 99.0)],
                count: 0.01,
                value: 0.01,
                mismatching: 2,
            },
            Case {
                name: "hour missing in new",
                legacy: vec![b(1, 50, 10.0), b(2, 50, 10.0)],
                new: vec![b(1, 50, 10.0)],
                count: 0.5,
                value: 0.5,
                mismatching: 1,
            },
            Case {
                name: "extra in new",
                legacy: vec![b(1, 100, 10.0)],
                new: vec![b(1, 100, 10.0), b(3, 5, 1.0)],
                count: 0.05,
                value: 0.1,
                mismatching: 1,
            },
            Case {
                name: "values changed, counts equal",
                legacy: vec![b(1, 10, 100.0)],
                new: vec![b(1, 10, 90.0)],
                count: 0.0,
                value: 0.1,
                mismatching: 1,
            },
            Case {
                name: "legacy empty, new not",
                legacy: vec![],
                new: vec![b(1, 1, 1.0)],
                count: 1.0,
                value: 1.0,
                mismatching: 1,
            },
        ];
        for c in cases {
            let r = compare(&c.legacy, &c.new);
            assert!(
                (r.count_drift - c.count).abs() < 1e-12,
                "{}: count {}",
                c.name,
                r.count_drift
            );
            assert!(
                (r.value_drift - c.value).abs() < 1e-12,
                "{}: value {}",
                c.name,
                r.value_drift
            );
            assert_eq!(r.mismatching(), c.mismatching, "{}", c.name);
            assert_eq!(r.drift(), c.count.max(c.value), "{}", c.name);
        }
    }

    #[test]
    fn windows_end_before_the_settle_time_and_start_at_the_shadow_epoch() {
        let now = hour(12);
        let s = |n| Duration::from_secs(n);
        assert_eq!(
            window(now, None, s(3600), s(30)),
            Some((hour(11), now - chrono::Duration::seconds(30)))
        );
        let since = hour(11) + chrono::Duration::minutes(30);
        assert_eq!(
            window(now, Some(since), s(3600), s(30)).map(|w| w.0),
            Some(since + chrono::Duration::seconds(30)),
            "a settle time after the epoch: the other instances apply the flags a poll later"
        );
        assert_eq!(
            window(
                now,
                Some(now - chrono::Duration::seconds(10)),
                s(3600),
                s(30)
            ),
            None,
            "shadow began within the settle time"
        );
    }
}
