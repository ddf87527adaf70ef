//! The flag reader: which store is primary, dual-write mode, shadow reads and the read split
//! (DESIGN §3), as written by the Ficus operator.
//!
//! # Sources
//!
//! * [`FlagSource::Static`]: fixed flags (tests, local runs).
//! * [`FlagSource::File`]: a file of `key=value` lines, the same keys and values as the
//!   ConfigMap's `data`. Blank lines and lines starting with `#` are ignored; whitespace around
//!   keys and values is trimmed; keys other than the five flag keys are ignored (other tools may
//!   own them); a line without `=` or a key given twice rejects the whole document:
//!
//!   ```text
//!   # written by the Ficus operator
//!   generation=7
//!   write_primary=new
//!   dual_write=async
//!   shadow_read_percent=10
//!   read_split_percent=100
//!   ```
//!
//!   The file's parent directory is watched (editors and kubelet replace files by renaming, which
//!   a watch on the file itself would lose), and the file is re-read every 5 s in case an event
//!   was missed. A missing directory is an error at start; a missing file is not.
//! * [`FlagSource::ConfigMap`]: one ConfigMap watched through the Kubernetes API, so a change
//!   applies within a watch round trip instead of after kubelet's volume sync (up to a minute).
//! * [`FlagSource::Ssm`]: for services outside Kubernetes, the parameters the operator keeps in
//!   AWS SSM Parameter Store under a prefix (`<prefix>generation`, `<prefix>write_primary`, ...,
//!   docs/aws.md), read with one `GetParameters` (with decryption) every poll interval (5 s by
//!   default at the CLI). Credentials, region and endpoint come from the AWS SDK's default chain:
//!   environment (`AWS_REGION`, `AWS_ENDPOINT_URL_SSM` / `AWS_ENDPOINT_URL`), profile, ECS task
//!   role, instance profile; [`FlagWatcher::start_with_aws_config`] takes an explicit
//!   configuration instead. The service needs `ssm:GetParameters` on `<prefix>*` (and
//!   `kms:Decrypt` for SecureString parameters). A failed poll (throttling, network) is logged
//!   and retried on the next tick with the flags in force unchanged. The operator writes
//!   `generation` last; values that change without a generation bump are applied only when a
//!   second poll reads them again, so a write caught half way does not apply.
//!
//! # Rules
//!
//! * [`FlagWatcher::start`] loads the document once before returning. No document yet (missing
//!   file or ConfigMap, or one without any of the flag keys) means [`Flags::default`], the state
//!   before any migration. An invalid
//!   document at start is an error: running with defaults could write to the wrong primary.
//! * Later documents are checked with [`Flags::parse`] (strict) and swapped in whole through a
//!   [`tokio::sync::watch`] channel, so a reader never sees half a change.
//! * An invalid document is rejected with a warning naming the key and value; the last good
//!   flags stay in force. So does a document whose generation is lower than the applied one
//!   (the operator only increases it), and a document that disappears.
//! * The `chat_flags_generation` gauge handed to the watcher always shows the applied generation.

mod apply;
mod configmap;
mod file;
mod ssm;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use apply::Applier;
pub use ssm::{DEFAULT_POLL_INTERVAL as DEFAULT_SSM_POLL_INTERVAL, parse_poll_interval};

/// Flag document keys (identical to the operator's `flags::keys`).
pub mod keys {
    pub const GENERATION: &str = "generation";
    pub const WRITE_PRIMARY: &str = "write_primary";
    pub const DUAL_WRITE: &str = "dual_write";
    pub const SHADOW_READ_PERCENT: &str = "shadow_read_percent";
    pub const READ_SPLIT_PERCENT: &str = "read_split_percent";
    /// All keys a document must carry, in the order they are checked.
    pub const ALL: [&str; 5] = [
        GENERATION,
        WRITE_PRIMARY,
        DUAL_WRITE,
        SHADOW_READ_PERCENT,
        READ_SPLIT_PERCENT,
    ];
}

/// One of the two stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreSide {
    Legacy,
    New,
}

impl StoreSide {
    /// The document value (`legacy` / `new`), also usable as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreSide::Legacy => "legacy",
            StoreSide::New => "new",
        }
    }
}

impl fmt::Display for StoreSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether (and how) writes also go to the store that is not primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DualWrite {
    Off,
    Sync,
    Async,
}

impl DualWrite {
    /// The document value (`off` / `sync` / `async`).
    pub fn as_str(self) -> &'static str {
        match self {
            DualWrite::Off => "off",
            DualWrite::Sync => "sync",
            DualWrite::Async => "async",
        }
    }
}

impl fmt::Display for DualWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One complete flag document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flags {
    pub generation: i64,
    pub write_primary: StoreSide,
    pub dual_write: DualWrite,
    /// 0..=100
    pub shadow_read_percent: u8,
    /// 0..=100
    pub read_split_percent: u8,
}

impl Default for Flags {
    /// Before any migration: legacy only, nothing mirrored, nothing split.
    fn default() -> Self {
        Flags {
            generation: 0,
            write_primary: StoreSide::Legacy,
            dual_write: DualWrite::Off,
            shadow_read_percent: 0,
            read_split_percent: 0,
        }
    }
}

impl Flags {
    /// Reads a document strictly: every key present and valid (values are trimmed; keys and
    /// values are case-sensitive, as the operator writes them). The error names the first bad
    /// key and its value.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Flags, FlagError> {
        let value = |key: &'static str| get(key).ok_or(FlagError::MissingKey { key });
        let invalid =
            |key: &'static str, raw: &str, expected: &'static str| FlagError::InvalidValue {
                key,
                value: raw.to_owned(),
                expected,
            };

        let raw = value(keys::GENERATION)?;
        let generation = parse_unsigned(raw.trim())
            .and_then(|n| i64::try_from(n).ok())
            .ok_or_else(|| invalid(keys::GENERATION, &raw, "a non-negative integer"))?;

        let raw = value(keys::WRITE_PRIMARY)?;
        let write_primary = match raw.trim() {
            "legacy" => StoreSide::Legacy,
            "new" => StoreSide::New,
            _ => return Err(invalid(keys::WRITE_PRIMARY, &raw, "`legacy` or `new`")),
        };

        let raw = value(keys::DUAL_WRITE)?;
        let dual_write = match raw.trim() {
            "off" => DualWrite::Off,
            "sync" => DualWrite::Sync,
            "async" => DualWrite::Async,
            _ => return Err(invalid(keys::DUAL_WRITE, &raw, "`off`, `sync` or `async`")),
        };

        let percent = |key: &'static str| -> Result<u8, FlagError> {
            let raw = value(key)?;
            parse_unsigned(raw.trim())
                .filter(|p| *p <= 100)
                .map(|p| p as u8)
                .ok_or_else(|| invalid(key, &raw, "an integer from 0 to 100"))
        };
        let shadow_read_percent = percent(keys::SHADOW_READ_PERCENT)?;
        let read_split_percent = percent(keys::READ_SPLIT_PERCENT)?;

        Ok(Flags {
            generation,
            write_primary,
            dual_write,
            shadow_read_percent,
            read_split_percent,
        })
    }

    /// The document as key/value pairs (the format [`Flags::parse`] reads).
    pub fn to_entries(&self) -> [(&'static str, String); 5] {
        [
            (keys::GENERATION, self.generation.to_string()),
            (keys::WRITE_PRIMARY, self.write_primary.as_str().to_owned()),
            (keys::DUAL_WRITE, self.dual_write.as_str().to_owned()),
            (
                keys::SHADOW_READ_PERCENT,
                self.shadow_read_percent.to_string(),
            ),
            (
                keys::READ_SPLIT_PERCENT,
                self.read_split_percent.to_string(),
            ),
        ]
    }

    /// The checks [`Flags::parse`] makes that the types alone do not (for `Static` flags).
    fn validate(&self) -> Result<(), FlagError> {
        if self.generation < 0 {
            return Err(FlagError::InvalidValue {
                key: keys::GENERATION,
                value: self.generation.to_string(),
                expected: "a non-negative integer",
            });
        }
        for (key, p) in [
            (keys::SHADOW_READ_PERCENT, self.shadow_read_percent),
            (keys::READ_SPLIT_PERCENT, self.read_split_percent),
        ] {
            if p > 100 {
                return Err(FlagError::InvalidValue {
                    key,
                    value: p.to_string(),
                    expected: "an integer from 0 to 100",
                });
            }
        }
        Ok(())
    }
}

/// Digits only: `str::parse` would also take `+5`, which the operator never writes.
fn parse_unsigned(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("flag document has no `{key}` key")]
    MissingKey { key: &'static str },
    #[error("flag `{key}` has invalid value {value:?}: expected {expected}")]
    InvalidValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("flag document line {line} is not `key=value`: {content:?}")]
    Syntax { line: usize, content: String },
    #[error("flag document sets `{key}` twice (lines {first} and {second})")]
    DuplicateKey {
        key: String,
        first: usize,
        second: usize,
    },
    /// A document rejected at start, with where it came from.
    #[error("flag document {origin} rejected: {source}")]
    Rejected {
        origin: String,
        #[source]
        source: Box<FlagError>,
    },
    #[error("flag file {path} could not be read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("flag file directory {dir} could not be watched: {source}")]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("no Kubernetes client for the flag ConfigMap (in-cluster config or KUBECONFIG): {0}")]
    Client(#[source] kube::Error),
    #[error("flag ConfigMap {namespace}/{name} could not be read: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "SSM flag prefix {0:?} must be a parameter path that starts and ends with '/', e.g. /hse/chat/"
    )]
    SsmPrefix(String),
    #[error("flag parameters {prefix}* could not be read from SSM Parameter Store: {message}")]
    Ssm { prefix: String, message: String },
}

/// Where the flags come from.
#[derive(Clone, Debug)]
pub enum FlagSource {
    Static(Flags),
    File(PathBuf),
    ConfigMap {
        namespace: String,
        name: String,
    },
    /// SSM Parameter Store parameters under `prefix` (e.g. `/hse/chat/`), read every
    /// `poll_interval` (at least 50 ms).
    Ssm {
        prefix: String,
        poll_interval: Duration,
    },
}

/// What a source read: the document's entries, or that there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Document {
    Missing,
    Entries(BTreeMap<String, String>),
}

/// The applied flags; clones share one channel. The background task that follows the source
/// runs as long as any `FlagWatcher` clone or [`subscribe`](Self::subscribe)d receiver lives.
#[derive(Clone, Debug)]
pub struct FlagWatcher {
    rx: watch::Receiver<Flags>,
}

impl FlagWatcher {
    /// Loads once (for File/ConfigMap: a missing document means [`Flags::default`]), then keeps
    /// following changes in a background task; sets `generation_gauge` to the applied generation.
    ///
    /// A ConfigMap source uses `kube::Client::try_default()` (in-cluster or KUBECONFIG); an SSM
    /// source the AWS SDK's default configuration (`aws_config::defaults`).
    pub async fn start(
        source: FlagSource,
        generation_gauge: Gauge,
    ) -> Result<FlagWatcher, FlagError> {
        match source {
            FlagSource::ConfigMap { .. } => {
                let client = kube::Client::try_default()
                    .await
                    .map_err(FlagError::Client)?;
                Self::start_with_client(source, client, generation_gauge).await
            }
            other => Self::start_inner(other, None, None, generation_gauge).await,
        }
    }

    /// [`start`](Self::start) with a given client (used for ConfigMap sources; others ignore it).
    pub async fn start_with_client(
        source: FlagSource,
        client: kube::Client,
        generation_gauge: Gauge,
    ) -> Result<FlagWatcher, FlagError> {
        Self::start_inner(source, Some(client), None, generation_gauge).await
    }

    /// [`start`](Self::start) with a given AWS configuration (used for SSM sources; others ignore
    /// it): a region, credentials or endpoint other than the default chain's. An
    /// `endpoint_url` set on the loader (`aws_config::defaults(..).endpoint_url(..)`) wins over
    /// `AWS_ENDPOINT_URL_SSM` / `AWS_ENDPOINT_URL` and the profile.
    pub async fn start_with_aws_config(
        source: FlagSource,
        config: &aws_config::SdkConfig,
        generation_gauge: Gauge,
    ) -> Result<FlagWatcher, FlagError> {
        Self::start_inner(source, None, Some(config), generation_gauge).await
    }

    async fn start_inner(
        source: FlagSource,
        client: Option<kube::Client>,
        aws: Option<&aws_config::SdkConfig>,
        gauge: Gauge,
    ) -> Result<FlagWatcher, FlagError> {
        match source {
            FlagSource::Static(flags) => {
                flags.validate()?;
                let (applier, rx) = Applier::new("static flags".into(), flags, gauge);
                // Keep the sender alive, so subscribers wait on `changed()` instead of seeing
                // a closed channel.
                tokio::spawn(async move { applier.closed().await });
                Ok(FlagWatcher { rx })
            }
            FlagSource::File(path) => {
                let rx = file::start(path, gauge).await?;
                Ok(FlagWatcher { rx })
            }
            FlagSource::ConfigMap { namespace, name } => {
                // `start` always passes one; a missing client is the in-cluster default.
                let client = match client {
                    Some(c) => c,
                    None => kube::Client::try_default()
                        .await
                        .map_err(FlagError::Client)?,
                };
                let rx = configmap::start(client, namespace, name, gauge).await?;
                Ok(FlagWatcher { rx })
            }
            FlagSource::Ssm {
                prefix,
                poll_interval,
            } => {
                // A bad prefix fails before any AWS configuration is loaded.
                ssm::check_prefix(&prefix)?;
                let client = match aws {
                    Some(config) => ssm::client(config),
                    None => ssm::client(&ssm::default_config().await),
                };
                let rx = ssm::start(client, prefix, poll_interval, gauge).await?;
                Ok(FlagWatcher { rx })
            }
        }
    }

    /// The flags in force now (a copy, under a short read lock).
    pub fn current(&self) -> Flags {
        *self.rx.borrow()
    }

    /// A receiver that sees every applied change (`changed()`), starting from the current flags.
    pub fn subscribe(&self) -> watch::Receiver<Flags> {
        let mut rx = self.rx.clone();
        rx.mark_unchanged();
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn entries_round_trip() {
        let flags = Flags {
            generation: 9,
            write_primary: StoreSide::New,
            dual_write: DualWrite::Async,
            shadow_read_percent: 5,
            read_split_percent: 100,
        };
        let map: BTreeMap<String, String> = flags
            .to_entries()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(Flags::parse(|k| map.get(k).cloned()).expect("valid"), flags);
    }

    #[test]
    fn values_are_trimmed_but_case_sensitive() {
        let base = [
            ("generation", " 3\n"),
            ("write_primary", "new "),
            ("dual_write", "\tsync"),
            ("shadow_read_percent", "0"),
            ("read_split_percent", "100\n"),
        ];
        let flags = Flags::parse(doc(&base)).expect("trimmed values are valid");
        assert_eq!(
            (flags.generation, flags.write_primary, flags.dual_write),
            (3, StoreSide::New, DualWrite::Sync)
        );
        let mut upper = base;
        upper[1] = ("write_primary", "New");
        assert!(matches!(
            Flags::parse(doc(&upper)),
            Err(FlagError::InvalidValue {
                key: "write_primary",
                ..
            })
        ));
    }

    #[test]
    fn static_flags_are_validated() {
        assert!(Flags::default().validate().is_ok());
        let bad = Flags {
            read_split_percent: 101,
            ..Flags::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(FlagError::InvalidValue {
                key: "read_split_percent",
                ..
            })
        ));
        let bad = Flags {
            generation: -1,
            ..Flags::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(FlagError::InvalidValue {
                key: "generation",
                ..
            })
        ));
    }
}
