//! The Helm chart (`charts/ficus`) with the real `helm` against the real API server: it lints,
//! refuses bad values with messages that say what to do, installs everything it renders,
//! keeps the webhook token across upgrades, and its RBAC is enough for the operator to run a
//! whole migration (and no more than the documented calls).

use std::collections::BTreeMap;
use std::time::Duration;

use ficus_e2e::operator::{Operator, finish_job, test_namespace, wait_for, wait_for_job};
use ficus_operator::crd::{Migration, Phase};
use ficus_operator::run::{Config, LeaderConfig};
use ficus_testkit::helm::{chart_dir, helm};
use ficus_testkit::{ControlPlane, KubectlOutput, create_namespace, unique_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

/// A minimal PrometheusRule CRD (the Prometheus Operator's API, schema left open), so the
/// API server serves `monitoring.coreos.com/v1` as it does where the Prometheus Operator runs.
const PROMETHEUS_RULE_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: { name: prometheusrules.monitoring.coreos.com }
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: { kind: PrometheusRule, plural: prometheusrules, singular: prometheusrule, listKind: PrometheusRuleList }
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: { type: object, x-kubernetes-preserve-unknown-fields: true }
"#;

/// `helm <args>` that must succeed; the output for further checks.
fn helm_ok(args: &[&str]) -> anyhow::Result<KubectlOutput> {
    succeeded(helm(args)?)
}

fn succeeded(out: KubectlOutput) -> anyhow::Result<KubectlOutput> {
    anyhow::ensure!(out.success(), "{out}");
    Ok(out)
}

/// `helm <verb> <release> charts/ficus --set <each of sets> <extra>`, whatever its exit status.
fn chart(
    verb: &str,
    release: &str,
    sets: &[&str],
    extra: &[&str],
) -> anyhow::Result<KubectlOutput> {
    let dir = chart_dir();
    let mut args = vec![verb, release, dir.to_str().expect("utf-8 path")];
    for set in sets {
        args.extend(["--set", set]);
    }
    args.extend(extra);
    Ok(helm(&args)?)
}

/// `helm template` of the chart with `sets` (`key=value`), split into documents.
fn render(sets: &[&str], extra: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = succeeded(chart("template", "ficus", sets, extra)?)?;
    // Strict parse: a document that does not parse (e.g. a label key given twice) fails the
    // test instead of silently missing from the list.
    let mut docs = Vec::new();
    for d in out.stdout.split("\n---") {
        let doc: serde_json::Value = serde_saphyr::from_str(d)
            .map_err(|e| anyhow::anyhow!("rendered document does not parse: {e}\n{d}"))?;
        if doc.is_object() {
            docs.push(doc);
        }
    }
    Ok(docs)
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The helm binary, or skip (fail under CI) when it is not built.
fn helm_or_skip() -> bool {
    match ficus_testkit::helm::helm_binary() {
        Ok(_) => true,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            false
        }
    }
}

#[test]
fn the_chart_lints_and_refuses_bad_values_with_readable_messages() -> anyhow::Result<()> {
    ficus_testkit::init();
    if !helm_or_skip() {
        return Ok(());
    }
    let dir = chart_dir();
    helm_ok(&[
        "lint",
        "--strict",
        dir.to_str().expect("utf-8 path"),
        "--set",
        "chat.existingSecret=chat",
    ])?;

    let refused = [
        (
            vec![],
            "chat.existingSecret is required: a Secret with DATABASE_URL, CHAT_JWT_SECRET and CHAT_ENCRYPTION_KEY",
        ),
        (
            vec![
                "chat.enabled=false",
                "operator.leaderElection.enabled=false",
            ],
            "operator.replicas > 1 needs operator.leaderElection.enabled",
        ),
        (
            vec!["chat.existingSecret=chat", "chat.new.newStore=mongo"],
            "value must be one of 'scylla', 'postgres'",
        ),
        (
            vec!["chat.existingSecret=chat", "chat.new.cql.consistency=SOME"],
            "/chat/new/cql/consistency",
        ),
        (
            vec![
                "chat.existingSecret=chat",
                "operator.policy.namespaces.chat.prometheusUrl[0]=http://p",
            ],
            "additional properties 'prometheusUrl' not allowed",
        ),
    ];
    for (sets, message) in refused {
        let out = chart("template", "ficus", &sets, &[])?;
        assert!(!out.success(), "{sets:?} must be refused: {out}");
        assert!(out.stderr.contains(message), "{sets:?}: {out}");
    }

    // operator.policy reaches the operator as the file it reads, unchanged.
    let policy = r#"{"namespaces":{"chat":{"prometheusUrls":["http://prometheus.monitoring:9090"],"jobImages":["ghcr.io/acme/chat-service:"],"jobSecrets":["chat-db"]}},"jobServiceAccount":"ficus-jobs"}"#;
    let docs = render(
        &["chat.enabled=false"],
        &["--set-json", &format!("operator.policy={policy}")],
    )?;
    let maps = find(&docs, "ConfigMap");
    let file = maps
        .iter()
        .find(|m| {
            m["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-policy"))
        })
        .and_then(|m| m["data"]["policy.yaml"].as_str())
        .expect("the policy ConfigMap");
    assert_eq!(
        ficus_operator::policy::Policy::parse(file).map_err(anyhow::Error::msg)?,
        serde_json::from_str(policy)?
    );
    let operator = find(&docs, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["labels"]["app.kubernetes.io/name"] == "ficus-operator")
        .expect("the operator Deployment");
    let env = operator["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(
        env.contains(r#""name":"FICUS_POLICY_FILE","value":"/etc/ficus/policy/policy.yaml""#),
        "{env}"
    );
    assert!(
        operator["spec"]["template"]["metadata"]["annotations"]["ficus.dev/policy-checksum"]
            .is_string()
    );

    // The PrometheusRule wraps exactly the shipped rule file, and only where its API is served.
    let rules: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(
        chart_dir().join("files/chat-alerts.rules.yml"),
    )?)?;
    let sets = ["chat.existingSecret=chat"];
    assert!(find(&render(&sets, &[])?, "PrometheusRule").is_empty());
    let docs = render(
        &sets,
        &["--api-versions", "monitoring.coreos.com/v1/PrometheusRule"],
    )?;
    let rule = find(&docs, "PrometheusRule");
    assert_eq!(rule.len(), 1);
    assert_eq!(rule[0]["spec"]["groups"], rules["groups"]);

    // The chart's Migration gates are the example's (the thresholds of the original plan).
    let docs = render(
        &["chat.existingSecret=chat", "chat.migration.enabled=true"],
        &[],
    )?;
    let migration = find(&docs, "Migration");
    assert_eq!(migration.len(), 1);
    let example = std::fs::read_to_string(
        ficus_testkit::repo_root().join("examples/chat-postgres-to-scylla.yaml"),
    )?;
    let example: Vec<serde_json::Value> = example
        .split("\n---")
        .filter_map(|d| serde_saphyr::from_str(d).ok())
        .collect();
    let example = find(&example, "Migration")[0];
    assert_eq!(
        migration[0]["spec"]["analysis"]["gates"],
        example["spec"]["analysis"]["gates"]
    );
    assert_eq!(
        migration[0]["spec"]["rollback"],
        example["spec"]["rollback"]
    );
    // The operator, not a value typed by hand, tells the backfill when dual writes began.
    let backfill = render(
        &[
            "chat.existingSecret=chat",
            "chat.migration.enabled=true",
            "chat.migration.backfill.enabled=true",
        ],
        &[],
    )?;
    let args = &find(&backfill, "Migration")[0]["spec"]["backfill"]["args"];
    assert!(
        !args.to_string().contains("dual-write-started-at"),
        "{args}"
    );

    // Every instance that accepts writes follows the flags during a migration.
    let store = |docs: &[serde_json::Value], track: &str| -> String {
        let suffix = format!("chat-{track}");
        let deployments = find(docs, "Deployment");
        let deployment = deployments
            .iter()
            .find(|d| {
                d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(&suffix))
            })
            .unwrap_or_else(|| panic!("no {suffix} Deployment in {deployments:?}"));
        let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env");
        env.iter()
            .find(|e| e["name"] == "CHAT_STORE")
            .and_then(|e| e["value"].as_str())
            .expect("CHAT_STORE")
            .to_owned()
    };
    for (sets, legacy) in [
        (vec!["chat.existingSecret=chat"], "postgres"),
        (
            vec!["chat.existingSecret=chat", "chat.migration.enabled=true"],
            "router",
        ),
        (
            vec!["chat.existingSecret=chat", "chat.legacy.followFlags=true"],
            "router",
        ),
    ] {
        let docs = render(&sets, &[])?;
        assert_eq!(
            (
                store(&docs, "legacy").as_str(),
                store(&docs, "new").as_str()
            ),
            (legacy, "router"),
            "{sets:?}"
        );
    }
    Ok(())
}

/// Installs the chart as release `release` into `ns` with `sets`.
fn install(
    cp: &ControlPlane,
    verb: &str,
    release: &str,
    ns: &str,
    sets: &[&str],
) -> anyhow::Result<KubectlOutput> {
    let kubeconfig = cp.kubeconfig_path().to_string_lossy().into_owned();
    let target = ["--namespace", ns, "--kubeconfig", &kubeconfig];
    succeeded(chart(verb, release, sets, &target)?)
}

async fn webhook_token(client: &Client, ns: &str, name: &str) -> anyhow::Result<String> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    let token = secret
        .data
        .and_then(|d| d.get("token").cloned())
        .ok_or_else(|| anyhow::anyhow!("Secret {name} has no token"))?;
    Ok(String::from_utf8(token.0)?)
}

#[tokio::test]
async fn helm_install_puts_the_operator_and_chat_stack_on_the_cluster_and_upgrade_keeps_the_token()
-> anyhow::Result<()> {
    if !helm_or_skip() {
        return Ok(());
    }
    let Some((cp, client, ns)) = test_namespace("chart-install").await? else {
        return Ok(());
    };
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], PROMETHEUS_RULE_CRD)?;
    assert!(out.success(), "{out}");
    let out = cp.kubectl(&[
        "wait",
        "--for=condition=established",
        "--timeout=30s",
        "crd/prometheusrules.monitoring.coreos.com",
    ])?;
    assert!(out.success(), "{out}");

    let release = ns.clone();
    let sets = [
        "chat.existingSecret=chat-secrets",
        "chat.migration.enabled=true",
        "chat.migration.backfill.enabled=true",
    ];
    let out = install(cp, "install", &release, &ns, &sets)?;
    assert!(
        out.stdout.contains("The Migration"),
        "NOTES say how to follow the migration: {out}"
    );

    let name = |suffix: &str| format!("{release}-ficus-{suffix}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let mut names: Vec<String> = deployments
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(|d| d.name_any())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [name("chat-legacy"), name("chat-new"), name("operator")]
    );
    let operator = deployments.get(&name("operator")).await?;
    let spec = operator.spec;
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some(name("operator").as_str())
    );
    let env: BTreeMap<String, String> = pod.containers[0]
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    assert_eq!(
        env.get("FICUS_WEBHOOK_TOKEN_FILE").map(String::as_str),
        Some("/var/run/ficus/webhook/token")
    );
    assert_eq!(
        env.get("FICUS_LEASE_NAME").map(String::as_str),
        Some("ficus-operator-leader")
    );

    for (kind, object) in [
        ("prometheusrule", name("chat-alerts")),
        ("configmap", name("chat-dashboard")),
        ("service", name("chat")),
        ("service", name("chat-legacy")),
        ("service", name("operator")),
        ("migration", name("chat")),
        ("clusterrole", name("operator")),
        ("role", name("operator-leader")),
        ("role", name("chat-flags")),
    ] {
        let out = cp.kubectl(&["get", "-n", &ns, kind, &object])?;
        assert!(out.success(), "{kind} {object} installed: {out}");
    }
    let migration = Api::<Migration>::namespaced(client.clone(), &ns)
        .get(&name("chat"))
        .await?;
    assert_eq!(
        migration
            .spec
            .candidate
            .as_ref()
            .and_then(|w| w.deployment.clone()),
        Some(name("chat-new"))
    );
    let backfill = migration.spec.backfill.expect("the backfill is on");
    assert_eq!(
        (
            backfill.secret_name.as_deref(),
            backfill.args.first().map(String::as_str)
        ),
        (Some("chat-secrets"), Some("backfill"))
    );
    assert!(
        backfill
            .validate_args
            .as_ref()
            .is_some_and(|a| a.contains(&"--max-drift=0.001".to_owned())),
        "{:?}",
        backfill.validate_args
    );

    let token = webhook_token(&client, &ns, &name("operator-webhook")).await?;
    assert_eq!(token.len(), 40);
    install(cp, "upgrade", &release, &ns, &sets)?;
    assert_eq!(
        webhook_token(&client, &ns, &name("operator-webhook")).await?,
        token,
        "Alertmanager keeps working after an upgrade"
    );
    Ok(())
}

#[tokio::test]
async fn the_operator_runs_a_whole_migration_with_only_the_charts_rbac() -> anyhow::Result<()> {
    if !helm_or_skip() {
        return Ok(());
    }
    // The release namespace holds the operator's ServiceAccount and Lease; the Migration lives
    // in another namespace, reached through the ClusterRole.
    let Some((cp, admin, release_ns)) = test_namespace("chart-rbac").await? else {
        return Ok(());
    };
    let release = release_ns.clone();
    install(
        cp,
        "install",
        &release,
        &release_ns,
        &["chat.enabled=false", "operator.replicas=1"],
    )?;
    let ns = unique_namespace("chart-rbac-app");
    create_namespace(&admin, &ns).await?;

    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    for name in ["legacy", "candidate"] {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": {
                "replicas": 3,
                "selector": { "matchLabels": { "app": name } },
                "template": {
                    "metadata": { "labels": { "app": name } },
                    "spec": { "containers": [{ "name": "c", "image": "example.invalid/c" }] },
                },
            },
        }))?;
        deployments.create(&PostParams::default(), &d).await?;
    }

    let account = format!("system:serviceaccount:{release_ns}:{release}-ficus-operator");
    let groups = [
        "system:serviceaccounts",
        &format!("system:serviceaccounts:{release_ns}"),
        "system:authenticated",
    ];
    let as_operator = cp.client_as(&account, &groups).await?;
    let identity = "chart-operator";
    let _operator = Operator::start_with(
        as_operator,
        Config {
            namespace: None,
            identity: identity.into(),
            leader: Some(LeaderConfig {
                namespace: release_ns.clone(),
                ..ficus_e2e::operator::short_lease(&release_ns)
            }),
            http_addr: None,
            webhook_token: None,
            aws: Default::default(),
            policy: None,
        },
        None,
    )?;

    let api: Api<Migration> = Api::namespaced(admin.clone(), &ns);
    let migration: Migration = serde_json::from_value(json!({
        "apiVersion": "ficus.dev/v1alpha1",
        "kind": "Migration",
        "metadata": { "name": "m" },
        "spec": {
            "service": "chat",
            "legacy": { "deployment": "legacy" },
            "candidate": { "deployment": "candidate" },
            "flags": { "configMap": { "name": "flags" } },
            "shadow": { "duration": "0s" },
            "backfill": { "image": "example.invalid/chat-service", "args": ["backfill"], "parallelism": 1 },
            "steps": [100],
            "bakeTime": "1s",
            "cutover": { "completeAfter": "1s", "scaleDownLegacy": true },
        },
    }))?;
    api.create(&PostParams::default(), &migration).await?;

    // Backfill: the operator creates the Job; no kubelet runs it here, so complete it by hand.
    wait_for_job(&admin, &ns, "chat-backfill-1", LONG).await;
    finish_job(&admin, &ns, "chat-backfill-1", Ok(())).await?;

    let done = wait_for(&api, "m", LONG, "Completed", |m| {
        m.status
            .as_ref()
            .is_some_and(|s| s.phase == Phase::Completed)
    })
    .await;
    let status = done.status.expect("status");
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.type_ != "Degraded" || c.status == "False"),
        "never degraded by a forbidden call: {:?}",
        status.conditions
    );
    let flags = Api::<ConfigMap>::namespaced(admin.clone(), &ns)
        .get("flags")
        .await?
        .data
        .unwrap_or_default();
    assert_eq!(
        (
            flags.get("write_primary").map(String::as_str),
            flags.get("read_split_percent").map(String::as_str)
        ),
        (Some("new"), Some("100"))
    );
    // Completed is recorded before the scale call is made, so legacy follows a moment later.
    let deadline = tokio::time::Instant::now() + LONG;
    let mut replicas = None;
    while tokio::time::Instant::now() < deadline {
        replicas = deployments.get("legacy").await?.spec.replicas;
        if replicas == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        replicas,
        Some(0),
        "legacy scaled down through deployments/scale"
    );
    let lease = Api::<Lease>::namespaced(admin.clone(), &release_ns)
        .get("ficus-operator-leader")
        .await?;
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(identity)
    );
    let events = cp.kubectl(&["get", "events.events.k8s.io", "-n", &ns, "-o", "name"])?;
    assert!(
        events.success() && !events.stdout.trim().is_empty(),
        "Events recorded: {events}"
    );

    // And no more: the ServiceAccount cannot read Secrets or delete Deployments.
    for (verb, resource) in [
        ("get", "secrets"),
        ("delete", "deployments"),
        ("list", "pods"),
    ] {
        let out = cp.kubectl(&["auth", "can-i", verb, resource, "-n", &ns, "--as", &account])?;
        assert_eq!(out.stdout.trim(), "no", "{verb} {resource}: {out}");
    }
    Ok(())
}
