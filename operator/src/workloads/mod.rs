//! Workload drivers: observe a workload (exists, replicas, ready) and scale it.
//! A new kind of workload is a new file beside `deployment.rs`.

mod deployment;

pub use deployment::DeploymentDriver;

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("Deployment {namespace}/{name} not found: create it or fix spec.{side}.deployment")]
    NotFound { side: &'static str, namespace: String, name: String },
    #[error("the operator may not {verb} Deployment {namespace}/{name}: grant {verb} on deployments to its ServiceAccount")]
    Forbidden { verb: &'static str, namespace: String, name: String },
    #[error("Deployment {namespace}/{name} could not be {verb}: {source}")]
    Api {
        verb: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl WorkloadError {
    pub fn reason(&self) -> &'static str {
        match self {
            WorkloadError::NotFound { .. } => "WorkloadNotFound",
            WorkloadError::Forbidden { .. } => "WorkloadForbidden",
            WorkloadError::Api { .. } => "WorkloadUnavailable",
        }
    }
}
