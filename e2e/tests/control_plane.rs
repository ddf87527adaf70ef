//! Smoke test of the harness itself against the real etcd + kube-apiserver.

use std::collections::BTreeMap;

use ficus_testkit::{create_namespace, unique_namespace};
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
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("greeting".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("hello".to_owned(), "world".to_owned())])),
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm).await?;
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
