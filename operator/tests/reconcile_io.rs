//! The reconciler's I/O, in order, against a scripted API server (`tower-test`): what one
//! reconcile reads and writes and in which order, and what it does not write when the API
//! server refuses. The decisions themselves are the machine's table tests; the real API server
//! runs in the end-to-end tests. This is the layer between: the order that makes a crash or a
//! stale cache safe.

use std::sync::Arc;
use std::time::Duration;

use ficus_operator::crd::{FlagValues, Flags, Migration};
use ficus_operator::metrics::Metrics;
use ficus_operator::own_writes::OwnWrites;
use ficus_operator::reconciler::{Context, reconcile};
use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};
use tower_test::mock;

const STATUS: &str = "/apis/ficus.dev/v1alpha1/namespaces/shop/migrations/chat/status";
const FLAGS: &str = "/api/v1/namespaces/shop/configmaps/chat-migration-flags";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

/// A Migration in Preflight whose finalizer is in place and whose safe flags (generation 1) are
/// written, as the API server would hand it to the controller at resourceVersion 7: with nothing
/// in the way, the next step is Shadow, which turns dual writes on.
fn migration() -> Migration {
    serde_json::from_value(json!({
        "apiVersion": "ficus.dev/v1alpha1",
        "kind": "Migration",
        "metadata": {
            "name": "chat", "namespace": "shop", "uid": "0b1c", "generation": 1,
            "resourceVersion": "7", "finalizers": ["ficus.dev/safe-state"],
        },
        "spec": {
            "service": "chat",
            "flags": { "configMap": { "name": "chat-migration-flags" } },
            "steps": [10, 50, 100],
        },
        "status": {
            "phase": "Preflight", "observedGeneration": 1,
            "appliedFlags": {
                "generation": 1, "writePrimary": "legacy", "dualWrite": "off",
                "shadowReadPercent": 0, "readSplitPercent": 0, "shadowCompareFrom": "all",
            },
        },
    }))
    .expect("a valid Migration")
}

/// How the scripted API server answers one request.
enum Answer {
    Ok(Value),
    Refuse(StatusCode),
}

/// The `Status` the API server answers a refusal with (its `reason` as Kubernetes spells it).
fn status_body(code: StatusCode) -> Value {
    let reason = match code {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::CONFLICT => "Conflict",
        StatusCode::FORBIDDEN => "Forbidden",
        _ => "InternalError",
    };
    json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": format!("scripted {code}"), "reason": reason, "code": code.as_u16(),
    })
}

/// One request the reconcile made: method, path and JSON body.
#[derive(Debug)]
struct Seen {
    method: Method,
    path: String,
    body: Value,
}

impl Seen {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Runs one reconcile of [`migration`] against a scripted API server: `answer` decides each
/// response from the requests so far. Returns every request in order and the reconcile's result.
async fn run(answer: impl Fn(&Seen, &[Seen]) -> Answer) -> (Vec<Seen>, bool) {
    run_with(OwnWrites::default(), answer).await
}

/// [`run`], the operator having already written the Migrations in `own_writes`.
async fn run_with(
    own_writes: OwnWrites,
    answer: impl Fn(&Seen, &[Seen]) -> Answer,
) -> (Vec<Seen>, bool) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "shop");
    let ctx = Arc::new(Context {
        client: client.clone(),
        aws: ficus_operator::aws::AwsConfigs::new(Default::default()),
        prometheus: Default::default(),
        own_writes,
        recorder: Recorder::new(
            client,
            Reporter {
                controller: "ficus-operator".into(),
                instance: Some("test".into()),
            },
        ),
        metrics: Arc::new(Metrics::default()),
        store: None,
        policy: None,
    });
    let mut task = tokio::spawn(reconcile(Arc::new(migration()), ctx));
    let mut seen: Vec<Seen> = Vec::new();
    let ok = loop {
        tokio::select! {
            done = &mut task => break done.expect("reconcile task").is_ok(),
            next = handle.next_request() => {
                let Some((request, respond)) = next else { continue };
                let method = request.method().clone();
                let path = request.uri().path().to_owned();
                let bytes = request.into_body().collect_bytes().await.expect("request body");
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let request = Seen { method, path, body };
                let (code, body) = match answer(&request, &seen) {
                    Answer::Ok(body) => (StatusCode::OK, body),
                    Answer::Refuse(code) => (code, status_body(code)),
                };
                respond.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(serde_json::to_vec(&body).expect("json")))
                        .expect("response"),
                );
                seen.push(request);
            }
            () = tokio::time::sleep(Duration::from_secs(10)) => panic!("reconcile hung after {seen:?}"),
        }
    };
    (seen, ok)
}

/// The flag ConfigMap holding the safe document, generation 1.
fn safe_flags() -> Value {
    let data: serde_json::Map<String, Value> = Flags {
        generation: 1,
        values: FlagValues::default(),
    }
    .to_entries()
    .into_iter()
    .map(|(k, v)| (k.to_owned(), json!(v)))
    .collect();
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "chat-migration-flags", "namespace": "shop", "resourceVersion": "3" },
        "data": data,
    })
}

/// A healthy API server holding the safe flags; writes answered with what was written.
fn healthy(request: &Seen, _: &[Seen]) -> Answer {
    match (&request.method, request.path.as_str()) {
        (&Method::GET, FLAGS) => Answer::Ok(safe_flags()),
        (&Method::PUT, STATUS) => {
            let mut m = request.body.clone();
            m["metadata"]["resourceVersion"] = json!("8");
            Answer::Ok(m)
        }
        (&Method::PATCH, FLAGS) => Answer::Ok(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "chat-migration-flags", "namespace": "shop" },
            "data": request.body["data"].clone(),
        })),
        (&Method::POST, EVENTS) => Answer::Ok(request.body.clone()),
        _ => panic!("unexpected request {}", request.line()),
    }
}

fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(Seen::line).collect()
}

#[tokio::test]
async fn the_decision_is_recorded_before_the_flags_change_and_announced_after() {
    let (seen, ok) = run(healthy).await;
    assert!(ok, "{seen:#?}");
    assert_eq!(
        lines(&seen),
        [
            format!("GET {FLAGS}"),
            format!("PUT {STATUS}"),
            format!("PATCH {FLAGS}"),
            format!("POST {EVENTS}"),
        ],
        "read the flags, record the decision, converge, then publish"
    );
    // The status write carries the resourceVersion that was read: a decision made on a stale
    // copy is refused by the API server instead of applied.
    assert_eq!(seen[1].body["metadata"]["resourceVersion"], "7");
    assert_eq!(seen[1].body["status"]["phase"], "Shadow");
    assert_eq!(
        (
            seen[2].body["data"]["write_primary"].as_str(),
            seen[2].body["data"]["dual_write"].as_str()
        ),
        (Some("legacy"), Some("sync")),
        "Shadow's flags: legacy primary, dual writes on"
    );
    assert_eq!(seen[3].body["reason"], "PreflightPassed");
}

#[tokio::test]
async fn a_status_write_refused_as_stale_changes_nothing_else() {
    let (seen, ok) = run(
        |request, seen| match (&request.method, request.path.as_str()) {
            (&Method::PUT, STATUS) => Answer::Refuse(StatusCode::CONFLICT),
            _ => healthy(request, seen),
        },
    )
    .await;
    assert!(ok, "a conflict is no error: a fresh reconcile follows");
    assert_eq!(
        lines(&seen),
        [format!("GET {FLAGS}"), format!("PUT {STATUS}")],
        "no flags written and no Event for a decision that was not recorded"
    );
}

#[tokio::test]
async fn a_refused_flag_write_is_decided_again_and_recorded_as_degraded() {
    let (seen, ok) = run(
        |request, seen| match (&request.method, request.path.as_str()) {
            (&Method::PATCH, FLAGS) => Answer::Refuse(StatusCode::FORBIDDEN),
            _ => healthy(request, seen),
        },
    )
    .await;
    assert!(ok, "a refused write is a Problem, not a reconcile error");
    assert_eq!(
        lines(&seen)[..5],
        [
            format!("GET {FLAGS}"),
            format!("PUT {STATUS}"),
            format!("PATCH {FLAGS}"),
            format!("GET {FLAGS}"),
            format!("PUT {STATUS}"),
        ],
        "after the refusal the flags are read again and the second decision recorded"
    );
    let second = &seen[4].body;
    assert_eq!(
        second["metadata"]["resourceVersion"], "8",
        "the second status write builds on the first one's answer"
    );
    let degraded = second["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Degraded"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("True"), Some("FlagStoreForbidden")),
        "{second:#}"
    );
    assert!(
        lines(&seen)[5..]
            .iter()
            .all(|l| *l == format!("POST {EVENTS}")),
        "Events come last: {:?}",
        lines(&seen)
    );
}

/// The cache hands the reconcile a copy older than what the operator itself last wrote (the
/// watch event of its second write has not arrived): it calls nothing, so no decision is made
/// on an object the API server has moved past, and waits for the cache.
#[tokio::test]
async fn a_copy_older_than_the_operators_own_last_write_is_not_acted_on() {
    let own_writes = OwnWrites::default();
    let mut written = migration();
    written.metadata.resource_version = Some("9".into());
    own_writes.record(&written);
    let (seen, ok) = run_with(own_writes, |_, _| {
        Answer::Refuse(StatusCode::INTERNAL_SERVER_ERROR)
    })
    .await;
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert!(ok && lines.is_empty(), "{lines:?}");
}
