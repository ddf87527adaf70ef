//! The flags this service follows: the operator's document in AWS SSM Parameter Store (the HSE
//! path: `<prefix>generation`, `write_primary`, ..., plus the plan's `traffic-split-percent`
//! and `use-new-system`), read with one `GetParameters` every poll interval.
//!
//! The document is read with the contract's strict parse ([`Flags::parse`], shared with
//! chat-service and the operator) under chat-service's rules: a missing or invalid key rejects
//! the whole document and the flags in force stay; a lower generation is ignored; values that
//! change without a generation bump apply only once a second poll reads them again (the
//! operator writes `generation` last, so that is a write caught half way); parameters that
//! disappear keep the last good flags. At start an invalid document or an unreachable SSM is
//! an error: running on defaults could write to the wrong primary.
//!
//! The plan's two parameters then lower the split ([`routing::effective`]): setting
//! `/hse/traffic-split-percent` to 0 by hand, as the plan's runbook says, takes every user off
//! the new system on the next poll, whatever the document says.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_ssm::Client;
use ficus_flags::{FlagValues, Flags, keys, ssm, ssm_client};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tracing::{debug, info, warn};

use crate::routing::{self, PlanParameters};

/// Shorter poll intervals are raised to this (every poll is a call against an account quota).
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(50);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error(transparent)]
    Prefix(#[from] ssm::PrefixError),
    #[error(
        "flag parameters {prefix}* could not be read from SSM Parameter Store: {message} (check credentials, region, AWS_ENDPOINT_URL_SSM and ssm:GetParameters on {prefix}*)"
    )]
    Ssm { prefix: String, message: String },
    #[error(
        "flag document {prefix}* rejected at start: {source} (fix the parameters or let the operator rewrite them)"
    )]
    Rejected {
        prefix: String,
        #[source]
        source: ficus_flags::FlagError,
    },
    #[error(transparent)]
    Invalid(#[from] ficus_flags::FlagError),
}

/// Where the flags come from.
#[derive(Clone, Debug)]
pub enum FlagSource {
    /// Fixed flags (tests, benchmarks, local runs).
    Static(Flags),
    /// Parameters under `prefix` (e.g. `/hse/`), polled every `poll_interval`.
    Ssm {
        prefix: String,
        poll_interval: Duration,
    },
}

/// The flags in force.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InForce {
    /// The operator's document.
    pub doc: Flags,
    /// The plan's own parameters as last read.
    pub plan: PlanParameters,
}

impl InForce {
    /// What requests follow: the document with the plan's overrides applied.
    pub fn values(&self) -> FlagValues {
        routing::effective(self.doc.values, self.plan)
    }
}

/// What one poll read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reading {
    /// The document's keys (after the prefix); empty: no document.
    doc: BTreeMap<String, String>,
    plan: PlanParameters,
}

/// The applied flags; clones share one channel. The poller runs while any clone lives.
#[derive(Clone, Debug)]
pub struct FlagWatcher {
    rx: watch::Receiver<InForce>,
}

impl FlagWatcher {
    /// Loads once, then follows the source in a background task; `gauge` shows the applied
    /// generation. An SSM source uses `aws` when given, else the SDK's default chain.
    pub async fn start(
        source: FlagSource,
        aws: Option<&SdkConfig>,
        gauge: Gauge,
    ) -> Result<FlagWatcher, FlagError> {
        match source {
            FlagSource::Static(flags) => {
                flags.validate()?;
                gauge.set(flags.generation);
                let (tx, rx) = watch::channel(InForce {
                    doc: flags,
                    plan: PlanParameters::default(),
                });
                tokio::spawn(async move { tx.closed().await });
                Ok(FlagWatcher { rx })
            }
            FlagSource::Ssm {
                prefix,
                poll_interval,
            } => {
                ssm::check_prefix(&prefix)?;
                let config = match aws {
                    Some(c) => c.clone(),
                    None => {
                        aws_config::defaults(aws_config::BehaviorVersion::latest())
                            .load()
                            .await
                    }
                };
                let client = client(&config);
                let reader = Reader { client, prefix };
                let first = reader.read().await?;
                let mut state = State::default();
                if let Err(source) = state.offer(&first) {
                    return Err(FlagError::Rejected {
                        prefix: reader.prefix,
                        source,
                    });
                }
                gauge.set(state.in_force.doc.generation);
                let (tx, rx) = watch::channel(state.in_force);
                info!(prefix = %reader.prefix, generation = state.in_force.doc.generation, "flags loaded from SSM");
                let interval = poll_interval.max(MIN_POLL_INTERVAL);
                tokio::spawn(follow(reader, state, first, tx, gauge, interval));
                Ok(FlagWatcher { rx })
            }
        }
    }

    pub fn current(&self) -> InForce {
        *self.rx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<InForce> {
        let mut rx = self.rx.clone();
        rx.mark_unchanged();
        rx
    }
}

fn client(config: &SdkConfig) -> Client {
    ssm_client::client(config, OPERATION_TIMEOUT)
}

struct Reader {
    client: Client,
    prefix: String,
}

impl Reader {
    async fn read(&self) -> Result<Reading, FlagError> {
        let mut names = ssm::document_names(&self.prefix);
        names.push(format!("{}{}", self.prefix, ssm::TRAFFIC_SPLIT_PERCENT));
        names.push(format!("{}{}", self.prefix, ssm::USE_NEW_SYSTEM));
        let mut all = ssm_client::get(&self.client, &self.prefix, names)
            .await
            .map_err(|err| FlagError::Ssm {
                prefix: self.prefix.clone(),
                message: ssm_client::describe(&err),
            })?;
        let plan = PlanParameters::parse(
            all.get(ssm::TRAFFIC_SPLIT_PERCENT).map(String::as_str),
            all.get(ssm::USE_NEW_SYSTEM).map(String::as_str),
        );
        all.retain(|k, _| keys::ALL.contains(&k.as_str()));
        Ok(Reading { doc: all, plan })
    }
}

/// The decisions of the poller, apart from its I/O.
#[derive(Debug, Default)]
struct State {
    in_force: InForce,
    /// A document has been applied (until then the defaults are in force).
    had_doc: bool,
    /// The last reading differed without a generation bump and waits for confirmation.
    deferred: Option<Reading>,
}

/// What [`State::offer`] did.
#[derive(Debug, PartialEq, Eq)]
enum Offer {
    Applied,
    Unchanged,
    Kept(&'static str),
    Deferred,
}

impl State {
    /// Considers one reading; `Err` is an invalid document (the flags in force stay).
    fn offer(&mut self, r: &Reading) -> Result<Offer, ficus_flags::FlagError> {
        let plan_changed = r.plan != self.in_force.plan;
        self.in_force.plan = r.plan;
        if r.doc.is_empty() {
            return Ok(if plan_changed {
                Offer::Applied
            } else {
                Offer::Kept("no document")
            });
        }
        let doc = Flags::parse(|k| r.doc.get(k).cloned())?;
        let current = self.in_force.doc;
        if doc.generation < current.generation {
            return Ok(Offer::Kept("lower generation"));
        }
        if doc == current {
            self.had_doc = true;
            self.deferred = None;
            return Ok(if plan_changed {
                Offer::Applied
            } else {
                Offer::Unchanged
            });
        }
        if self.had_doc && doc.generation == current.generation && self.deferred.as_ref() != Some(r)
        {
            self.deferred = Some(r.clone());
            return Ok(Offer::Deferred);
        }
        self.deferred = None;
        self.had_doc = true;
        self.in_force.doc = doc;
        Ok(Offer::Applied)
    }
}

async fn follow(
    reader: Reader,
    mut state: State,
    mut last: Reading,
    tx: watch::Sender<InForce>,
    gauge: Gauge,
    interval: Duration,
) {
    let mut timer = interval_at(Instant::now() + interval, interval);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failed = 0u64;
    loop {
        tokio::select! {
            _ = tx.closed() => break,
            _ = timer.tick() => {}
        }
        let reading = match reader.read().await {
            Ok(r) => {
                if failed > 0 {
                    info!(prefix = %reader.prefix, failed, "SSM flag parameters readable again");
                    failed = 0;
                }
                r
            }
            Err(err) => {
                failed += 1;
                if failed == 1 {
                    warn!(
                        kept_generation = state.in_force.doc.generation,
                        "{err}; keeping the flags in force"
                    );
                } else {
                    debug!(failed, "{err}");
                }
                continue;
            }
        };
        if reading == last && state.deferred.is_none() {
            continue;
        }
        let repeat = reading == last;
        last = reading.clone();
        match state.offer(&reading) {
            Ok(Offer::Applied) => {
                tx.send_replace(state.in_force);
                gauge.set(state.in_force.doc.generation);
                let v = state.in_force.values();
                info!(
                    generation = state.in_force.doc.generation,
                    write_primary = %v.write_primary,
                    dual_write = %v.dual_write,
                    split = %v.read_split_percent,
                    document_split = %state.in_force.doc.values.read_split_percent,
                    "applied flags"
                );
            }
            Ok(Offer::Kept(why)) => {
                if !repeat {
                    warn!(
                        why,
                        kept_generation = state.in_force.doc.generation,
                        "flag document ignored; keeping the flags in force"
                    );
                }
            }
            Ok(Offer::Deferred) => debug!(
                "flag values changed without a generation bump; reading again before applying"
            ),
            Ok(Offer::Unchanged) => {}
            Err(err) => warn!(
                kept_generation = state.in_force.doc.generation,
                "rejected flag document, keeping the last good flags: {err}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ficus_flags::{DualWrite, Percent, Side};

    fn doc(generation: i64, split: u8) -> Flags {
        Flags {
            generation,
            values: FlagValues {
                write_primary: Side::Legacy,
                dual_write: DualWrite::Sync,
                shadow_read_percent: Percent::ZERO,
                read_split_percent: Percent::new(split).expect("percent"),
                ..Default::default()
            },
        }
    }

    fn reading(f: Option<Flags>, split: Option<&str>) -> Reading {
        Reading {
            doc: f
                .map(|f| {
                    f.to_entries()
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect()
                })
                .unwrap_or_default(),
            plan: PlanParameters::parse(split, None),
        }
    }

    #[test]
    fn documents_apply_by_generation_and_unbumped_changes_need_a_second_reading() {
        let mut s = State::default();
        assert_eq!(
            s.offer(&reading(None, None)),
            Ok(Offer::Kept("no document"))
        );
        assert_eq!(s.offer(&reading(Some(doc(1, 0)), None)), Ok(Offer::Applied));
        assert_eq!(
            s.offer(&reading(Some(doc(1, 0)), None)),
            Ok(Offer::Unchanged)
        );
        assert_eq!(
            s.offer(&reading(Some(doc(3, 10)), None)),
            Ok(Offer::Applied)
        );
        assert_eq!(
            s.offer(&reading(Some(doc(2, 50)), None)),
            Ok(Offer::Kept("lower generation"))
        );
        let edit = reading(Some(doc(3, 50)), None);
        assert_eq!(s.offer(&edit), Ok(Offer::Deferred));
        assert_eq!(s.in_force.doc, doc(3, 10));
        assert_eq!(s.offer(&edit), Ok(Offer::Applied));
        assert_eq!(s.in_force.doc, doc(3, 50));
        let mut bad = reading(Some(doc(4, 50)), None);
        bad.doc.insert("write_primary".into(), "sideways".into());
        assert!(s.offer(&bad).is_err());
        assert_eq!(s.in_force.doc, doc(3, 50));
        assert_eq!(
            s.offer(&reading(None, None)),
            Ok(Offer::Kept("no document"))
        );
        assert_eq!(
            s.in_force.doc,
            doc(3, 50),
            "a vanished document keeps the flags"
        );
    }

    #[test]
    fn the_plans_split_lowers_the_users_on_the_new_system_at_once() {
        let mut s = State::default();
        assert_eq!(
            s.offer(&reading(Some(doc(5, 50)), Some("50"))),
            Ok(Offer::Applied)
        );
        assert_eq!(s.in_force.values().read_split_percent.get(), 50);
        assert_eq!(
            s.offer(&reading(Some(doc(5, 50)), Some("0"))),
            Ok(Offer::Applied)
        );
        assert_eq!(s.in_force.values().read_split_percent.get(), 0);
        assert_eq!(s.in_force.doc.generation, 5);
    }
}
