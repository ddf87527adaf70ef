//! SSM source: the flag document as AWS SSM Parameter Store parameters under a prefix (as the
//! operator writes them for services outside Kubernetes, docs/aws.md), read with one
//! `GetParameters` call (with decryption, so SecureString works) every poll interval.
//!
//! The operator writes `generation` last, so a reading with a new generation carries the values
//! that go with it. A reading whose values differ while the generation is the applied one is
//! either a write caught half way (the new generation has not landed yet) or a hand edit: it is
//! applied only once a second poll reads the same values, so a half-written document is not put
//! in force for one poll interval.

use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_ssm::Client;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tracing::{debug, info, warn};

use super::apply::{Applier, Outcome};
use super::{Document, FlagError, Flags};

/// The CLI default for `--flags-ssm-poll-interval`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Shorter intervals are raised to this (a zero interval would spin, and every poll is an API
/// call against a throttled, account-wide quota).
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// One `GetParameters` (SDK retries included) never holds the poll loop longer than this.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// The SDK configuration the default `start` uses: the default credential chain (environment,
/// profile, ECS task role, instance profile, web identity), region from `AWS_REGION` / profile,
/// endpoint from `AWS_ENDPOINT_URL_SSM`, else `AWS_ENDPOINT_URL`, else the profile's
/// `endpoint_url` (unless `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` is set), else AWS.
pub(super) async fn default_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// An SSM client for `config`, with an operation timeout unless `config` has one.
pub(super) fn client(config: &SdkConfig) -> Client {
    ficus_flags::ssm_client::client(config, OPERATION_TIMEOUT)
}

/// Checks `prefix` with the contract's rule (the operator's CRD enforces the same).
pub(super) fn check_prefix(prefix: &str) -> Result<(), FlagError> {
    Ok(ficus_flags::ssm::check_prefix(prefix)?)
}

/// Parses a poll interval: `500ms`, `5s`, `2m`, or a bare number of seconds; zero is refused.
pub fn parse_poll_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: expected e.g. 500ms, 5s or 1m"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => {
            return Err(format!(
                "{s:?} has an unknown unit: use ms, s or m (e.g. 500ms, 5s, 1m)"
            ));
        }
    };
    if d.is_zero() {
        return Err("the poll interval must be above zero".into());
    }
    Ok(d)
}

pub(super) async fn start(
    client: Client,
    prefix: String,
    poll_interval: Duration,
    gauge: Gauge,
) -> Result<watch::Receiver<Flags>, FlagError> {
    check_prefix(&prefix)?;
    let reader = Reader { client, prefix };
    let (mut applier, rx) = Applier::new(
        format!("SSM parameters {}*", reader.prefix),
        Flags::default(),
        gauge,
    );

    // One read so `start` returns with the document in force, or a clear error (no
    // credentials, access denied, no endpoint): running on defaults could write to the wrong
    // primary. No parameters yet is the default flags, as for the other sources.
    let first = reader.read().await?;
    if let Outcome::Rejected(err) = applier.offer(first.clone()) {
        return Err(FlagError::Rejected {
            origin: applier.origin().to_owned(),
            source: Box::new(err),
        });
    }

    let interval = poll_interval.max(MIN_POLL_INTERVAL);
    if interval != poll_interval {
        warn!(origin = %applier.origin(), requested = ?poll_interval, used = ?interval, "SSM flag poll interval raised to the minimum");
    }
    let poller = Poller {
        applier,
        reader,
        last: first,
        deferred: false,
        failed_polls: 0,
    };
    tokio::spawn(poller.follow(interval));
    Ok(rx)
}

struct Reader {
    client: Client,
    prefix: String,
}

impl Reader {
    /// The six flag parameters under the prefix (the operator's `traffic-split-percent` and
    /// `use-new-system` are not read: they restate `read_split_percent`). Parameters that do
    /// not exist come back as `InvalidParameters`; none at all is no document.
    async fn read(&self) -> Result<Document, FlagError> {
        let names = ficus_flags::ssm::document_names(&self.prefix);
        let entries = ficus_flags::ssm_client::get(&self.client, &self.prefix, names)
            .await
            .map_err(|err| FlagError::Ssm {
                prefix: self.prefix.clone(),
                message: ficus_flags::ssm_client::describe(&err),
            })?;
        Ok(if entries.is_empty() {
            Document::Missing
        } else {
            Document::Entries(entries)
        })
    }
}

struct Poller {
    applier: Applier,
    reader: Reader,
    /// The previous successful reading: an unchanged reading has been decided on already.
    last: Document,
    /// `last` changed the values without a generation bump and waits for a second reading.
    deferred: bool,
    /// Consecutive failed polls (warned once, then debug until a poll succeeds again).
    failed_polls: u64,
}

impl Poller {
    async fn follow(mut self, interval: Duration) {
        let mut timer = interval_at(Instant::now() + interval, interval);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.applier.closed() => break,
                _ = timer.tick() => {}
            }
            let reading = tokio::select! {
                _ = self.applier.closed() => break,
                reading = self.reader.read() => reading,
            };
            match reading {
                Ok(doc) => {
                    if self.failed_polls > 0 {
                        info!(origin = %self.applier.origin(), failed_polls = self.failed_polls, "SSM flag parameters readable again");
                        self.failed_polls = 0;
                    }
                    self.consider(doc);
                }
                Err(err) => {
                    // Throttling, a network blip, an expired session: the flags in force stay,
                    // the next tick tries again.
                    self.failed_polls += 1;
                    if self.failed_polls == 1 {
                        warn!(origin = %self.applier.origin(), kept_generation = self.applier.current().generation, "{err}; keeping the flags in force and retrying every {interval:?}");
                    } else {
                        debug!(origin = %self.applier.origin(), failed_polls = self.failed_polls, "{err}");
                    }
                }
            }
        }
        debug!(origin = %self.applier.origin(), "no flag readers left; stopping the SSM flag poller");
    }

    fn consider(&mut self, doc: Document) {
        let repeat = doc == self.last;
        if repeat && !self.deferred {
            return;
        }
        if !repeat && self.unbumped_change(&doc) {
            debug!(origin = %self.applier.origin(), "flag values changed without a generation bump; reading again before applying (the operator writes generation last)");
            self.last = doc;
            self.deferred = true;
            return;
        }
        self.last = doc.clone();
        self.deferred = false;
        self.applier.offer(doc);
    }

    /// A valid document with the applied generation but other values.
    fn unbumped_change(&self, doc: &Document) -> bool {
        let Document::Entries(entries) = doc else {
            return false;
        };
        let current = self.applier.current();
        Flags::parse(|k| entries.get(k).cloned())
            .is_ok_and(|f| f.generation == current.generation && f != current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_intervals() {
        assert_eq!(parse_poll_interval("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_poll_interval("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_poll_interval("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_poll_interval(" 2m "), Ok(Duration::from_secs(120)));
        for bad in ["", "0", "0ms", "s", "5h", "-1s", "1.5s", "5 sec"] {
            assert!(parse_poll_interval(bad).is_err(), "{bad:?}");
        }
    }
}
