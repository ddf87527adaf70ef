//! The operator's policy against a real kube-apiserver, with two namespaces and two users who
//! may create Migrations only in their own (impersonated, through RBAC): what a Migration asks
//! beyond its namespace's allowlists is refused before anything is called (no request to the
//! Prometheus it names, no Job, no flag written), Degraded says which field and which policy
//! entry; the allowed Migration next door runs, its Job as the policy's ServiceAccount without
//! an API token; fixing the refused spec lets it proceed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ficus_e2e::operator::{Operator, degraded, migration, test_namespace, wait_for, wait_for_job};
use ficus_operator::crd::{Migration, Phase};
use ficus_operator::policy::Policy;
use ficus_operator::run::Config;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

/// May create and read Migrations in `ns`, nothing else.
fn author_role(ns: &str, user: &str) -> String {
    format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{ name: migration-author, namespace: {ns} }}
rules:
  - {{ apiGroups: [ficus.dev], resources: [migrations], verbs: [get, list, watch, create, patch, update] }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{ name: migration-author, namespace: {ns} }}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: Role, name: migration-author }}
subjects: [{{ kind: User, name: {user} }}]
"#
    )
}

/// A TCP listener that counts the connections made to it: the Prometheus a refused Migration
/// names must never be called.
async fn trap() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a local port");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    (url, hits)
}

#[tokio::test]
async fn a_migration_gets_only_what_the_policy_allows_its_namespace() -> anyhow::Result<()> {
    let Some((cp, admin, team_a)) = test_namespace("policy-a").await? else {
        return Ok(());
    };
    let team_b = ficus_testkit::unique_namespace("policy-b");
    ficus_testkit::create_namespace(&admin, &team_b).await?;
    for (ns, user) in [(&team_a, "alice"), (&team_b, "bob")] {
        let out = cp.kubectl_stdin(&["apply", "-f", "-"], &author_role(ns, user))?;
        assert!(out.success(), "{out}");
    }
    let alice = cp.client_as("alice", &["system:authenticated"]).await?;
    let bob = cp.client_as("bob", &["system:authenticated"]).await?;

    let (team_a_prometheus, team_a_hits) = trap().await;
    let policy = Policy::parse(&format!(
        r#"
namespaces:
  {team_a}:
    prometheusUrls: ["{team_a_prometheus}"]
    jobImages: ["registry.example/chat-service:"]
    jobSecrets: ["chat-db"]
  {team_b}:
    ssmPrefixes: ["/team-b/"]
jobServiceAccount: ficus-jobs
"#
    ))
    .map_err(anyhow::Error::msg)?;
    let _operator = Operator::start_with(
        admin.clone(),
        Config {
            namespace: None,
            identity: "policy-operator".into(),
            leader: None,
            http_addr: None,
            webhook_token: None,
            aws: Default::default(),
            policy: Some(policy),
        },
        None,
    )?;

    // Bob reaches for team A's Prometheus, runs his own image with team A's kind of Secret, and
    // points the AWS SDK at his own endpoint.
    let bobs: Api<Migration> = Api::namespaced(bob.clone(), &team_b);
    let steal = migration(
        "steal",
        json!({
            "service": "chat",
            "flags": { "configMap": { "name": "flags" } },
            "steps": [100],
            "analysis": { "prometheus": { "url": team_a_prometheus }, "gates": [] },
            "backfill": { "image": "evil.example/exfiltrate:1", "args": ["x"], "secretName": "chat-db" },
            "aws": { "endpointUrl": "http://127.0.0.1:9/" },
        }),
    );
    bobs.create(&PostParams::default(), &steal).await?;
    let refused = wait_for(&bobs, "steal", LONG, "PolicyRefused", |m| {
        degraded(m).is_some_and(|(s, r, _)| s == "True" && r == "PolicyRefused")
    })
    .await;
    let (_, _, message) = degraded(&refused).expect("Degraded");
    for part in [
        &format!(
            "analysis.prometheus.url \"{team_a_prometheus}\" is not allowed by the operator's policy: the policy's namespaces.{team_b}.prometheusUrls allows none"
        ),
        "backfill.image \"evil.example/exfiltrate:1\"",
        "backfill.secretName \"chat-db\"",
        "aws.endpointUrl \"http://127.0.0.1:9/\"",
    ] {
        assert!(message.contains(part), "{part} in {message}");
    }
    // A few reconciles later: still nothing called, nothing written.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        team_a_hits.load(Ordering::SeqCst),
        0,
        "no request to team A's Prometheus"
    );
    let jobs = Api::<Job>::namespaced(admin.clone(), &team_b)
        .list(&Default::default())
        .await?;
    assert!(jobs.items.is_empty(), "no Job: {:?}", jobs.items);
    assert!(
        Api::<ConfigMap>::namespaced(admin.clone(), &team_b)
            .get_opt("flags")
            .await?
            .is_none(),
        "no flag written"
    );
    let phase = refused.status.as_ref().map(|s| s.phase);
    assert!(
        matches!(phase, Some(Phase::Pending) | Some(Phase::Preflight) | None),
        "did not progress: {phase:?}"
    );

    // Alice's Migration stays within team A's allowlists: it runs, its Job as the policy's
    // ServiceAccount without an API token.
    let alices: Api<Migration> = Api::namespaced(alice.clone(), &team_a);
    let allowed = migration(
        "move",
        json!({
            "service": "chat",
            "flags": { "configMap": { "name": "flags" } },
            "steps": [100],
            "shadow": { "duration": "0s" },
            "backfill": { "image": "registry.example/chat-service:1.0", "args": ["backfill"], "secretName": "chat-db" },
        }),
    );
    alices.create(&PostParams::default(), &allowed).await?;
    let job = wait_for_job(&admin, &team_a, "chat-backfill-1", LONG).await;
    let template = job.spec.map(|s| s.template).expect("a pod template");
    // Its progress is served for Prometheus while it runs: the address, the port, the
    // annotations a kubernetes_sd pod job keys on.
    let annotations = template
        .metadata
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    assert_eq!(
        (
            annotations.get("prometheus.io/scrape").map(String::as_str),
            annotations.get("prometheus.io/port").map(String::as_str)
        ),
        (Some("true"), Some("9464"))
    );
    let pod = template.spec.expect("a pod spec");
    let container = &pod.containers[0];
    assert_eq!(
        container
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.container_port))
            .collect::<Vec<_>>(),
        vec![(Some("metrics"), 9464)]
    );
    assert!(
        container
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "FICUS_METRICS_ADDR" && e.value.as_deref() == Some("0.0.0.0:9464")),
        "{:?}",
        container.env
    );
    assert_eq!(
        (
            pod.service_account_name.as_deref(),
            pod.automount_service_account_token
        ),
        (Some("ficus-jobs"), Some(false))
    );
    let moving = alices.get("move").await?;
    assert!(
        degraded(&moving).is_none_or(|(s, _, _)| s == "False"),
        "{:?}",
        degraded(&moving)
    );

    // Bob drops what he may not have: the Migration proceeds and Degraded clears.
    bobs.patch(
        "steal",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "analysis": null, "backfill": null, "aws": null } })),
    )
    .await?;
    wait_for(&bobs, "steal", LONG, "past Preflight, not Degraded", |m| {
        degraded(m).is_some_and(|(s, _, _)| s == "False")
            && m.status
                .as_ref()
                .is_some_and(|s| !matches!(s.phase, Phase::Pending | Phase::Preflight))
    })
    .await;
    assert!(
        Api::<ConfigMap>::namespaced(admin.clone(), &team_b)
            .get_opt("flags")
            .await?
            .is_some(),
        "flags written once allowed"
    );
    Ok(())
}
