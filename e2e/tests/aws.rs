//! The AWS estate through moto's server: SSM Parameter Store flags and ECS workloads, driven
//! by the same Migration resource on a real kube-apiserver.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ecs::types::ContainerDefinition;
use ficus_e2e::operator::{Operator, test_namespace, wait_for};
use ficus_operator::crd::{Migration, Phase};
use ficus_testkit::moto::Moto;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);
const REGION: &str = ficus_testkit::moto::REGION;

struct Aws {
    moto: Moto,
    ssm: aws_sdk_ssm::Client,
    ecs: aws_sdk_ecs::Client,
}

async fn setup(prefix: &str) -> anyhow::Result<Option<(Client, String, Aws, Operator)>> {
    ficus_testkit::moto::use_test_credentials();
    let moto = match Moto::start() {
        Ok(m) => m,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return Ok(None);
        }
    };
    let Some((_cp, client, ns)) = test_namespace(prefix).await? else {
        return Ok(None);
    };
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(moto.url())
        .load()
        .await;
    let aws = Aws {
        ssm: aws_sdk_ssm::Client::new(&config),
        ecs: aws_sdk_ecs::Client::new(&config),
        moto,
    };
    let operator = Operator::start(client.clone(), &ns, "aws", None);
    Ok(Some((client, ns, aws, operator)))
}

impl Aws {
    /// A cluster with a legacy service at `legacy` tasks and a new one at 2.
    async fn services(&self, cluster: &str, legacy: i32) -> anyhow::Result<()> {
        self.ecs
            .create_cluster()
            .cluster_name(cluster)
            .send()
            .await?;
        let container = ContainerDefinition::builder()
            .name("app")
            .image("devices:1")
            .memory(256)
            .build();
        self.ecs
            .register_task_definition()
            .family("devices")
            .container_definitions(container)
            .send()
            .await?;
        for (name, count) in [("devices-old", legacy), ("devices-new", 2)] {
            self.ecs
                .create_service()
                .cluster(cluster)
                .service_name(name)
                .task_definition("devices")
                .desired_count(count)
                .send()
                .await?;
        }
        Ok(())
    }

    async fn desired(&self, cluster: &str, service: &str) -> anyhow::Result<i32> {
        let out = self
            .ecs
            .describe_services()
            .cluster(cluster)
            .services(service)
            .send()
            .await?;
        Ok(out
            .services()
            .first()
            .map(|s| s.desired_count())
            .unwrap_or(-1))
    }

    /// Waits until the parameter `prefix+key` holds `value` (the operator records a decision in
    /// status before it writes the stores), then returns every parameter under `prefix`.
    async fn await_parameter(
        &self,
        prefix: &str,
        key: &str,
        value: &str,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let start = std::time::Instant::now();
        loop {
            let p = self.parameters(prefix).await?;
            if p.get(key).map(String::as_str) == Some(value) {
                return Ok(p);
            }
            anyhow::ensure!(
                start.elapsed() < LONG,
                "{prefix}{key} never became {value:?}; parameters: {p:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every parameter under `prefix`, by its name after the prefix.
    async fn parameters(&self, prefix: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let out = self
            .ssm
            .get_parameters_by_path()
            .path(prefix)
            .with_decryption(true)
            .send()
            .await?;
        Ok(ficus_flags::ssm_client::by_key(prefix, out.parameters()))
    }
}

fn devices_migration(endpoint: &str, cluster: &str, extra: serde_json::Value) -> Migration {
    let mut spec = json!({
        "service": "devices",
        "legacy": { "ecs": { "cluster": cluster, "service": "devices-old" } },
        "candidate": { "ecs": { "cluster": cluster, "service": "devices-new" } },
        "flags": { "ssm": { "prefix": "/hse/devices/" } },
        "aws": { "region": REGION, "endpointUrl": endpoint },
        "shadow": { "duration": "0s" },
        "steps": [10, 50, 100],
        "bakeTime": "1h",
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({ "apiVersion": "ficus.dev/v1alpha1", "kind": "Migration", "metadata": { "name": "devices" }, "spec": spec }))
        .expect("a valid Migration")
}

fn phase(m: &Migration) -> Phase {
    m.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn step(m: &Migration) -> Option<i32> {
    m.status.as_ref().and_then(|s| s.step)
}

fn degraded(m: &Migration) -> Option<(String, String)> {
    let c = m
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == "True")?;
    Some((c.reason.clone(), c.message.clone()))
}

async fn promote(api: &Api<Migration>, name: &str) -> anyhow::Result<()> {
    let patch = json!({ "metadata": { "annotations": { "ficus.dev/promote": "true" } } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[tokio::test]
async fn ssm_flags_and_ecs_workloads_follow_each_step_and_rollback_restores_legacy()
-> anyhow::Result<()> {
    let Some((client, ns, aws, _operator)) = setup("aws-plan").await? else {
        return Ok(());
    };
    aws.services("hse", 4).await?;
    let api: Api<Migration> = Api::namespaced(client.clone(), &ns);
    api.create(
        &PostParams::default(),
        &devices_migration(&aws.moto.url(), "hse", json!({})),
    )
    .await?;

    let m = wait_for(&api, "devices", LONG, "step 1", |m| step(m) == Some(1)).await;
    assert_eq!(
        m.status.as_ref().and_then(|s| s.legacy_replicas_before),
        Some(4),
        "the pre-migration desired count is remembered"
    );
    // Generations 1 (Preflight), 2 (Shadow), 3 (step 1). `generation` is written last, so once
    // it reads 3 every value of that document is in place.
    let p = aws
        .await_parameter("/hse/devices/", "generation", "3")
        .await?;
    assert_eq!(
        (
            p["traffic-split-percent"].as_str(),
            p["use-new-system"].as_str()
        ),
        ("10", "true")
    );
    assert_eq!(
        (
            p["read_split_percent"].as_str(),
            p["write_primary"].as_str(),
            p["dual_write"].as_str()
        ),
        ("10", "legacy", "sync")
    );

    promote(&api, "devices").await?;
    wait_for(&api, "devices", LONG, "step 2", |m| step(m) == Some(2)).await;
    let p = aws
        .await_parameter("/hse/devices/", "generation", "4")
        .await?;
    assert_eq!(
        p["traffic-split-percent"], "50",
        "one generation per change"
    );

    // Someone scaled the legacy service down during the migration; rollback brings it back.
    aws.ecs
        .update_service()
        .cluster("hse")
        .service("devices-old")
        .desired_count(1)
        .send()
        .await?;
    let patch = json!({ "metadata": { "annotations": { "ficus.dev/abort": "true" } } });
    api.patch("devices", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_for(&api, "devices", LONG, "RolledBack", |m| {
        phase(m) == Phase::RolledBack
    })
    .await;
    let p = aws
        .await_parameter("/hse/devices/", "traffic-split-percent", "0")
        .await?;
    assert_eq!(
        (p["use-new-system"].as_str(), p["write_primary"].as_str()),
        ("false", "legacy")
    );
    assert_eq!(
        aws.desired("hse", "devices-old").await?,
        4,
        "legacy desired count restored"
    );
    Ok(())
}

#[tokio::test]
async fn completion_scales_the_legacy_service_to_zero_when_the_spec_asks() -> anyhow::Result<()> {
    let Some((client, ns, aws, _operator)) = setup("aws-complete").await? else {
        return Ok(());
    };
    aws.services("hse", 3).await?;
    let api: Api<Migration> = Api::namespaced(client.clone(), &ns);
    let extra = json!({ "steps": [100], "bakeTime": "1s", "cutover": { "completeAfter": "1s", "scaleDownLegacy": true } });
    api.create(
        &PostParams::default(),
        &devices_migration(&aws.moto.url(), "hse", extra),
    )
    .await?;
    wait_for(&api, "devices", LONG, "Completed", |m| {
        phase(m) == Phase::Completed
    })
    .await;
    let p = aws
        .await_parameter("/hse/devices/", "write_primary", "new")
        .await?;
    let p = if p["dual_write"] == "off" {
        p
    } else {
        aws.await_parameter("/hse/devices/", "dual_write", "off")
            .await?
    };
    assert_eq!(p["traffic-split-percent"], "100");
    for _ in 0..50 {
        if aws.desired("hse", "devices-old").await? == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(aws.desired("hse", "devices-old").await?, 0);
    assert_eq!(
        aws.desired("hse", "devices-new").await?,
        2,
        "the candidate is left alone"
    );
    Ok(())
}

#[tokio::test]
async fn secure_string_parameters_are_encrypted_and_still_read_back() -> anyhow::Result<()> {
    let Some((client, ns, aws, _operator)) = setup("aws-secure").await? else {
        return Ok(());
    };
    let api: Api<Migration> = Api::namespaced(client.clone(), &ns);
    let m: Migration = serde_json::from_value(json!({
        "apiVersion": "ficus.dev/v1alpha1", "kind": "Migration", "metadata": { "name": "secure" },
        "spec": {
            "service": "devices",
            "flags": { "ssm": { "prefix": "/hse/secure/", "secure": true } },
            "aws": { "region": REGION, "endpointUrl": aws.moto.url() },
            "shadow": { "duration": "0s" }, "steps": [10, 100], "bakeTime": "1h",
        },
    }))?;
    api.create(&PostParams::default(), &m).await?;
    // Reaching step 1 needs the preflight document read back: decryption works.
    wait_for(&api, "secure", LONG, "step 1", |m| step(m) == Some(1)).await;
    let raw = aws
        .ssm
        .get_parameter()
        .name("/hse/secure/traffic-split-percent")
        .with_decryption(false)
        .send()
        .await?;
    let parameter = raw.parameter().expect("the parameter exists");
    assert_eq!(
        parameter.r#type(),
        Some(&aws_sdk_ssm::types::ParameterType::SecureString)
    );
    assert_ne!(parameter.value(), Some("10"), "not stored in the clear");
    Ok(())
}

#[tokio::test]
async fn missing_clusters_and_services_are_degraded_while_other_migrations_keep_running()
-> anyhow::Result<()> {
    let Some((client, ns, aws, _operator)) = setup("aws-missing").await? else {
        return Ok(());
    };
    aws.services("hse", 2).await?;
    let api: Api<Migration> = Api::namespaced(client.clone(), &ns);
    let url = aws.moto.url();

    let mut no_cluster = devices_migration(
        &url,
        "no-such-cluster",
        json!({ "flags": { "ssm": { "prefix": "/a/" } } }),
    );
    no_cluster.metadata.name = Some("no-cluster".into());
    let mut no_service = devices_migration(
        &url,
        "hse",
        json!({ "flags": { "ssm": { "prefix": "/b/" } } }),
    );
    no_service.metadata.name = Some("no-service".into());
    no_service
        .spec
        .legacy
        .as_mut()
        .and_then(|w| w.ecs.as_mut())
        .expect("ecs")
        .service = "no-such-service".into();
    let mut healthy = devices_migration(
        &url,
        "hse",
        json!({ "flags": { "ssm": { "prefix": "/c/" } } }),
    );
    healthy.metadata.name = Some("healthy".into());
    for m in [&no_cluster, &no_service, &healthy] {
        api.create(&PostParams::default(), m).await?;
    }

    let m = wait_for(&api, "no-cluster", LONG, "Degraded", |m| {
        degraded(m).is_some()
    })
    .await;
    let (reason, message) = degraded(&m).expect("degraded");
    assert_eq!(reason, "WorkloadNotFound");
    assert!(message.contains("no-such-cluster"), "{message}");
    let m = wait_for(&api, "no-service", LONG, "Degraded", |m| {
        degraded(m).is_some()
    })
    .await;
    let (reason, message) = degraded(&m).expect("degraded");
    assert_eq!(reason, "WorkloadNotFound");
    assert!(message.contains("no-such-service"), "{message}");
    assert_eq!(phase(&m), Phase::Preflight);
    wait_for(
        &api,
        "healthy",
        LONG,
        "the healthy Migration at step 1",
        |m| step(m) == Some(1),
    )
    .await;

    // Deleted parameters are written again at the next reconcile (here the one the promote
    // triggers; a Migration between evaluations is not re-read on a timer), with the next
    // step's values.
    let names: Vec<String> = aws
        .await_parameter("/c/", "traffic-split-percent", "10")
        .await?
        .keys()
        .map(|k| format!("/c/{k}"))
        .collect();
    aws.ssm
        .delete_parameters()
        .set_names(Some(names))
        .send()
        .await?;
    promote(&api, "healthy").await?;
    wait_for(&api, "healthy", LONG, "step 2", |m| step(m) == Some(2)).await;
    aws.await_parameter("/c/", "traffic-split-percent", "50")
        .await?;
    Ok(())
}
