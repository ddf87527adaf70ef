//! Kubernetes Deployments as migration workloads.

use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::WorkloadError;
use crate::machine::WorkloadState;

pub struct DeploymentDriver {
    api: Api<Deployment>,
    namespace: String,
}

impl DeploymentDriver {
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
        }
    }

    /// Replicas asked for and ready. `side` names the spec field for the error message.
    pub async fn observe(
        &self,
        side: &'static str,
        name: &str,
    ) -> Result<WorkloadState, WorkloadError> {
        let deployment = self
            .api
            .get_opt(name)
            .await
            .map_err(|e| self.error("get", "deployments", name, e))?;
        let deployment = deployment.ok_or_else(|| WorkloadError::NotFound {
            side,
            namespace: self.namespace.clone(),
            name: name.into(),
        })?;
        let replicas = deployment.spec.replicas.unwrap_or(1);
        let ready_replicas = deployment
            .status
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        Ok(WorkloadState {
            replicas,
            ready_replicas,
        })
    }

    pub async fn scale(&self, name: &str, replicas: i32) -> Result<(), WorkloadError> {
        let patch = json!({ "spec": { "replicas": replicas } });
        self.api
            .patch_scale(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| self.error("patch", "deployments/scale", name, e))?;
        Ok(())
    }

    /// `resource` is what the call needs `verb` on, named in a permission error.
    fn error(
        &self,
        verb: &'static str,
        resource: &'static str,
        name: &str,
        source: kube::Error,
    ) -> WorkloadError {
        let (namespace, name) = (self.namespace.clone(), name.to_string());
        match &source {
            kube::Error::Api(s) if s.code == 403 => WorkloadError::Forbidden {
                verb,
                resource,
                namespace,
                name,
            },
            kube::Error::Api(s) if s.code == 404 => WorkloadError::NotFound {
                side: "legacy/candidate",
                namespace,
                name,
            },
            _ => WorkloadError::Api {
                verb,
                namespace,
                name,
                source,
            },
        }
    }
}
