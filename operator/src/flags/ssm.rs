//! The SSM Parameter Store flag store: the flag document as parameters under a prefix, for
//! services outside Kubernetes (the AWS estate), plus the plan's own names:
//! `traffic-split-percent` (= `read_split_percent`) and `use-new-system` (`true` while any user
//! is on the new system).

use std::collections::BTreeMap;

use aws_sdk_ssm::Client;
use aws_sdk_ssm::types::ParameterType;

use super::{FlagStoreError, from_entries, keys, to_entries};
use crate::aws::AwsError;
use crate::crd::{AppliedFlags, SsmStore as SsmSpec};

pub const TRAFFIC_SPLIT_PERCENT: &str = "traffic-split-percent";
pub const USE_NEW_SYSTEM: &str = "use-new-system";

pub struct SsmStore {
    client: Client,
    spec: SsmSpec,
}

/// Every parameter of the document, `generation` last: a reader that sees the new generation
/// sees the values that go with it.
pub fn parameters(flags: &AppliedFlags) -> Vec<(&'static str, String)> {
    let mut entries: Vec<(&'static str, String)> = to_entries(flags)
        .into_iter()
        .filter(|(k, _)| *k != keys::GENERATION)
        .collect();
    entries.push((
        TRAFFIC_SPLIT_PERCENT,
        flags.values.read_split_percent.to_string(),
    ));
    entries.push((
        USE_NEW_SYSTEM,
        (flags.values.read_split_percent > 0).to_string(),
    ));
    entries.push((keys::GENERATION, flags.generation.to_string()));
    entries
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
        let names: Vec<String> = parameters(&AppliedFlags {
            generation: 0,
            values: Default::default(),
        })
        .iter()
        .map(|(k, _)| self.name(k))
        .collect();
        let out = self
            .client
            .get_parameters()
            .set_names(Some(names))
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| FlagStoreError::Aws(AwsError::from_sdk("ssm:GetParameters", &e)))?;
        Ok(out
            .parameters()
            .iter()
            .filter_map(|p| {
                Some((
                    p.name()?.strip_prefix(&self.spec.prefix)?.to_string(),
                    p.value()?.to_string(),
                ))
            })
            .collect())
    }

    pub async fn read(&self) -> Result<Option<AppliedFlags>, FlagStoreError> {
        let raw = self.read_raw().await?;
        Ok(from_entries(|k| raw.get(k).cloned()))
    }

    /// Writes only the parameters whose value differs (each write is a new parameter version
    /// and a throttled API call), generation last.
    pub async fn write(&self, flags: &AppliedFlags) -> Result<(), FlagStoreError> {
        let current = self.read_raw().await?;
        let kind = if self.spec.secure {
            ParameterType::SecureString
        } else {
            ParameterType::String
        };
        for (key, value) in parameters(flags) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DualWrite, FlagValues, WritePrimary};

    #[test]
    fn the_plans_parameters_mirror_the_split_and_generation_comes_last() {
        let flags = AppliedFlags {
            generation: 4,
            values: FlagValues {
                write_primary: WritePrimary::Legacy,
                dual_write: DualWrite::Sync,
                shadow_read_percent: 10,
                read_split_percent: 25,
            },
        };
        let p = parameters(&flags);
        assert_eq!(p.last(), Some(&("generation", "4".to_string())));
        let map: BTreeMap<_, _> = p.into_iter().collect();
        assert_eq!(map[TRAFFIC_SPLIT_PERCENT], "25");
        assert_eq!(map[USE_NEW_SYSTEM], "true");
        let safe = AppliedFlags {
            generation: 5,
            values: FlagValues {
                read_split_percent: 0,
                ..flags.values
            },
        };
        assert_eq!(
            parameters(&safe).into_iter().collect::<BTreeMap<_, _>>()[USE_NEW_SYSTEM],
            "false"
        );
    }
}
