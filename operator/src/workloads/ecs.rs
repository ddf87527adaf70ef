//! AWS ECS services as migration workloads: desired/running counts as observations, scaling by
//! `UpdateService`. "Stable" is an observation (running == desired, one deployment), never a
//! blocking wait.

use aws_sdk_ecs::Client;

use super::WorkloadError;
use crate::aws::AwsError;
use crate::crd::EcsService;
use crate::machine::WorkloadState;

pub struct EcsDriver {
    client: Client,
}

impl EcsDriver {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: Client::new(config),
        }
    }

    pub async fn observe(
        &self,
        side: &'static str,
        target: &EcsService,
    ) -> Result<WorkloadState, WorkloadError> {
        let out = self
            .client
            .describe_services()
            .cluster(&target.cluster)
            .services(&target.service)
            .send()
            .await
            .map_err(|e| {
                not_found_or(side, target, AwsError::from_sdk("ecs:DescribeServices", &e))
            })?;
        let Some(service) = out
            .services()
            .iter()
            .find(|s| s.status() != Some("INACTIVE"))
        else {
            let why = out
                .failures()
                .first()
                .and_then(|f| f.reason())
                .unwrap_or("MISSING");
            return Err(WorkloadError::EcsNotFound {
                side,
                cluster: target.cluster.clone(),
                service: target.service.clone(),
                why: why.into(),
            });
        };
        let stable =
            service.running_count() == service.desired_count() && service.deployments().len() <= 1;
        // Ready replicas count only once the service is stable: a rollout in progress is not ready.
        let ready = if stable {
            service.running_count()
        } else {
            service
                .running_count()
                .min(service.desired_count() - 1)
                .max(0)
        };
        Ok(WorkloadState {
            replicas: service.desired_count(),
            ready_replicas: ready,
        })
    }

    pub async fn scale(&self, target: &EcsService, desired: i32) -> Result<(), WorkloadError> {
        self.client
            .update_service()
            .cluster(&target.cluster)
            .service(&target.service)
            .desired_count(desired)
            .send()
            .await
            .map_err(|e| {
                not_found_or(
                    "legacy/candidate",
                    target,
                    AwsError::from_sdk("ecs:UpdateService", &e),
                )
            })?;
        Ok(())
    }
}

fn not_found_or(side: &'static str, target: &EcsService, e: AwsError) -> WorkloadError {
    match e {
        AwsError::NotFound { message, .. } => WorkloadError::EcsNotFound {
            side,
            cluster: target.cluster.clone(),
            service: target.service.clone(),
            why: message,
        },
        other => WorkloadError::Aws(other),
    }
}
