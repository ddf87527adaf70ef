//! The Alertmanager webhook receiver: the pushed alert path.
//!
//! A firing alert named in a Migration's `rollback.onAlerts` (and carrying its labels) is
//! written to the Migration's `ficus.dev/firing-alerts` annotation. The write is a watch event,
//! so the leader reconciles at once, whichever replica received the call; and the state
//! survives restarts until Alertmanager reports the alert resolved.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use crate::crd::{Migration, annotations};

/// The part of Alertmanager's webhook payload (version 4) Ficus reads.
#[derive(Debug, Deserialize)]
pub struct Payload {
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Deserialize)]
pub struct Alert {
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("listing Migrations: {0}")]
    List(#[source] kube::Error),
    #[error(
        "Migration {name} kept changing under 5 attempts to record the alert; Alertmanager will retry"
    )]
    Contended { name: String },
    #[error("updating Migration {name}: {source}")]
    Patch {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Does this alert concern this Migration? Its name is in `onAlerts`, it carries every selector
/// label, and a `namespace` label (if any) names the Migration's namespace.
pub fn concerns(alert: &Alert, mig: &Migration) -> bool {
    let Some(name) = alert.labels.get("alertname") else {
        return false;
    };
    let ns = mig.namespace().unwrap_or_default();
    mig.spec.rollback.on_alerts.iter().any(|a| a == name)
        && mig
            .spec
            .alert_selector()
            .iter()
            .all(|(k, v)| alert.labels.get(k) == Some(v))
        && alert.labels.get("namespace").is_none_or(|n| *n == ns)
}

/// The annotation value after these alerts; None when it does not change.
pub fn next_firing(mig: &Migration, alerts: &[Alert]) -> Option<BTreeSet<String>> {
    let current: BTreeSet<String> = mig
        .annotations()
        .get(annotations::FIRING_ALERTS)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let mut next = current.clone();
    for alert in alerts.iter().filter(|a| concerns(a, mig)) {
        let name = alert.labels["alertname"].clone();
        if alert.status == "firing" {
            next.insert(name);
        } else {
            next.remove(&name);
        }
    }
    (next != current).then_some(next)
}

/// Applies a webhook call to every Migration it concerns; returns how many changed.
pub async fn receive(
    client: Client,
    namespace: Option<&str>,
    payload: &Payload,
) -> Result<usize, WebhookError> {
    let api: Api<Migration> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let migrations = api
        .list(&ListParams::default())
        .await
        .map_err(WebhookError::List)?;
    let mut changed = 0;
    for mig in migrations.items {
        if update(&client, mig, &payload.alerts).await? {
            changed += 1;
        }
    }
    Ok(changed)
}

/// Read-modify-write of one Migration's annotation. The resourceVersion precondition keeps a
/// concurrent writer (the reconciler, another webhook call) from being overwritten; on a
/// conflict the Migration is read again and the change recomputed.
async fn update(
    client: &Client,
    mut mig: Migration,
    alerts: &[Alert],
) -> Result<bool, WebhookError> {
    let name = mig.name_any();
    let api: Api<Migration> = Api::namespaced(client.clone(), &mig.namespace().unwrap_or_default());
    for _ in 0..5 {
        let Some(next) = next_firing(&mig, alerts) else {
            return Ok(false);
        };
        let value = (!next.is_empty()).then(|| next.iter().cloned().collect::<Vec<_>>().join(","));
        let patch = json!({ "metadata": {
            "resourceVersion": mig.resource_version(),
            "annotations": { annotations::FIRING_ALERTS: value },
        }});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(migration = %name, firing = ?next, "alert state from Alertmanager");
                return Ok(true);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                mig = api.get(&name).await.map_err(|source| WebhookError::Patch {
                    name: name.clone(),
                    source,
                })?;
            }
            Err(source) => return Err(WebhookError::Patch { name, source }),
        }
    }
    Err(WebhookError::Contended { name })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mig(on_alerts: &[&str]) -> Migration {
        serde_json::from_value(json!({
            "apiVersion": "ficus.dev/v1alpha1", "kind": "Migration",
            "metadata": { "name": "m", "namespace": "chat" },
            "spec": { "service": "chat", "flags": { "configMap": { "name": "f" } }, "steps": [10],
                      "rollback": { "onAlerts": on_alerts } },
        }))
        .expect("valid")
    }

    fn alert(status: &str, labels: &[(&str, &str)]) -> Alert {
        Alert {
            status: status.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn an_alert_concerns_a_migration_by_name_service_and_namespace() {
        let m = mig(&["ChatDataInconsistency"]);
        assert!(concerns(
            &alert(
                "firing",
                &[("alertname", "ChatDataInconsistency"), ("service", "chat")]
            ),
            &m
        ));
        assert!(concerns(
            &alert(
                "firing",
                &[
                    ("alertname", "ChatDataInconsistency"),
                    ("service", "chat"),
                    ("namespace", "chat")
                ]
            ),
            &m
        ));
        assert!(!concerns(
            &alert(
                "firing",
                &[
                    ("alertname", "ChatDataInconsistency"),
                    ("service", "chat"),
                    ("namespace", "other")
                ]
            ),
            &m
        ));
        assert!(!concerns(
            &alert(
                "firing",
                &[
                    ("alertname", "ChatDataInconsistency"),
                    ("service", "devices")
                ]
            ),
            &m
        ));
        assert!(!concerns(
            &alert(
                "firing",
                &[("alertname", "SomethingElse"), ("service", "chat")]
            ),
            &m
        ));
        assert!(!concerns(&alert("firing", &[("service", "chat")]), &m));
    }

    #[test]
    fn firing_adds_resolved_removes_and_no_change_is_none() {
        let mut m = mig(&["A", "B"]);
        let firing = next_firing(
            &m,
            &[alert("firing", &[("alertname", "A"), ("service", "chat")])],
        );
        assert_eq!(firing, Some(BTreeSet::from(["A".to_string()])));
        m.annotations_mut()
            .insert(annotations::FIRING_ALERTS.into(), "A".into());
        assert_eq!(
            next_firing(
                &m,
                &[alert("firing", &[("alertname", "A"), ("service", "chat")])]
            ),
            None
        );
        assert_eq!(
            next_firing(
                &m,
                &[alert(
                    "resolved",
                    &[("alertname", "A"), ("service", "chat")]
                )]
            ),
            Some(BTreeSet::new())
        );
    }
}
