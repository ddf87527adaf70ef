//! `ficus-operator delete-migrations`: the chart's pre-delete hook. `helm uninstall` deletes
//! the operator before custom resources, so a Migration deleted after it keeps its finalizer and
//! nobody writes the safe flags. The hook deletes the release's Migrations first and waits while
//! the running operator's finalizer leaves each service's flags in the state that is safe for its
//! phase.

use std::time::Duration;

use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use tracing::info;

use crate::crd::Migration;

#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    #[error("listing Migrations in {namespace} ({selector}): {source}")]
    List {
        namespace: String,
        selector: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting Migration {namespace}/{name}: {source}")]
    Delete {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "Migration {namespace}/{name} is still there after {waited:?}: its finalizer writes the safe flags and only a running operator removes it. Check the operator's pods and logs; to give up on the flags, remove the finalizer by hand (kubectl -n {namespace} patch migration {name} --type merge -p '{{\"metadata\":{{\"finalizers\":null}}}}')"
    )]
    Stuck {
        namespace: String,
        name: String,
        waited: Duration,
    },
    #[error("waiting for Migration {namespace}/{name} to go: {source}")]
    Watch {
        namespace: String,
        name: String,
        #[source]
        source: kube::runtime::wait::Error,
    },
}

/// Deletes every Migration of `namespace` matching `selector` (a label selector; empty: all)
/// and waits up to `timeout` for each to be gone. Returns the names deleted.
pub async fn delete_migrations(
    client: Client,
    namespace: &str,
    selector: &str,
    timeout: Duration,
) -> Result<Vec<String>, UninstallError> {
    let api: Api<Migration> = Api::namespaced(client, namespace);
    let list = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|source| UninstallError::List {
            namespace: namespace.to_owned(),
            selector: selector.to_owned(),
            source,
        })?;
    let mut deleted = Vec::new();
    for m in list.items {
        let name = m.name_any();
        let uid = m.uid().unwrap_or_default();
        info!(
            namespace,
            name, "deleting Migration; its finalizer writes the safe flags"
        );
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            // Gone already (another hook run, a person): nothing to wait for.
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(source) => {
                return Err(UninstallError::Delete {
                    namespace: namespace.to_owned(),
                    name,
                    source,
                });
            }
        }
        let gone = await_condition(api.clone(), &name, conditions::is_deleted(&uid));
        match tokio::time::timeout(timeout, gone).await {
            Ok(Ok(_)) => {}
            Ok(Err(source)) => {
                return Err(UninstallError::Watch {
                    namespace: namespace.to_owned(),
                    name,
                    source,
                });
            }
            Err(_) => {
                return Err(UninstallError::Stuck {
                    namespace: namespace.to_owned(),
                    name,
                    waited: timeout,
                });
            }
        }
        info!(namespace, name, "Migration deleted, flags safe");
        deleted.push(name);
    }
    Ok(deleted)
}
