use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::KubectlOutput;

/// Everything that can go wrong in the test environment (control plane, Prometheus, ...).
///
/// `Clone` because a shared server caches its start result for every test in the
/// binary; the non-cloneable sources are therefore kept behind an `Arc`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HarnessError {
    /// A binary the harness needs is not installed. Tests skip on this locally and fail under CI.
    #[error("{component} not available: {reason}")]
    Missing { component: String, reason: String },

    #[error("generating the test certificates failed: {0}")]
    Certs(#[from] rcgen::Error),

    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },

    /// A server process exited or never became ready. `tail` holds the end of its log.
    #[error(
        "{component} did not start: {reason}\n--- last lines of {} ---\n{tail}",
        log.display()
    )]
    Startup {
        component: &'static str,
        reason: String,
        log: PathBuf,
        tail: String,
    },

    /// A `kubectl` or `helm` run that a setup step needs exited non-zero; its output says why.
    #[error("{0}")]
    Command(Box<KubectlOutput>),

    /// An HTTP request to a test component got no answer (e.g. connection refused: stopped).
    #[error("GET {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: Arc<std::io::Error>,
    },

    /// A test component answered, but not with what the harness expects.
    #[error("GET {url}: {reason}")]
    Response { url: String, reason: String },

    /// A condition the harness polls for did not hold in time.
    #[error("timed out after {after:?} waiting for {what}; last seen: {last}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },

    /// A statement against a test database failed (e.g. connection refused: stopped).
    #[error("{action} on {url}: {source}")]
    Database {
        action: String,
        url: String,
        #[source]
        source: Arc<sqlx::Error>,
    },

    /// An API of a test component refused a request.
    #[error("{url}: HTTP {status}: {body}")]
    Api {
        url: String,
        status: u16,
        body: String,
    },

    /// A set-up step of a test stack failed (creating an object, seeding data, ...).
    #[error("{what}: {message}")]
    Setup { what: &'static str, message: String },

    #[error("building a kube client from {}: {source}", kubeconfig.display())]
    Client {
        kubeconfig: PathBuf,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

impl HarnessError {
    /// A failed set-up step `what`, with the error's message.
    pub fn setup(what: &'static str, error: impl std::fmt::Display) -> Self {
        Self::Setup {
            what,
            message: error.to_string(),
        }
    }

    /// Helper for `map_err`: an I/O error while doing `action` on `path`.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source: Arc::new(source),
        }
    }

    /// True when a request found nothing listening (the component is stopped or not up yet).
    pub fn is_connection_refused(&self) -> bool {
        matches!(self, Self::Request { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused)
    }

    /// True when the error only means a component is not installed here.
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Missing { .. })
    }
}
