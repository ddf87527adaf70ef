//! ConfigMap source: one ConfigMap followed with a kube watcher, so a change applies within a
//! watch round trip (a mounted ConfigMap would wait for kubelet's sync, up to a minute).

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::apply::{Applier, Outcome};
use super::{Document, FlagError, Flags};

pub(super) async fn start(
    client: Client,
    namespace: String,
    name: String,
    gauge: Gauge,
) -> Result<watch::Receiver<Flags>, FlagError> {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let (mut applier, rx) = Applier::new(
        format!("ConfigMap {namespace}/{name}"),
        Flags::default(),
        gauge,
    );

    // One GET so `start` returns with the document in force (or a clear error: RBAC, no API
    // server). The watcher's initial list re-delivers it, which is a no-op.
    let cm = api.get_opt(&name).await.map_err(|source| FlagError::Api {
        namespace: namespace.clone(),
        name: name.clone(),
        source,
    })?;
    if let Outcome::Rejected(err) = applier.offer(document(cm.as_ref())) {
        return Err(FlagError::Rejected {
            origin: applier.origin().to_owned(),
            source: Box::new(err),
        });
    }

    tokio::spawn(follow(applier, api, name));
    Ok(rx)
}

fn document(cm: Option<&ConfigMap>) -> Document {
    match cm {
        None => Document::Missing,
        Some(cm) => Document::Entries(cm.data.clone().unwrap_or_default()),
    }
}

async fn follow(mut applier: Applier, api: Api<ConfigMap>, name: String) {
    // Only this object: the field selector keeps the watch (and RBAC needs) to one ConfigMap.
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    // `default_backoff` retries a failed watch or list with growing delays instead of ending
    // the stream; the watcher itself relists when its resourceVersion expires.
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    // Whether the current (re)list returned the object: a relist without it means it was
    // deleted while the watch was down.
    let mut listed = false;
    loop {
        let event = tokio::select! {
            _ = applier.closed() => break,
            event = events.next() => event,
        };
        match event {
            None => {
                // Not expected with a backoff; the flags in force stay as they are.
                warn!(origin = %applier.origin(), "flag ConfigMap watch ended; flags will no longer change");
                return;
            }
            Some(Err(err)) => {
                warn!(origin = %applier.origin(), %err, "flag ConfigMap watch failed; retrying with backoff, keeping the flags in force");
            }
            Some(Ok(watcher::Event::Init)) => listed = false,
            Some(Ok(watcher::Event::InitApply(cm))) => {
                listed = true;
                applier.offer(document(Some(&cm)));
            }
            Some(Ok(watcher::Event::InitDone)) => {
                if !listed {
                    applier.offer(Document::Missing);
                }
            }
            Some(Ok(watcher::Event::Apply(cm))) => {
                applier.offer(document(Some(&cm)));
            }
            Some(Ok(watcher::Event::Delete(_))) => {
                // Deleting the document is not an instruction to change behaviour.
                info!(origin = %applier.origin(), "flag ConfigMap deleted");
                applier.offer(Document::Missing);
            }
        }
    }
    debug!(origin = %applier.origin(), "no flag readers left; stopping the flag ConfigMap watcher");
}
