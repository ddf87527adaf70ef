//! Smoke test of the harness itself against the real etcd + kube-apiserver.

use std::collections::BTreeMap;

use ficus_testkit::{ControlPlane, TestServer, create_namespace, skip_or_fail, unique_namespace};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{ListParams, ObjectMeta, PostParams},
};

#[tokio::test]
async fn control_plane_serves_client_kubectl_and_rbac() -> anyhow::Result<()> {
    let cp = ficus_testkit::control_plane_or_skip!();
    let client = cp.client().await?;

    let ns = unique_namespace("smoke");
    create_namespace(&client, &ns).await?;

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.create(&PostParams::default(), &greeting("greeting"))
        .await?;
    let read = cms.get("greeting").await?;
    assert_eq!(
        read.data.and_then(|d| d.get("hello").cloned()).as_deref(),
        Some("world")
    );

    let out = cp.kubectl(&["get", "ns", &ns, "-o", "name"])?;
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim(), format!("namespace/{ns}"));

    // A user with no RBAC bindings is authenticated (via impersonation) but not authorized.
    let nobody = cp.client_as("nobody", &["ficus-e2e:nobody"]).await?;
    let err = Api::<ConfigMap>::namespaced(nobody, &ns)
        .list(&ListParams::default())
        .await
        .expect_err("a user without RBAC must not list configmaps");
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403 Forbidden, got {other}"),
    }
    Ok(())
}

#[tokio::test]
async fn kubectl_reports_rejections() -> anyhow::Result<()> {
    let cp = ficus_testkit::control_plane_or_skip!();
    let ns = unique_namespace("reject");
    // Same shared control plane as the other test, on a different tokio runtime.
    create_namespace(&cp.client().await?, &ns).await?;

    let bad = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Not_A_Valid_Name"}}"#;
    let out = cp.kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], bad)?;
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("Invalid value"), "{out}");
    Ok(())
}

/// A ConfigMap `name` in `ns` holding `hello: world`.
fn greeting(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("hello".to_owned(), "world".to_owned())])),
        ..Default::default()
    }
}

#[tokio::test]
async fn private_control_plane_stop_and_restart_keep_the_data() -> anyhow::Result<()> {
    // A private one: stopping the shared one would break the other tests of this binary.
    let cp = skip_or_fail!(ControlPlane::start());
    let ns = unique_namespace("restart");
    let client = cp.client().await?;
    create_namespace(&client, &ns).await?;
    Api::<ConfigMap>::namespaced(client, &ns)
        .create(&PostParams::default(), &greeting("kept"))
        .await?;

    // Through the trait, as code that handles any server would.
    let server: &dyn TestServer = &cp;
    let etcd_pid = cp.etcd().pid();
    server.stop();
    let refused = cp.kubectl(&["get", "ns", &ns])?;
    assert!(!refused.success(), "{refused}");

    server.restart()?;
    assert_ne!(cp.etcd().pid(), etcd_pid);
    let cms = Api::<ConfigMap>::namespaced(cp.client().await?, &ns);
    let read = cms.get("kept").await?;
    assert_eq!(read.data, greeting("kept").data);
    Ok(())
}

#[test]
fn unique_namespaces_are_valid_dns_labels() {
    let a = unique_namespace("Some_Test::name");
    let b = unique_namespace("Some_Test::name");
    assert_ne!(a, b);
    assert!(a.len() <= 63 && a.starts_with("some-test--name-"), "{a}");
    assert!(
        a.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "{a}"
    );
}
