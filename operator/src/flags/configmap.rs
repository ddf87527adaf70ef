//! The ConfigMap flag store: services watch it through the API, so a change applies at once.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use ficus_flags::FlagRead;

use super::FlagStoreError;
use crate::crd::Flags;

pub const FIELD_MANAGER: &str = "ficus-operator";

pub struct ConfigMapStore {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
    migration: String,
}

impl ConfigMapStore {
    pub fn new(client: Client, namespace: &str, name: &str, migration: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
            name: name.into(),
            migration: migration.into(),
        }
    }

    pub async fn read(&self) -> Result<FlagRead, FlagStoreError> {
        let cm = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error("read", e))?;
        let data = cm.and_then(|cm| cm.data).unwrap_or_default();
        Ok(FlagRead::from_entries(|k| data.get(k).cloned()))
    }

    /// Server-side apply of the whole document: creates the ConfigMap when it is missing and
    /// leaves keys other tools own alone.
    pub async fn write(&self, flags: &Flags) -> Result<(), FlagStoreError> {
        let data: BTreeMap<&str, String> = flags.to_entries().into_iter().collect();
        let body = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "labels": { "app.kubernetes.io/managed-by": "ficus" },
                "annotations": { "ficus.dev/migration": self.migration },
            },
            "data": data,
        });
        self.api
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
            .map_err(|e| self.error("write", e))?;
        Ok(())
    }

    fn error(&self, verb: &'static str, source: kube::Error) -> FlagStoreError {
        let (namespace, name) = (self.namespace.clone(), self.name.clone());
        match &source {
            kube::Error::Api(status) if status.code == 403 => FlagStoreError::Forbidden {
                verb,
                namespace,
                name,
            },
            _ => FlagStoreError::Api {
                verb,
                namespace,
                name,
                source,
            },
        }
    }
}
