//! The SSM Parameter Store flag store: the flag document as parameters under a prefix, for
//! services outside Kubernetes (the AWS estate), plus the plan's own names (see
//! `ficus_flags::ssm`).

use std::collections::BTreeMap;

use aws_sdk_ssm::Client;
use aws_sdk_ssm::types::ParameterType;
use ficus_flags::{FlagRead, ssm, ssm_client};

use super::FlagStoreError;
use crate::aws::AwsError;
use crate::crd::{Flags, SsmStore as SsmSpec};

pub struct SsmStore {
    client: Client,
    spec: SsmSpec,
}

impl SsmStore {
    pub fn new(config: &aws_config::SdkConfig, spec: &SsmSpec) -> Self {
        Self {
            client: Client::new(config),
            spec: spec.clone(),
        }
    }

    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.spec.prefix)
    }

    async fn read_raw(&self) -> Result<BTreeMap<String, String>, FlagStoreError> {
        let names = ssm::all_names(&self.spec.prefix);
        ssm_client::get(&self.client, &self.spec.prefix, names)
            .await
            .map_err(|e| FlagStoreError::Aws(AwsError::from_sdk("ssm:GetParameters", &e)))
    }

    pub async fn read(&self) -> Result<FlagRead, FlagStoreError> {
        let raw = self.read_raw().await?;
        Ok(FlagRead::from_entries(|k| raw.get(k).cloned()))
    }

    /// Writes only the parameters whose value differs (each write is a new parameter version
    /// and a throttled API call), generation last.
    pub async fn write(&self, flags: &Flags) -> Result<(), FlagStoreError> {
        let current = self.read_raw().await?;
        let kind = if self.spec.secure {
            ParameterType::SecureString
        } else {
            ParameterType::String
        };
        for (key, value) in ssm::parameters(flags) {
            if current.get(key) == Some(&value) {
                continue;
            }
            let mut put = self
                .client
                .put_parameter()
                .name(self.name(key))
                .value(value)
                .r#type(kind.clone())
                .overwrite(true);
            if let (true, Some(kms)) = (self.spec.secure, &self.spec.kms_key_id) {
                put = put.key_id(kms);
            }
            put.send()
                .await
                .map_err(|e| FlagStoreError::Aws(AwsError::from_sdk("ssm:PutParameter", &e)))?;
        }
        Ok(())
    }
}
