//! Reading the document's parameters with the AWS SDK (feature `aws`): one `GetParameters`
//! call with decryption (so SecureString parameters work), keys with the prefix taken off. The
//! operator and every service read the parameters this way; what each makes of the keys and
//! of an error is its own.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ssm::Client;
use aws_sdk_ssm::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::operation::get_parameters::GetParametersError;
use aws_sdk_ssm::types::Parameter;

/// The error of one `GetParameters` call.
pub type GetError = SdkError<GetParametersError>;

/// An SSM client for `config`, with `operation_timeout` (SDK retries included) unless `config`
/// sets one: a poll loop is never held longer than that by one call. The other timeouts of
/// `config` are kept.
pub fn client(config: &SdkConfig, operation_timeout: Duration) -> Client {
    let mut builder = aws_sdk_ssm::config::Builder::from(config);
    let timeouts = config
        .timeout_config()
        .cloned()
        .unwrap_or_else(TimeoutConfig::disabled);
    if timeouts.operation_timeout().is_none() {
        builder = builder.timeout_config(
            timeouts
                .to_builder()
                .operation_timeout(operation_timeout)
                .build(),
        );
    }
    Client::from_conf(builder.build())
}

/// The parameters `names` (full names under `prefix`) that exist, by key: the name without
/// `prefix`. A name that does not exist is left out (SSM lists it as invalid), so no parameter
/// at all is an empty map.
pub async fn get(
    client: &Client,
    prefix: &str,
    names: Vec<String>,
) -> Result<BTreeMap<String, String>, GetError> {
    let out = client
        .get_parameters()
        .set_names(Some(names))
        .with_decryption(true)
        .send()
        .await?;
    Ok(by_key(prefix, out.parameters()))
}

/// `parameters` (as `GetParameters` or `GetParametersByPath` return them) by key: the name
/// without `prefix`; parameters outside `prefix` are left out.
pub fn by_key(prefix: &str, parameters: &[Parameter]) -> BTreeMap<String, String> {
    parameters
        .iter()
        .filter_map(|p| {
            Some((
                p.name()?.strip_prefix(prefix)?.to_owned(),
                p.value()?.to_owned(),
            ))
        })
        .collect()
}

/// `code: message` of a failed call as AWS answered it, or the SDK's own account of the
/// failure (no connection, timeout) when there was no answer.
pub fn describe(err: &GetError) -> String {
    match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => DisplayErrorContext(err).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameter(name: &str, value: &str) -> Parameter {
        Parameter::builder().name(name).value(value).build()
    }

    #[test]
    fn parameters_are_keyed_by_their_name_under_the_prefix_and_others_are_left_out() {
        let read = by_key(
            "/hse/chat/",
            &[
                parameter("/hse/chat/generation", "7"),
                parameter("/hse/chat/write_primary", "new"),
                parameter("/hse/devices/generation", "2"),
            ],
        );
        assert_eq!(
            read.into_iter().collect::<Vec<_>>(),
            [
                ("generation".to_owned(), "7".to_owned()),
                ("write_primary".to_owned(), "new".to_owned())
            ]
        );
    }
}
