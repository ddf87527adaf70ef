//! `kubectl ficus`: the manual controls of a Migration (promote, abort, retry, pause, resume)
//! and a status view, so nobody has to type annotation names.
//!
//! Commands set the annotation (or `spec.paused`) and, by default, wait until the operator has
//! handled it, then say what changed. The operator's rules decide what a command does in each
//! phase (an ignored promote is an Event); this tool only reports the outcome.

use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::crd::{Migration, Phase, annotations};

/// How long a report waits, after a promote was consumed, for the status it leads to.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(clap::Parser, Debug)]
#[command(
    name = "kubectl-ficus",
    bin_name = "kubectl ficus",
    version,
    about = "Control Ficus Migrations: status, promote, abort, retry, pause, resume"
)]
pub struct Cli {
    /// Namespace of the Migration (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Phase, step, traffic and what each Migration is doing or waiting for.
    Status {
        /// One Migration (default: every Migration of the namespace).
        name: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Skip the rest of the current bake (Shadow, Split or CutOver).
    Promote(Target),
    /// Roll back now: 0 % new, legacy primary.
    Abort(Target),
    /// Start again after a rollback (RolledBack only).
    Retry(Target),
    /// Hold the Migration in its phase, flags unchanged.
    Pause(Target),
    /// Continue a paused Migration.
    Resume(Target),
}

#[derive(clap::Args, Debug)]
pub struct Target {
    /// The Migration.
    pub name: String,
    /// Seconds to wait for the operator to handle the command (0: do not wait).
    #[arg(long, default_value_t = 30)]
    pub wait: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("migration {name} not found in namespace {namespace}")]
    NotFound { namespace: String, name: String },
    #[error("{action} migration {namespace}/{name}: {source}")]
    Api {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "{command} is set on {namespace}/{name}, but the operator has not handled it within {waited}s: is it running and watching this namespace?"
    )]
    NotHandled {
        command: &'static str,
        namespace: String,
        name: String,
        waited: u64,
    },
}

/// Runs `cli` with `client`; `default_namespace` stands in for a missing `--namespace`.
/// Returns what to print.
pub async fn run(client: Client, default_namespace: &str, cli: Cli) -> Result<String, CliError> {
    let namespace = cli
        .namespace
        .unwrap_or_else(|| default_namespace.to_owned());
    let api: Api<Migration> = Api::namespaced(client.clone(), &namespace);
    match cli.command {
        Command::Status {
            name,
            all_namespaces,
        } => {
            let items = match (name, all_namespaces) {
                (Some(name), _) => vec![get(&api, &namespace, &name).await?],
                (None, true) => list(&Api::all(client), "*").await?,
                (None, false) => list(&api, &namespace).await?,
            };
            Ok(status_table(&items, all_namespaces))
        }
        Command::Promote(t) => annotate(&api, &namespace, t, annotations::PROMOTE).await,
        Command::Abort(t) => annotate(&api, &namespace, t, annotations::ABORT).await,
        Command::Retry(t) => annotate(&api, &namespace, t, annotations::RETRY).await,
        Command::Pause(t) => set_paused(&api, &namespace, t, true).await,
        Command::Resume(t) => set_paused(&api, &namespace, t, false).await,
    }
}

async fn get(api: &Api<Migration>, namespace: &str, name: &str) -> Result<Migration, CliError> {
    api.get_opt(name)
        .await
        .map_err(|source| CliError::Api {
            action: "reading",
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?
        .ok_or_else(|| CliError::NotFound {
            namespace: namespace.into(),
            name: name.into(),
        })
}

async fn list(api: &Api<Migration>, namespace: &str) -> Result<Vec<Migration>, CliError> {
    let mut items = api
        .list(&ListParams::default())
        .await
        .map_err(|source| CliError::Api {
            action: "listing",
            namespace: namespace.into(),
            name: "*".into(),
            source,
        })?
        .items;
    items.sort_by_key(|m| (m.namespace(), m.name_any()));
    Ok(items)
}

/// Sets `key` and waits until the operator removed it (it does once it acted on it).
async fn annotate(
    api: &Api<Migration>,
    namespace: &str,
    target: Target,
    key: &'static str,
) -> Result<String, CliError> {
    let before = get(api, namespace, &target.name).await?;
    let patch = json!({ "metadata": { "annotations": { key: Timestamp::now().to_string() } } });
    patch_migration(api, namespace, &target.name, &patch).await?;
    let command = key.trim_start_matches("ficus.dev/");
    if target.wait == 0 {
        return Ok(format!("{command}: set on {namespace}/{}\n", target.name));
    }
    let handled = wait_handled(api, namespace, &target, command, |m| {
        !m.annotations().contains_key(key)
    })
    .await?;
    // The operator removes a promote before acting on it (so a crash can never apply it twice):
    // the new status follows within the same reconcile. Give it a moment to land.
    let was = position(&before);
    let moved = wait_until(api, namespace, &target.name, SETTLE, |m| position(m) != was).await?;
    Ok(outcome(
        command,
        &before,
        moved.as_ref().unwrap_or(&handled),
    ))
}

async fn set_paused(
    api: &Api<Migration>,
    namespace: &str,
    target: Target,
    paused: bool,
) -> Result<String, CliError> {
    let before = get(api, namespace, &target.name).await?;
    let command = if paused { "pause" } else { "resume" };
    if before.spec.paused == paused {
        return Ok(format!(
            "{command}: {namespace}/{} is already {}\n",
            target.name,
            if paused { "paused" } else { "not paused" }
        ));
    }
    patch_migration(
        api,
        namespace,
        &target.name,
        &json!({ "spec": { "paused": paused } }),
    )
    .await?;
    if target.wait == 0 {
        return Ok(format!(
            "{command}: spec.paused set to {paused} on {namespace}/{}\n",
            target.name
        ));
    }
    let generation = before.metadata.generation.unwrap_or(0) + 1;
    let after = wait_handled(api, namespace, &target, command, |m| {
        m.status
            .as_ref()
            .and_then(|s| s.observed_generation)
            .is_some_and(|g| g >= generation)
    })
    .await?;
    Ok(outcome(command, &before, &after))
}

async fn patch_migration(
    api: &Api<Migration>,
    namespace: &str,
    name: &str,
    patch: &serde_json::Value,
) -> Result<(), CliError> {
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|source| match &source {
            kube::Error::Api(s) if s.code == 404 => CliError::NotFound {
                namespace: namespace.into(),
                name: name.into(),
            },
            _ => CliError::Api {
                action: "patching",
                namespace: namespace.into(),
                name: name.into(),
                source,
            },
        })?;
    Ok(())
}

/// Waits up to `target.wait` seconds until `done` shows the operator handled `command`.
async fn wait_handled(
    api: &Api<Migration>,
    namespace: &str,
    target: &Target,
    command: &'static str,
    done: impl Fn(&Migration) -> bool,
) -> Result<Migration, CliError> {
    let within = Duration::from_secs(target.wait);
    wait_until(api, namespace, &target.name, within, done)
        .await?
        .ok_or_else(|| CliError::NotHandled {
            command,
            namespace: namespace.into(),
            name: target.name.clone(),
            waited: target.wait,
        })
}

/// Polls Migration `name` until `done` holds (`Some`), or `None` after `within`.
async fn wait_until(
    api: &Api<Migration>,
    namespace: &str,
    name: &str,
    within: Duration,
    done: impl Fn(&Migration) -> bool,
) -> Result<Option<Migration>, CliError> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let m = get(api, namespace, name).await?;
        if done(&m) {
            return Ok(Some(m));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `promote: chat/m Split step 1/3 (10%) -> Split step 2/3 (50%)`, with the reason when the
/// command changed nothing.
pub fn outcome(command: &str, before: &Migration, after: &Migration) -> String {
    let (was, now) = (position(before), position(after));
    let name = format!(
        "{}/{}",
        after.namespace().unwrap_or_default(),
        after.name_any()
    );
    if was == now {
        return format!(
            "{command}: {name} stays {now}: {}\n(kubectl describe migration {} -n {} shows the Events)\n",
            message(after),
            after.name_any(),
            after.namespace().unwrap_or_default()
        );
    }
    format!("{command}: {name} {was} -> {now}\n")
}

/// `Split step 2/3 (50%)`, `Shadow (0%)`.
fn position(m: &Migration) -> String {
    let status = m.status.clone().unwrap_or_default();
    match status.step {
        Some(step) => format!(
            "{} step {step}/{} ({}%)",
            status.phase,
            m.spec.steps.len(),
            status.traffic_percent
        ),
        None => format!("{} ({}%)", status.phase, status.traffic_percent),
    }
}

/// What the Migration is doing or why it is stuck: the Degraded message when degraded, the
/// last rollback when rolled back, else the Progressing message.
fn message(m: &Migration) -> String {
    let Some(status) = &m.status else {
        return "not reconciled yet".into();
    };
    let condition = |type_: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status == "True", c.message.clone()))
    };
    if let Some((true, message)) = condition("Degraded") {
        return format!("degraded: {message}");
    }
    if matches!(status.phase, Phase::RollingBack | Phase::RolledBack)
        && let Some(r) = &status.last_rollback
    {
        return format!("rolled back from {} ({}): {}", r.from, r.reason, r.message);
    }
    condition("Progressing").map_or_else(String::new, |(_, message)| message)
}

/// A table like `kubectl get`, plus what each Migration is doing.
pub fn status_table(items: &[Migration], with_namespace: bool) -> String {
    if items.is_empty() {
        return "no Migrations found\n".into();
    }
    let mut rows = vec![
        [
            "NAMESPACE",
            "NAME",
            "PHASE",
            "STEP",
            "TRAFFIC",
            "HEALTHY",
            "MESSAGE",
        ]
        .map(String::from),
    ];
    for m in items {
        let status = m.status.clone().unwrap_or_default();
        rows.push([
            m.namespace().unwrap_or_default(),
            m.name_any(),
            status.phase.to_string(),
            status
                .step
                .map_or_else(|| "-".into(), |s| format!("{s}/{}", m.spec.steps.len())),
            format!("{}%", status.traffic_percent),
            status.healthy.map_or("-", |h| h.as_str()).to_owned(),
            message(m),
        ]);
    }
    let skip = usize::from(!with_namespace);
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = (skip..7)
            .map(|c| {
                if c == 6 {
                    row[c].clone()
                } else {
                    format!("{:<width$}", row[c], width = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Health, MigrationStatus, RollbackRecord};
    use crate::reason::Reason;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn migration(name: &str, status: Option<MigrationStatus>) -> Migration {
        let mut m: Migration = serde_json::from_value(json!({
            "apiVersion": "ficus.dev/v1alpha1", "kind": "Migration",
            "metadata": { "name": name, "namespace": "chat" },
            "spec": {
                "service": "chat", "flags": { "configMap": { "name": "f" } },
                "steps": [10, 50, 100],
            },
        }))
        .expect("a valid Migration");
        m.status = status;
        m
    }

    fn condition(type_: &str, status: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: message.into(),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
            observed_generation: None,
        }
    }

    fn at_step(step: i32, traffic: i32) -> MigrationStatus {
        MigrationStatus {
            phase: Phase::Split,
            step: Some(step),
            traffic_percent: traffic,
            healthy: Some(Health::True),
            conditions: vec![
                condition("Progressing", "True", &format!("step {step} at {traffic}%")),
                condition("Degraded", "False", "no problems found"),
            ],
            ..MigrationStatus::default()
        }
    }

    #[test]
    fn the_status_table_says_what_each_migration_does_or_waits_for() {
        let degraded = MigrationStatus {
            phase: Phase::Preflight,
            conditions: vec![condition(
                "Degraded",
                "True",
                "the operator may not patch ConfigMap chat/f",
            )],
            ..MigrationStatus::default()
        };
        let rolled_back = MigrationStatus {
            phase: Phase::RolledBack,
            last_rollback: Some(RollbackRecord {
                time: Timestamp::UNIX_EPOCH,
                from: Phase::Split,
                reason: Reason::GateFailed.into(),
                message: "drift failed 2 evaluation(s) in a row".into(),
            }),
            ..MigrationStatus::default()
        };
        let table = status_table(
            &[
                migration("a", Some(at_step(2, 50))),
                migration("b", Some(degraded)),
                migration("c", Some(rolled_back)),
                migration("d", None),
            ],
            false,
        );
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].starts_with("NAME"), "no namespace column: {table}");
        assert!(lines[1].contains("Split") && lines[1].contains("2/3") && lines[1].contains("50%"));
        assert!(lines[1].ends_with("step 2 at 50%"), "{table}");
        assert!(lines[2].ends_with("degraded: the operator may not patch ConfigMap chat/f"));
        assert!(
            lines[3].ends_with(
                "rolled back from Split (GateFailed): drift failed 2 evaluation(s) in a row"
            ),
            "{table}"
        );
        assert!(lines[4].ends_with("not reconciled yet"), "{table}");
        // Columns line up: every row has PHASE at the same offset.
        let offset = lines[0].find("PHASE").expect("PHASE");
        assert!(lines[1][offset..].starts_with("Split"), "{table}");
        assert!(status_table(&[], true).contains("no Migrations found"));
        assert!(
            status_table(&[migration("a", None)], true).starts_with("NAMESPACE"),
            "-A shows the namespace"
        );
    }

    #[test]
    fn the_outcome_shows_the_move_or_why_nothing_moved() {
        let before = migration("m", Some(at_step(1, 10)));
        let after = migration("m", Some(at_step(2, 50)));
        assert_eq!(
            outcome("promote", &before, &after),
            "promote: chat/m Split step 1/3 (10%) -> Split step 2/3 (50%)\n"
        );
        let same = outcome("retry", &before, &before);
        assert!(
            same.starts_with("retry: chat/m stays Split step 1/3 (10%): step 1 at 10%"),
            "{same}"
        );
        assert!(
            same.contains("kubectl describe migration m -n chat"),
            "{same}"
        );
    }
}
