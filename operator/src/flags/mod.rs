//! Flag stores: where the services read the flag document (its contract is the `ficus-flags`
//! crate, which the services use too).
//!
//! Each store reads the document it holds (to learn the generation and skip no-op writes) and
//! writes a complete document. A new store kind is a new file beside `configmap.rs`.

mod configmap;
mod ssm;

pub use configmap::ConfigMapStore;
pub use ssm::SsmStore;

use crate::reason::{Reason, Reasoned};
use ficus_flags::FlagRead;

use crate::crd::Flags;

#[derive(Debug, thiserror::Error)]
pub enum FlagStoreError {
    #[error("SSM flag store: {0}")]
    Aws(#[source] crate::aws::AwsError),
    #[error(
        "the operator may not {verb} ConfigMap {namespace}/{name}: grant get, create and patch on configmaps in that namespace to the operator's ServiceAccount"
    )]
    Forbidden {
        verb: &'static str,
        namespace: String,
        name: String,
    },
    #[error("flag store ConfigMap {namespace}/{name} could not be {verb}: {source}")]
    Api {
        verb: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl Reasoned for FlagStoreError {
    /// Condition/Event reason.
    fn reason(&self) -> Reason {
        match self {
            FlagStoreError::Forbidden { .. } => Reason::FlagStoreForbidden,
            FlagStoreError::Api { .. } => Reason::FlagStoreUnavailable,
            FlagStoreError::Aws(e) => e.reason(),
        }
    }
}

/// The configured stores of one Migration, written together.
pub enum Store {
    /// Boxed: a ConfigMap store holds its API handle and object, several times an SSM store.
    ConfigMap(Box<ConfigMapStore>),
    Ssm(SsmStore),
}

impl Store {
    pub async fn read(&self) -> Result<FlagRead, FlagStoreError> {
        match self {
            Store::ConfigMap(s) => s.read().await,
            Store::Ssm(s) => s.read().await,
        }
    }

    pub async fn write(&self, flags: &Flags) -> Result<(), FlagStoreError> {
        match self {
            Store::ConfigMap(s) => s.write(flags).await,
            Store::Ssm(s) => s.write(flags).await,
        }
    }
}
