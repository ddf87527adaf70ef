//! Workload drivers: observe a workload (exists, replicas, ready) and scale it.
//! A new kind of workload is a new file beside `deployment.rs` and `ecs.rs`.

mod deployment;
mod ecs;

pub use deployment::DeploymentDriver;
pub use ecs::EcsDriver;

use crate::crd::Workload;
use crate::machine::WorkloadState;
use crate::reason::{Reason, Reasoned};

/// The drivers a Migration needs; ECS only when a workload names one.
pub struct Workloads {
    pub deployments: DeploymentDriver,
    pub ecs: Option<EcsDriver>,
}

impl Workloads {
    pub async fn observe(
        &self,
        side: &'static str,
        w: &Workload,
    ) -> Result<WorkloadState, WorkloadError> {
        match (&w.deployment, &w.ecs, &self.ecs) {
            (Some(name), _, _) => self.deployments.observe(side, name).await,
            (None, Some(target), Some(ecs)) => ecs.observe(side, target).await,
            _ => Err(WorkloadError::Unnamed { side }),
        }
    }

    pub async fn scale(&self, w: &Workload, replicas: i32) -> Result<(), WorkloadError> {
        match (&w.deployment, &w.ecs, &self.ecs) {
            (Some(name), _, _) => self.deployments.scale(name, replicas).await,
            (None, Some(target), Some(ecs)) => ecs.scale(target, replicas).await,
            _ => Err(WorkloadError::Unnamed {
                side: "legacy/candidate",
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("Deployment {namespace}/{name} not found: create it or fix spec.{side}.deployment")]
    NotFound {
        side: &'static str,
        namespace: String,
        name: String,
    },
    #[error(
        "the operator may not {verb} Deployment {namespace}/{name}: grant {verb} on {resource} to its ServiceAccount"
    )]
    Forbidden {
        verb: &'static str,
        /// `deployments`, or `deployments/scale` for scaling.
        resource: &'static str,
        namespace: String,
        name: String,
    },
    #[error(
        "ECS service {service} in cluster {cluster} not found ({why}): create it or fix spec.{side}.ecs"
    )]
    EcsNotFound {
        side: &'static str,
        cluster: String,
        service: String,
        why: String,
    },
    #[error("spec.{side} names neither a deployment nor an ecs service")]
    Unnamed { side: &'static str },
    #[error("ECS: {0}")]
    Aws(#[source] crate::aws::AwsError),
    #[error("Deployment {namespace}/{name} could not be {verb}: {source}")]
    Api {
        verb: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl Reasoned for WorkloadError {
    fn reason(&self) -> Reason {
        match self {
            WorkloadError::NotFound { .. } => Reason::WorkloadNotFound,
            WorkloadError::Forbidden { .. } => Reason::WorkloadForbidden,
            WorkloadError::Api { .. } => Reason::WorkloadUnavailable,
            WorkloadError::EcsNotFound { .. } | WorkloadError::Unnamed { .. } => {
                Reason::WorkloadNotFound
            }
            WorkloadError::Aws(e) => e.reason(),
        }
    }
}
