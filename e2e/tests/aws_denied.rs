//! A denied AWS call: moto enforces IAM for a user whose policy lacks `ssm:PutParameter`. The
//! Migration is Degraded with a reason naming the missing action; nothing crashes and a
//! Migration that needs no AWS keeps running. (Own test binary: the operator reads its AWS
//! credentials from the process environment.)

use std::time::Duration;

use ficus_e2e::operator::{Operator, install_crds, wait_for};
use ficus_operator::crd::{Migration, Phase};
use ficus_testkit::moto::Moto;
use ficus_testkit::{ControlPlane, create_namespace, unique_namespace};
use kube::api::{Api, PostParams};
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

/// Creates, through boto3 (in moto's own virtualenv), a user allowed everything on ECS and
/// reading SSM, but not writing it; prints its access key. These three calls are the only ones
/// moto lets through before it starts enforcing IAM.
const MAKE_USER: &str = r#"
import boto3, json, sys
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam.create_user(UserName="ficus-operator")
iam.put_user_policy(UserName="ficus-operator", PolicyName="read-only-flags", PolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["ssm:GetParameters", "ecs:*"], "Resource": "*"}],
}))
key = iam.create_access_key(UserName="ficus-operator")["AccessKey"]
print(key["AccessKeyId"], key["SecretAccessKey"])
"#;

#[tokio::test]
async fn a_denied_ssm_write_is_degraded_naming_the_missing_iam_action() -> anyhow::Result<()> {
    ficus_testkit::init();
    let cp = match ControlPlane::shared() {
        Ok(cp) => cp,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return Ok(());
        }
    };
    let moto = match Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]) {
        Ok(m) => m,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return Ok(());
        }
    };
    let out = std::process::Command::new(Moto::python()?)
        .args(["-c", MAKE_USER, &moto.url()])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "creating the IAM user failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = String::from_utf8(out.stdout)?;
    let (id, secret) = keys
        .trim()
        .split_once(' ')
        .ok_or_else(|| anyhow::anyhow!("no access key printed: {keys}"))?;
    // SAFETY: this binary's only test sets the environment before it starts any thread that
    // reads it (the operator and its SDK clients come later).
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", id);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", secret);
    }

    install_crds(cp)?;
    let client = cp.client().await?;
    let ns = unique_namespace("aws-denied");
    create_namespace(&client, &ns).await?;
    let _operator = Operator::start(client.clone(), &ns, "denied", None);
    let api: Api<Migration> = Api::namespaced(client.clone(), &ns);
    let denied: Migration = serde_json::from_value(json!({
        "apiVersion": "ficus.dev/v1alpha1", "kind": "Migration", "metadata": { "name": "denied" },
        "spec": {
            "service": "devices",
            "flags": { "ssm": { "prefix": "/hse/devices/" } },
            "aws": { "region": "us-east-1", "endpointUrl": moto.url() },
            "shadow": { "duration": "0s" }, "steps": [10, 100], "bakeTime": "1h",
        },
    }))?;
    let other: Migration = serde_json::from_value(json!({
        "apiVersion": "ficus.dev/v1alpha1", "kind": "Migration", "metadata": { "name": "other" },
        "spec": { "service": "chat", "flags": { "configMap": { "name": "flags" } }, "shadow": { "duration": "0s" }, "steps": [10, 100], "bakeTime": "1h" },
    }))?;
    api.create(&PostParams::default(), &denied).await?;
    api.create(&PostParams::default(), &other).await?;

    let m = wait_for(&api, "denied", LONG, "Degraded", |m| {
        m.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.status == "True")
        })
    })
    .await;
    let condition = m
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded").cloned())
        .expect("Degraded");
    assert_eq!(condition.reason, "AwsAccessDenied");
    assert!(
        condition.message.contains("ssm:PutParameter"),
        "the message names the IAM action: {}",
        condition.message
    );
    assert_eq!(
        m.status.as_ref().map(|s| s.phase),
        Some(Phase::Preflight),
        "no progress without a writable store"
    );
    wait_for(&api, "other", LONG, "the other Migration at step 1", |m| {
        m.status.as_ref().is_some_and(|s| s.step == Some(1))
    })
    .await;
    Ok(())
}
