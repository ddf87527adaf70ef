//! AWS access shared by the SSM flag store and the ECS workload driver: SDK configuration from
//! the default provider chain, and errors turned into something a human can act on.

use crate::reason::{Reason, Reasoned};
use std::collections::HashMap;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ssm::config::http::HttpResponse;
use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use tokio::sync::Mutex;

use crate::crd::AwsSpec;

/// Operator-wide defaults (`--aws-region`, `--aws-endpoint-url`); a Migration's `spec.aws`
/// overrides them.
#[derive(Clone, Debug, Default)]
pub struct AwsDefaults {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

/// A configuration's (region, endpoint URL); `None` is the default chain's.
type ConfigKey = (Option<String>, Option<String>);

/// SDK configurations by (region, endpoint), loaded once: credentials come from the default
/// chain (IRSA / pod identity in-cluster, environment variables, profiles).
#[derive(Default)]
pub struct AwsConfigs {
    defaults: AwsDefaults,
    loaded: Mutex<HashMap<ConfigKey, SdkConfig>>,
}

impl AwsConfigs {
    pub fn new(defaults: AwsDefaults) -> Self {
        Self {
            defaults,
            loaded: Mutex::default(),
        }
    }

    pub async fn config(&self, spec: Option<&AwsSpec>) -> SdkConfig {
        let region = spec
            .and_then(|a| a.region.clone())
            .or_else(|| self.defaults.region.clone());
        let endpoint = spec
            .and_then(|a| a.endpoint_url.clone())
            .or_else(|| self.defaults.endpoint_url.clone());
        let key = (region.clone(), endpoint.clone());
        let mut loaded = self.loaded.lock().await;
        if let Some(config) = loaded.get(&key) {
            return config.clone();
        }
        // Throttling and transient errors are retried by the SDK (standard mode, jittered
        // backoff); a call never blocks a reconcile for long.
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(4))
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(Duration::from_secs(20))
                    .connect_timeout(Duration::from_secs(5))
                    .build(),
            );
        if let Some(region) = region {
            loader = loader.region(Region::new(region));
        }
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let config = loader.load().await;
        loaded.insert(key, config.clone());
        config
    }
}

/// A failed AWS call, classified for conditions and Events.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error(
        "AWS denied {action}: {message}. Allow {action} for the operator's IAM role (see docs/aws.md)"
    )]
    Denied {
        action: &'static str,
        message: String,
    },
    #[error("AWS could not find what {action} asked for: {message}")]
    NotFound {
        action: &'static str,
        message: String,
    },
    #[error("AWS call {action} failed: {message}")]
    Failed {
        action: &'static str,
        message: String,
    },
}

impl Reasoned for AwsError {
    fn reason(&self) -> Reason {
        match self {
            AwsError::Denied { .. } => Reason::AwsAccessDenied,
            AwsError::NotFound { .. } => Reason::AwsResourceNotFound,
            AwsError::Failed { .. } => Reason::AwsUnavailable,
        }
    }
}

impl AwsError {
    /// Classifies an SDK error by its service error code, else by its HTTP status (an error
    /// body the SDK cannot parse still says 403).
    pub fn from_sdk<E>(action: &'static str, err: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let code = err.code().unwrap_or_default();
        let message = err
            .message()
            .map(String::from)
            .unwrap_or_else(|| crate::error_chain(err));
        let message = if code.is_empty() {
            message
        } else {
            format!("{code}: {message}")
        };
        if code.is_empty()
            && let Some(raw) = err.raw_response()
            && raw.status().as_u16() == 403
        {
            let body = raw
                .body()
                .bytes()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let message = between(&body, "<Message>", "</Message>")
                .unwrap_or("HTTP 403 Forbidden")
                .to_string();
            return AwsError::Denied { action, message };
        }
        match code {
            c if c.contains("AccessDenied")
                || c == "UnauthorizedOperation"
                || c == "UnrecognizedClientException"
                || c == "InvalidClientTokenId" =>
            {
                AwsError::Denied { action, message }
            }
            "ClusterNotFoundException" | "ServiceNotFoundException" | "ParameterNotFound" => {
                AwsError::NotFound { action, message }
            }
            _ => AwsError::Failed { action, message },
        }
    }
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}
