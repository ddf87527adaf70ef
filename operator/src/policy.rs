//! What a Migration may make the operator do with the operator's own identity, set by the
//! cluster admin in a policy file (`--policy-file`, the chart's `operator.policy`).
//!
//! Whoever may create a Migration in a namespace can otherwise make the operator send requests
//! to any Prometheus URL, write any SSM prefix, scale any ECS service, sign AWS requests for any
//! endpoint, and start Jobs running any image with any Secret of the namespace. With a policy
//! file each of these is an allowlist per namespace (`namespaces.<ns>`, else `default`); an
//! empty or absent list allows nothing of its kind. A Migration that asks for more is refused
//! before anything is called: Degraded with reason `PolicyRefused`, naming the field, the value
//! and the policy entry that would allow it. Without a policy file everything is allowed (the
//! operator says so when it starts).
//!
//! The check is a pure function of (policy, namespace, spec): the reconciler runs it first.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::crd::MigrationSpec;

#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Rules for namespaces not listed under `namespaces`.
    #[serde(default)]
    pub default: NamespaceRules,
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceRules>,
    /// Honour a Migration's `spec.aws.endpointUrl`. Off: AWS requests go only where the
    /// operator's own configuration (`--aws-endpoint-url`, else the SDK's default) says.
    #[serde(default)]
    pub allow_aws_endpoint_override: bool,
    /// The ServiceAccount every backfill, validate and rollback Job runs as, in the Migration's
    /// namespace. Without it the Jobs run as the namespace's `default` ServiceAccount; either
    /// way no API token is mounted (the Jobs need none).
    #[serde(default)]
    pub job_service_account: Option<String>,
}

#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceRules {
    /// `analysis.prometheus.url`: the same scheme, host and port as one of these, and a path
    /// under its path.
    #[serde(default)]
    pub prometheus_urls: Vec<String>,
    /// `flags.ssm.prefix`: under one of these prefixes (`/chat/` allows `/chat/` and
    /// `/chat/eu/`).
    #[serde(default)]
    pub ssm_prefixes: Vec<String>,
    /// `legacy.ecs` and `candidate.ecs` as `cluster/service`; a part ending in `*` matches any
    /// name starting with what precedes it.
    #[serde(default)]
    pub ecs_services: Vec<String>,
    /// `backfill.image` and `cutover.rollbackJob.image`: starting with one of these (a
    /// repository `ghcr.io/acme/chat-service:` or `ghcr.io/acme/chat-service@`, or an exact image).
    #[serde(default)]
    pub job_images: Vec<String>,
    /// `backfill.secretName` and `cutover.rollbackJob.secretName`: one of these Secrets.
    #[serde(default)]
    pub job_secrets: Vec<String>,
}

/// The kinds of reach a policy bounds; each names its spec field and its policy key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    PrometheusUrl,
    SsmPrefix,
    EcsService,
    AwsEndpoint,
    JobImage,
    JobSecret,
}

impl Reach {
    fn policy_key(self) -> &'static str {
        match self {
            Reach::PrometheusUrl => "prometheusUrls",
            Reach::SsmPrefix => "ssmPrefixes",
            Reach::EcsService => "ecsServices",
            Reach::AwsEndpoint => "allowAwsEndpointOverride",
            Reach::JobImage => "jobImages",
            Reach::JobSecret => "jobSecrets",
        }
    }
}

/// One thing a Migration asks for that the policy does not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value:?} is not allowed by the operator's policy: {how}")]
pub struct Refusal {
    pub reach: Reach,
    /// The spec field, e.g. `analysis.prometheus.url`.
    pub field: &'static str,
    pub value: String,
    /// What would allow it.
    pub how: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the policy file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the policy file {path} is not a valid policy: {message}")]
    Invalid { path: String, message: String },
}

impl Policy {
    /// Reads a policy file (YAML or JSON). Unknown keys are an error: a misspelt allowlist
    /// would otherwise allow nothing, or be thought to restrict what it does not.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Policy::parse(&text).map_err(|message| PolicyError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Policy, String> {
        if text.trim().is_empty() {
            return Ok(Policy::default());
        }
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    fn rules(&self, namespace: &str) -> (&NamespaceRules, String) {
        match self.namespaces.get(namespace) {
            Some(rules) => (rules, format!("namespaces.{namespace}")),
            None => (&self.default, "default".to_owned()),
        }
    }

    /// Everything in `spec` (of a Migration in `namespace`) this policy does not allow; empty
    /// when the Migration may proceed.
    pub fn check(&self, namespace: &str, spec: &MigrationSpec) -> Vec<Refusal> {
        let (rules, entry) = self.rules(namespace);
        let mut refusals = Vec::new();
        let mut refuse = |reach: Reach, field: &'static str, value: &str, allowed: &[String]| {
            let how = if allowed.is_empty() {
                format!(
                    "the policy's {entry}.{} allows none; ask the cluster admin to add it",
                    reach.policy_key()
                )
            } else {
                format!(
                    "the policy's {entry}.{} allows {}",
                    reach.policy_key(),
                    allowed.join(", ")
                )
            };
            refusals.push(Refusal {
                reach,
                field,
                value: value.to_owned(),
                how,
            });
        };
        if let Some(url) = spec
            .analysis
            .as_ref()
            .and_then(|a| a.prometheus.as_ref())
            .map(|p| p.url.as_str())
            && !rules.prometheus_urls.iter().any(|a| url_under(url, a))
        {
            refuse(
                Reach::PrometheusUrl,
                "analysis.prometheus.url",
                url,
                &rules.prometheus_urls,
            );
        }
        if let Some(ssm) = &spec.flags.ssm
            && !rules.ssm_prefixes.iter().any(|a| ssm_under(&ssm.prefix, a))
        {
            refuse(
                Reach::SsmPrefix,
                "flags.ssm.prefix",
                &ssm.prefix,
                &rules.ssm_prefixes,
            );
        }
        for (field, workload) in [
            ("legacy.ecs", &spec.legacy),
            ("candidate.ecs", &spec.candidate),
        ] {
            if let Some(ecs) = workload.as_ref().and_then(|w| w.ecs.as_ref()) {
                let named = format!("{}/{}", ecs.cluster, ecs.service);
                if !rules.ecs_services.iter().any(|a| ecs_matches(&named, a)) {
                    refuse(Reach::EcsService, field, &named, &rules.ecs_services);
                }
            }
        }
        let mut aws_endpoint = None;
        if let Some(endpoint) = spec.aws.as_ref().and_then(|a| a.endpoint_url.as_deref())
            && !self.allow_aws_endpoint_override
        {
            aws_endpoint = Some(Refusal {
                reach: Reach::AwsEndpoint,
                field: "aws.endpointUrl",
                value: endpoint.to_owned(),
                how: "the policy's allowAwsEndpointOverride is false: the AWS endpoint comes only from the operator's configuration (--aws-endpoint-url); remove the field".to_owned(),
            });
        }
        // (image field, Secret field, image, Secret) of each Job a Migration may start.
        let jobs = [
            spec.backfill.as_ref().map(|b| {
                (
                    "backfill.image",
                    "backfill.secretName",
                    &b.image,
                    &b.secret_name,
                )
            }),
            spec.cutover.rollback_job.as_ref().map(|r| {
                (
                    "cutover.rollbackJob.image",
                    "cutover.rollbackJob.secretName",
                    &r.image,
                    &r.secret_name,
                )
            }),
        ];
        for (image_field, secret_field, image, secret) in jobs.into_iter().flatten() {
            if !rules
                .job_images
                .iter()
                .any(|a| image.starts_with(a.as_str()))
            {
                refuse(Reach::JobImage, image_field, image, &rules.job_images);
            }
            if let Some(secret) = secret
                && !rules.job_secrets.contains(secret)
            {
                refuse(Reach::JobSecret, secret_field, secret, &rules.job_secrets);
            }
        }
        refusals.extend(aws_endpoint);
        refusals
    }
}

/// `url` has `allowed`'s scheme, host and port, and a path under its path. Compared parsed,
/// never as text: `http://prometheus:9090@evil.example` starts with `http://prometheus:9090`.
fn url_under(url: &str, allowed: &str) -> bool {
    let (Ok(url), Ok(allowed)) = (url::Url::parse(url), url::Url::parse(allowed)) else {
        return false;
    };
    let base = allowed.path().trim_end_matches('/');
    let path = url.path();
    url.scheme() == allowed.scheme()
        && url.username().is_empty()
        && url.password().is_none()
        && url.host_str() == allowed.host_str()
        && url.port_or_known_default() == allowed.port_or_known_default()
        && (path.trim_end_matches('/') == base || path.starts_with(&format!("{base}/")))
}

/// An SSM prefix under an allowed one, by path segments: `/chat` allows `/chat/eu` but not
/// `/chatter`.
fn ssm_under(prefix: &str, allowed: &str) -> bool {
    let allowed = allowed.trim_end_matches('/');
    let prefix = prefix.trim_end_matches('/');
    !allowed.is_empty() && (prefix == allowed || prefix.starts_with(&format!("{allowed}/")))
}

/// `cluster/service` against `cluster-pattern/service-pattern`, each part exact or a prefix
/// ending in `*`.
fn ecs_matches(named: &str, allowed: &str) -> bool {
    let part = |name: &str, pattern: &str| match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    };
    match (named.split_once('/'), allowed.split_once('/')) {
        (Some((c, s)), Some((pc, ps))) => part(c, pc) && part(s, ps),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value) -> MigrationSpec {
        let mut base = serde_json::json!({
            "service": "chat",
            "flags": { "configMap": { "name": "flags" } },
            "steps": [100],
        });
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(base).expect("a valid spec")
    }

    fn policy() -> Policy {
        Policy::parse(
            r#"
default:
  prometheusUrls: ["http://prometheus.monitoring:9090"]
namespaces:
  chat:
    prometheusUrls: ["http://prometheus.monitoring:9090/", "https://thanos.example/query"]
    ssmPrefixes: ["/chat"]
    ecsServices: ["hse-cluster/hse-*"]
    jobImages: ["ghcr.io/acme/chat-service:"]
    jobSecrets: ["chat-db"]
jobServiceAccount: ficus-jobs
"#,
        )
        .expect("a valid policy")
    }

    fn fields(refusals: &[Refusal]) -> Vec<(&'static str, &str)> {
        refusals
            .iter()
            .map(|r| (r.field, r.value.as_str()))
            .collect()
    }

    #[test]
    fn prometheus_urls_are_compared_parsed_never_as_text() {
        // (namespace, url, allowed)
        let rows = [
            ("chat", "http://prometheus.monitoring:9090", true),
            ("chat", "http://prometheus.monitoring:9090/", true),
            ("chat", "https://thanos.example/query/api", true),
            ("chat", "https://thanos.example:443/query", true),
            ("chat", "https://thanos.example/queryx", false),
            ("chat", "https://thanos.example/", false),
            (
                "chat",
                "http://prometheus.monitoring:9090@evil.example",
                false,
            ),
            ("chat", "http://user:pw@prometheus.monitoring:9090", false),
            ("chat", "http://prometheus.monitoring:9091", false),
            ("chat", "https://prometheus.monitoring:9090", false),
            ("chat", "http://169.254.169.254/latest/meta-data", false),
            ("chat", "not a url", false),
            ("other", "http://prometheus.monitoring:9090", true),
            ("other", "https://thanos.example/query", false),
        ];
        for (namespace, url, allowed) in rows {
            let s = spec(serde_json::json!({ "analysis": { "prometheus": { "url": url } } }));
            let refusals = policy().check(namespace, &s);
            assert_eq!(
                refusals.is_empty(),
                allowed,
                "{namespace} {url}: {refusals:?}"
            );
        }
    }

    #[test]
    fn ssm_prefixes_and_ecs_services_are_matched_by_segment_and_pattern() {
        for (prefix, allowed) in [
            ("/chat", true),
            ("/chat/", true),
            ("/chat/eu", true),
            ("/chatter", false),
            ("/", false),
            ("/billing/chat", false),
        ] {
            let s = spec(serde_json::json!({ "flags": { "ssm": { "prefix": prefix } } }));
            assert_eq!(policy().check("chat", &s).is_empty(), allowed, "{prefix}");
        }
        for (cluster, service, allowed) in [
            ("hse-cluster", "hse-devices", true),
            ("hse-cluster", "billing", false),
            ("other", "hse-devices", false),
        ] {
            let ecs = serde_json::json!({ "ecs": { "cluster": cluster, "service": service } });
            let s = spec(serde_json::json!({ "legacy": ecs, "candidate": ecs }));
            let refusals = policy().check("chat", &s);
            assert_eq!(
                refusals.is_empty(),
                allowed,
                "{cluster}/{service}: {refusals:?}"
            );
            if !allowed {
                assert_eq!(
                    fields(&refusals),
                    [
                        ("legacy.ecs", format!("{cluster}/{service}").as_str()),
                        ("candidate.ecs", format!("{cluster}/{service}").as_str())
                    ]
                );
            }
        }
    }

    #[test]
    fn jobs_need_an_allowed_image_and_an_allowed_secret_and_the_message_says_how() {
        let s = spec(serde_json::json!({
            "backfill": { "image": "evil.example/exfiltrate:1", "secretName": "payments-db" },
            "cutover": { "rollbackJob": { "image": "ghcr.io/acme/chat-service:1.4", "secretName": "chat-db" } },
        }));
        let refusals = policy().check("chat", &s);
        assert_eq!(
            fields(&refusals),
            [
                ("backfill.image", "evil.example/exfiltrate:1"),
                ("backfill.secretName", "payments-db")
            ]
        );
        assert_eq!(
            refusals[0].to_string(),
            "backfill.image \"evil.example/exfiltrate:1\" is not allowed by the operator's policy: the policy's namespaces.chat.jobImages allows ghcr.io/acme/chat-service:"
        );
        // Namespaces without rules get `default`, which allows no Job image at all.
        let refusals = policy().check("other", &s);
        assert!(
            refusals[0]
                .to_string()
                .contains("the policy's default.jobImages allows none"),
            "{refusals:?}"
        );
    }

    #[test]
    fn an_aws_endpoint_comes_only_from_the_operator_unless_the_policy_allows_it() {
        let s = spec(serde_json::json!({ "aws": { "endpointUrl": "http://attacker.example" } }));
        assert_eq!(
            fields(&policy().check("chat", &s)),
            [("aws.endpointUrl", "http://attacker.example")]
        );
        let open = Policy {
            allow_aws_endpoint_override: true,
            ..policy()
        };
        assert!(open.check("chat", &s).is_empty());
    }

    #[test]
    fn a_migration_within_the_namespace_needs_nothing_from_the_policy() {
        // ConfigMap flags and Deployments stay in the Migration's namespace: always allowed.
        let s = spec(serde_json::json!({
            "legacy": { "deployment": "old" },
            "candidate": { "deployment": "new" },
        }));
        assert!(Policy::default().check("anywhere", &s).is_empty());
    }

    #[test]
    fn a_misspelt_key_is_an_error_not_a_silent_allowlist() {
        let err = Policy::parse("namespaces:\n  chat:\n    prometheusUrl: [x]\n").unwrap_err();
        assert!(err.contains("prometheusUrl"), "{err}");
        assert_eq!(Policy::parse("").expect("empty"), Policy::default());
    }
}
