//! The flag reader: which store is primary, dual-write mode, shadow reads and the read split,
//! as written by the Ficus operator. The document itself (keys, values, strict parse, SSM
//! names) is the `ficus-flags` contract crate, shared with the operator.
//!
//! # Sources
//!
//! * [`FlagSource::Static`]: fixed flags (tests, local runs).
//! * [`FlagSource::File`]: a file of `key=value` lines, the same keys and values as the
//!   ConfigMap's `data`. Blank lines and lines starting with `#` are ignored; whitespace around
//!   keys and values is trimmed; keys other than the six flag keys are ignored (other tools may
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
//! * Later documents are checked with `Flags::parse` (strict) and swapped in whole through a
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
use std::path::PathBuf;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use apply::Applier;
pub use ssm::{DEFAULT_POLL_INTERVAL as DEFAULT_SSM_POLL_INTERVAL, parse_poll_interval};

pub use ficus_flags::{DualWrite, FlagValues, Flags, Percent, ShadowCompare, Side, keys};

#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// A missing key or an invalid value (the contract's strict parse).
    #[error(transparent)]
    Document(#[from] ficus_flags::FlagError),
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
    #[error(transparent)]
    SsmPrefix(#[from] ficus_flags::ssm::PrefixError),
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
