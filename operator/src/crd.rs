//! The `Migration` custom resource (`ficus.dev/v1alpha1`): what a user declares (spec) and what
//! the operator records (status). Validation lives in the schema itself (OpenAPI + CEL), so
//! `kubectl apply` rejects a manifest that could never run, with a message naming the field.
//!
//! One file over 600 lines on purpose: the CRD's types, in the order of the generated schema and of docs/crd-reference.md.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The flag document types live in the contract crate shared with the services.
pub use ficus_flags::{DualWrite, FlagValues, Flags, Percent, ShadowCompare, Side};

pub use crate::duration::SpecDuration;

/// A phased strangler-fig migration of one service from its legacy system to a new one.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ficus.dev",
    version = "v1alpha1",
    kind = "Migration",
    plural = "migrations",
    shortname = "mig",
    namespaced,
    status = "MigrationStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Step","type":"integer","jsonPath":".status.step"}"#,
    printcolumn = r#"{"name":"Traffic","type":"integer","jsonPath":".status.trafficPercent"}"#,
    printcolumn = r#"{"name":"Healthy","type":"string","jsonPath":".status.healthy"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.legacy) == has(self.candidate)").message("legacy and candidate workloads go together: name both or neither"))]
pub struct MigrationSpec {
    /// Logical service name: used in flag keys and metric labels.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("service must be a DNS label: lower-case letters, digits and '-'"))]
    pub service: String,

    /// The workload being replaced. Optional: a migration inside one service needs only flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy: Option<Workload>,

    /// The workload taking over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Workload>,

    /// Where the services read their migration flags.
    pub flags: FlagStores,

    /// Shadow phase: dual writes and compared shadow reads, no user traffic on the new side.
    #[serde(default)]
    pub shadow: ShadowSpec,

    /// Optional backfill of history legacy -> new as a Kubernetes Job before traffic moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillSpec>,

    /// Traffic-split percents for the new system, strictly increasing, each in 1..100.
    #[schemars(length(min = 1, max = 20))]
    #[x_kube(validation = Rule::new("self.all(s, s >= 1 && s <= 100)").message("steps: every traffic percent must be between 1 and 100"))]
    #[x_kube(validation = Rule::new("self.isSorted() && self.all(s, self.filter(t, t == s).size() == 1)").message("steps must be strictly increasing, e.g. [10, 25, 50, 100]"))]
    pub steps: Vec<i32>,

    /// How long every gate must pass before the next step (Go duration: 30s, 5m, 1h).
    #[serde(default = "default_bake_time")]
    pub bake_time: SpecDuration,

    /// Where the AWS APIs are, for SSM flags and ECS workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsSpec>,

    /// Prometheus gates evaluated during every active phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,

    /// When to roll back on its own.
    #[serde(default)]
    pub rollback: RollbackSpec,

    /// How the new system becomes primary and when the migration completes.
    #[serde(default)]
    pub cutover: CutoverSpec,

    /// Hold the migration in its current phase (flags stay as they are).
    #[serde(default)]
    pub paused: bool,
}

fn default_bake_time() -> SpecDuration {
    Duration::from_secs(5 * 60).into()
}

/// A workload observed and scaled by the operator: a Deployment or an ECS service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.deployment) != has(self.ecs)").message("a workload names exactly one of deployment or ecs"))]
pub struct Workload {
    /// Name of a Deployment in the Migration's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub deployment: Option<String>,
    /// An AWS ECS service (credentials come from the operator's environment, never the spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs: Option<EcsService>,
    /// Promotion waits until this workload reports ready replicas (off by default: readiness is
    /// reported as an observation, progression never waits on it silently).
    #[serde(default)]
    pub require_ready: bool,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EcsService {
    #[schemars(length(min = 1, max = 255))]
    pub cluster: String,
    #[schemars(length(min = 1, max = 255))]
    pub service: String,
}

impl Workload {
    /// A short human name: `Deployment chat-legacy` or `ECS service hse/chat-old`.
    pub fn describe(&self) -> String {
        match (&self.deployment, &self.ecs) {
            (Some(d), _) => format!("Deployment {d}"),
            (None, Some(e)) => format!("ECS service {}/{}", e.cluster, e.service),
            (None, None) => "an unnamed workload".into(),
        }
    }
}

/// Where the AWS APIs are (SSM, ECS). Credentials are never here: the operator uses the AWS
/// default provider chain (IRSA / pod identity, environment, profiles).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AwsSpec {
    /// e.g. eu-west-1; default: the operator's `--aws-region`, else the SDK's own lookup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// An endpoint override (VPC endpoint, a local emulator); default: the operator's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("aws.endpointUrl must start with http:// or https://"))]
    #[schemars(length(max = 2048))]
    pub endpoint_url: Option<String>,
}

/// Flag stores. At least one must be named.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMap) || has(self.ssm)").message("flags: name at least one flag store, e.g. configMap: {name: chat-migration-flags} or ssm: {prefix: /hse/chat/}"))]
pub struct FlagStores {
    /// A ConfigMap in the Migration's namespace, watched by the services through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapStore>,
    /// AWS SSM Parameter Store: the flag document as parameters under a prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssm: Option<SsmStore>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SsmStore {
    /// Parameter path prefix, e.g. `/hse/chat/` (parameters `/hse/chat/traffic-split-percent`, ...).
    #[schemars(length(min = 2, max = 900))]
    #[x_kube(validation = Rule::new("self.matches('^/([A-Za-z0-9_.-]+/)+$')").message("flags.ssm.prefix must be a parameter path that starts and ends with '/', e.g. /hse/chat/"))]
    pub prefix: String,
    /// Write the parameters as SecureString (encrypted with the account's default key or `kmsKeyId`).
    #[serde(default)]
    pub secure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ConfigMapStore {
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("configMap.name must be a valid ConfigMap name"))]
    pub name: String,
}

/// How secondary writes are made while both stores are live.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DualWriteMode {
    /// In parallel with the primary write; the call returns when both answered.
    #[default]
    Sync,
    /// After the primary write; the call does not wait for the secondary.
    Async,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShadowSpec {
    /// Minimum time in shadow before the first traffic step.
    #[serde(default = "default_shadow_duration")]
    pub duration: SpecDuration,
    /// Share of reads also served by the new store and compared.
    #[serde(default = "default_read_sample")]
    #[schemars(range(min = 0, max = 100))]
    pub read_sample_percent: i32,
    /// Dual-write mode from shadow onwards.
    #[serde(default)]
    pub dual_write: DualWriteMode,
}

impl Default for ShadowSpec {
    fn default() -> Self {
        Self {
            duration: default_shadow_duration(),
            read_sample_percent: default_read_sample(),
            dual_write: DualWriteMode::Sync,
        }
    }
}

fn default_shadow_duration() -> SpecDuration {
    Duration::from_secs(10 * 60).into()
}
fn default_read_sample() -> i32 {
    10
}

/// Backfill history from the legacy store to the new one as a Job; the Job's success is the gate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackfillSpec {
    #[schemars(length(min = 1))]
    pub image: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Secret whose keys become the environment of the backfill and validation pods (database
    /// URLs and credentials, e.g. `DATABASE_URL`); the operator itself never reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// Pods of the Indexed Job; each takes shard `i/N` of the key space.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 64))]
    pub parallelism: i32,
    /// Once the backfill succeeded, run the same image with these arguments in one more Job
    /// (e.g. `[validate, --max-drift, "0.001"]`) and leave Backfill only when it succeeds. Exit
    /// code 2 (drift above the threshold) fails the Job at once and rolls back; other failures
    /// are retried like the backfill's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub validate_args: Option<Vec<String>>,
}

fn one() -> i32 {
    1
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.gates) == 0 || has(self.prometheus)").message("analysis.prometheus.url is required when gates are declared"))]
#[x_kube(validation = Rule::new("!has(self.appliedGenerationQuery) || has(self.prometheus)").message("analysis.prometheus.url is required with analysis.appliedGenerationQuery"))]
pub struct AnalysisSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSpec>,
    /// Time between gate evaluations.
    #[serde(default = "default_interval")]
    pub interval: SpecDuration,
    /// Consecutive failed evaluations of a gate before rollback.
    #[serde(default = "default_failure_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_limit: i32,
    /// Consecutive evaluations without evidence (no data, Prometheus unreachable) before pausing.
    #[serde(default = "default_inconclusive_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub inconclusive_limit: i32,
    /// After entering a phase or a Split step, evaluations without evidence during this long
    /// do not count towards `inconclusiveLimit`: a rate window that has just started holds no
    /// data yet (set it to the gates' window, e.g. 5m). They never count as passing either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<SpecDuration>,
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(g, self.filter(h, h.name == g.name).size() == 1)").message("analysis.gates: gate names must be unique"))]
    pub gates: Vec<Gate>,
    /// PromQL for the lowest flag generation the service's instances report applied, e.g.
    /// `min(chat_flags_generation{namespace="chat"})`. When set, a phase is promoted only once
    /// it reaches the generation the operator wrote: the bake counts for flags every instance
    /// runs with, not for flags still on their way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub applied_generation_query: Option<String>,
}

fn default_interval() -> SpecDuration {
    Duration::from_secs(15).into()
}
fn default_failure_limit() -> i32 {
    2
}
fn default_inconclusive_limit() -> i32 {
    4
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PrometheusSpec {
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("analysis.prometheus.url must start with http:// or https://"))]
    pub url: String,
}

/// A PromQL instant query whose value must stay within `min`..`max`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.max) || has(self.min)").message("a gate needs a threshold: set max, min or both"))]
#[x_kube(validation = Rule::new("!has(self.max) || !has(self.min) || self.min <= self.max").message("a gate's min must not exceed its max"))]
#[x_kube(validation = Rule::new("has(self.samplesQuery) == has(self.minSamples)").message("a gate's samplesQuery and minSamples go together: name the query that counts the samples and how many are needed"))]
#[x_kube(validation = Rule::new("!has(self.onNoData) || self.onNoData != 'pass' || has(self.minSamples)").message("onNoData: pass needs samplesQuery and minSamples: without a sample count an empty result from a dead scrape would pass"))]
pub struct Gate {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// What an empty result (or NaN) means for this gate, once the samples are there.
    #[serde(default)]
    pub on_no_data: NoDataPolicy,
    /// The cohorts of users the query compares or reads. The gate is evaluated only while each
    /// of them has users (from `status.trafficPercent`), and skipped otherwise.
    #[serde(default)]
    pub cohorts: Cohorts,
    /// PromQL counting the samples behind `query` (e.g. the requests in its window). Fewer than
    /// `minSamples` (or no answer) makes the evaluation Inconclusive, never Pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub samples_query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_samples: Option<f64>,
    /// How long the gate must fail, in every evaluation, before its failures count towards
    /// `failureLimit`; a shorter failure only holds promotion. For a quantile over a window set
    /// it longer than the window: a pause of a few seconds (a flush, a GC) moves a p99 for as
    /// long as it stays in the window and then leaves it, a lasting regression does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_for: Option<SpecDuration>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum NoDataPolicy {
    #[default]
    Inconclusive,
    /// Only with `minSamples`: the samples prove the scrape is alive, so an empty result (e.g.
    /// no error series yet) means "nothing bad".
    Pass,
    Fail,
}

/// Which users a gate's query is about: the cohort served by the legacy system, the one served
/// by the new system, both (a comparison), or any (no cohort label).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Cohorts {
    /// Evaluated in every phase that evaluates gates.
    #[default]
    Any,
    /// While some users are on the legacy system: traffic below 100 %.
    Legacy,
    /// While some users are on the new system: Split and CutOver.
    New,
    /// While users are on both: Split steps below 100 %.
    Both,
}

impl Cohorts {
    /// Whether every cohort this names has users when `traffic_percent` of them are on the
    /// new system.
    pub fn served_at(self, traffic_percent: i32) -> bool {
        let new = traffic_percent > 0;
        let legacy = traffic_percent < 100;
        match self {
            Cohorts::Any => true,
            Cohorts::Legacy => legacy,
            Cohorts::New => new,
            Cohorts::Both => new && legacy,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Cohorts::Any => "any cohort",
            Cohorts::Legacy => "the legacy cohort",
            Cohorts::New => "the new cohort",
            Cohorts::Both => "both cohorts",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RollbackSpec {
    /// Roll back on failing gates and firing alerts without a human.
    #[serde(default = "yes")]
    pub automatic: bool,
    /// Alert names that force a rollback while firing.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    #[x_kube(validation = Rule::new("self.all(a, a.matches('^[^,[:space:]]([^,]*[^,[:space:]])?$'))").message("rollback.onAlerts: every alert name must be non-empty, without commas and without leading or trailing spaces, e.g. ChatDataInconsistency"))]
    pub on_alerts: Vec<String>,
    /// Labels an alert must carry to concern this Migration (default: `service: <spec.service>`).
    /// An alert with a `namespace` label must also name the Migration's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[a-zA-Z_][a-zA-Z0-9_]*$') && !k.startsWith('__'))").message("rollback.alertLabels: keys must be Prometheus label names (letters, digits and '_', not starting with '__'), e.g. app_kubernetes_io_name rather than app.kubernetes.io/name"))]
    #[x_kube(validation = Rule::new("self.all(k, size(self[k]) > 0)").message("rollback.alertLabels: values must not be empty (an empty value would match every alert without the label)"))]
    pub alert_labels: Option<std::collections::BTreeMap<String, String>>,
}

/// A Prometheus label name Ficus accepts in `rollback.alertLabels` (the CRD refuses others;
/// checked again before a query is built, for objects stored before that rule existed).
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

impl Default for RollbackSpec {
    fn default() -> Self {
        Self {
            automatic: true,
            on_alerts: Vec::new(),
            alert_labels: None,
        }
    }
}

impl MigrationSpec {
    /// The labels that tie an alert to this Migration.
    pub fn alert_selector(&self) -> std::collections::BTreeMap<String, String> {
        self.rollback
            .alert_labels
            .clone()
            .unwrap_or_else(|| [("service".to_string(), self.service.clone())].into())
    }
}

fn yes() -> bool {
    true
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CutoverSpec {
    /// Keep writing the legacy store after the new one becomes primary, so rollback stays possible.
    #[serde(default = "yes")]
    pub reverse_dual_write: bool,
    /// Complete on its own after this long in CutOver with healthy gates; absent = complete only
    /// when promoted by hand (`ficus.dev/promote`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_after: Option<SpecDuration>,
    /// Scale the legacy workload to 0 replicas on completion and hold it there while Completed.
    #[serde(default)]
    pub scale_down_legacy: bool,
    /// Without `reverseDualWrite` the legacy store misses every write made in CutOver. A rollback
    /// from CutOver then runs this Job (e.g. chat-service `rollback`) to copy those writes new
    /// -> legacy, and is RolledBack only once it succeeded. Without it, automatic rollback from
    /// CutOver is refused (the Migration stays in CutOver, Degraded, and says what to do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_job: Option<RollbackJobSpec>,
}

/// The Job that carries writes made in CutOver back to the legacy store. It gets
/// `FICUS_MIGRATION_ID`, `FICUS_ROLLBACK_FROM` and `FICUS_ROLLBACK_TO` (RFC 3339: the time
/// range of the writes to copy) besides the Secret's keys.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RollbackJobSpec {
    #[schemars(length(min = 1))]
    pub image: String,
    /// Container args, e.g. `[rollback, --cql-contact-points=scylla:9042]`: the command name is
    /// the image's own.
    #[serde(default)]
    pub args: Vec<String>,
    /// Secret whose keys become the pod's environment (database URLs and credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
}

impl Default for CutoverSpec {
    fn default() -> Self {
        Self {
            reverse_dual_write: true,
            complete_after: None,
            scale_down_legacy: false,
            rollback_job: None,
        }
    }
}

/// Where a migration is.
#[derive(
    JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum Phase {
    #[default]
    Pending,
    Preflight,
    Shadow,
    Backfill,
    Split,
    CutOver,
    Completed,
    Paused,
    RollingBack,
    RolledBack,
}

impl Phase {
    pub const ALL: [Phase; 10] = [
        Phase::Pending,
        Phase::Preflight,
        Phase::Shadow,
        Phase::Backfill,
        Phase::Split,
        Phase::CutOver,
        Phase::Completed,
        Phase::Paused,
        Phase::RollingBack,
        Phase::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Preflight => "Preflight",
            Phase::Shadow => "Shadow",
            Phase::Backfill => "Backfill",
            Phase::Split => "Split",
            Phase::CutOver => "CutOver",
            Phase::Completed => "Completed",
            Phase::Paused => "Paused",
            Phase::RollingBack => "RollingBack",
            Phase::RolledBack => "RolledBack",
        }
    }

    /// Phases from which a failing gate, an alert or an abort rolls back.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Phase::Preflight
                | Phase::Shadow
                | Phase::Backfill
                | Phase::Split
                | Phase::CutOver
                | Phase::Paused
        )
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<DualWriteMode> for DualWrite {
    fn from(m: DualWriteMode) -> Self {
        match m {
            DualWriteMode::Sync => DualWrite::Sync,
            DualWriteMode::Async => DualWrite::Async,
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseReason {
    /// `spec.paused: true`.
    Manual,
    /// `inconclusiveLimit` evaluations in a row without evidence.
    Inconclusive,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PauseState {
    /// The phase to resume.
    pub from: Phase,
    pub reason: PauseReason,
}

/// Whether the evidence says the migration is healthy (the condition-style words `kubectl get`
/// shows): no failing gate and no firing alert (`True`), a failing gate or a firing alert
/// (`False`), or not enough evidence yet (`Unknown`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    True,
    False,
    Unknown,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::True => "True",
            Health::False => "False",
            Health::Unknown => "Unknown",
        }
    }
}

/// One gate's outcome in an evaluation.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
    Error,
    /// Not evaluated: a cohort the gate reads has no users in this phase (`cohorts`).
    Skipped,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GateResult {
    pub name: String,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// With `verdict: Fail`: the first evaluation of this unbroken run of failures (what the
    /// gate's `failFor` is measured from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<Timestamp>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRun {
    pub time: Timestamp,
    pub gates: Vec<GateResult>,
    /// The `ALERTS` poll of this evaluation (`rollback.onAlerts` with a Prometheus): Pass when
    /// Prometheus answered, Inconclusive with the reason when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<GateResult>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub time: Timestamp,
    pub from: Phase,
    pub to: Phase,
    /// Traffic percent after the transition.
    pub traffic_percent: i32,
    pub reason: String,
    pub message: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRecord {
    pub time: Timestamp,
    /// The phase rolled back from.
    pub from: Phase,
    pub reason: String,
    pub message: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    #[serde(default)]
    pub phase: Phase,
    /// 1-based index of the current traffic step (Split), absent before the first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<i32>,
    /// Share of users on the new system.
    #[serde(default)]
    pub traffic_percent: i32,
    /// The last analysis in one word, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<Health>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_started_at: Option<Timestamp>,
    /// When the current bake started (phase entry, step entry, or a spec change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Timestamp>,
    /// Every gate has passed continuously since this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passing_since: Option<Timestamp>,
    #[serde(default)]
    pub consecutive_failures: i32,
    #[serde(default)]
    pub consecutive_inconclusive: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<AnalysisRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<PauseState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollback: Option<RollbackRecord>,
    /// Flags as last written to the stores, with the generation the services should report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_flags: Option<Flags>,
    /// Legacy replicas before the operator first scaled it, restored on rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_replicas_before: Option<i32>,
    /// Name of the backfill Job of this attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill_job: Option<String>,
    /// The lowest flag generation the services reported applied at the last analysis
    /// (`analysis.appliedGenerationQuery`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_generation: Option<i64>,
    /// Name of the validation Job of this attempt (`backfill.validateArgs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate_job: Option<String>,
    /// Attempt number, bumped by every retry (names Jobs uniquely).
    #[serde(default)]
    pub attempt: i32,
    /// When this attempt turned dual writes on (entering Shadow; recorded before the flags are
    /// written, so never later than the first dual-written row). Given to the backfill and
    /// validation Jobs as `FICUS_DUAL_WRITE_STARTED_AT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dual_write_started_at: Option<Timestamp>,
    /// When every service instance was seen dual-writing (with `appliedGenerationQuery`: the
    /// first reconcile that saw them report such a document; without it, when the document
    /// was written). Shadow reads compare data created since then until a backfill copied the
    /// older data (the flag document's `shadow_compare_from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dual_write_applied_at: Option<Timestamp>,
    /// When this attempt entered CutOver: from then on, without `reverseDualWrite`, writes
    /// reach only the new store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_over_at: Option<Timestamp>,
    /// Name of the rollback Job of this attempt (`cutover.rollbackJob`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_job: Option<String>,
    /// The spec generation the phase plan was last reconciled against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The most recent transitions, newest last (bounded).
    #[serde(default)]
    pub history: Vec<Transition>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Annotations a user sets for manual control (`kubectl annotate`).
pub mod annotations {
    /// Skip the rest of the current bake.
    pub const PROMOTE: &str = "ficus.dev/promote";
    /// Roll back now.
    pub const ABORT: &str = "ficus.dev/abort";
    /// Start again after a rollback.
    pub const RETRY: &str = "ficus.dev/retry";
    /// Alerts reported firing by the Alertmanager webhook (comma-separated), written by the
    /// operator's webhook receiver; its change wakes the reconciler at once.
    pub const FIRING_ALERTS: &str = "ficus.dev/firing-alerts";
}
