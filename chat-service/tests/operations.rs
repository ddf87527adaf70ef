//! Operations: `/readyz` follows PostgreSQL (a private server, stopped and restarted), API calls
//! during an outage are Connect `unavailable`, and `/metrics` carries the original names.

mod common;

use std::time::{Duration, Instant};

use common::assert_error;
use ficus_testkit::Postgres;
use serde_json::json;

async fn wait_for_readyz(svc: &common::TestService, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = svc.get("/readyz").await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} ({body}) after {within:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_follows_postgres_down_and_back() {
    common::init();
    // A private server: stopping the shared one would break the other tests of this binary.
    let pg = ficus_testkit::skip_or_fail!(Postgres::start());
    let svc = common::start(common::config(&pg, "readyz").await).await;
    assert_eq!(svc.get("/readyz").await, (200, "ok".to_owned()));
    let room = svc.create_group(1, &[2]).await;

    pg.stop();
    let body = wait_for_readyz(&svc, 503, Duration::from_secs(10)).await;
    assert!(body.contains("not ready"), "{body}");
    assert_eq!(
        svc.get("/healthz").await.0,
        200,
        "alive while the database is down"
    );
    assert_error(
        &svc.raw(
            1,
            "SendMessage",
            json!({ "roomId": room, "content": "during the outage" }),
        )
        .await,
        503,
        "unavailable",
    );

    tokio::task::block_in_place(|| pg.restart()).expect("restart");
    wait_for_readyz(&svc, 200, Duration::from_secs(15)).await;
    svc.send(1, &room, "after the outage").await;
    let history = svc
        .call(2, "GetMessageHistory", json!({ "id": room }))
        .await;
    assert_eq!(history["items"][0]["content"], "after the outage");

    let metrics = svc.get("/metrics").await.1;
    assert!(metrics.contains(r#"chat_database_operations_total{database="postgres",operation="room_access",status="error"}"#), "{metrics}");
    assert!(
        metrics.contains(r#"chat_requests_total{cohort="legacy",code="unavailable"} 1"#),
        "{metrics}"
    );
    svc.stop().await;
}

#[tokio::test]
async fn metrics_use_the_original_names() {
    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let mut config = common::config(pg, "metrics").await;
    // The applied flag generation is exported as chat_flags_generation.
    config.flags = chat_service::flags::FlagSource::Static(chat_service::flags::Flags {
        generation: 7,
        ..Default::default()
    });
    let svc = common::start(config).await;
    let room = svc.create_group(1, &[2]).await;
    svc.send(1, &room, "one").await;
    svc.send(2, &room, "two").await;
    let (status, _) = svc.raw(3, "GetRoom", json!({ "id": room })).await;
    assert_eq!(status, 403);
    let (status, metrics) = svc.get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        r#"chat_messages_sent_total{room_type="group",database="postgres"} 2"#,
        r#"chat_database_operations_total{database="postgres",operation="insert_message",status="success"} 2"#,
        r#"chat_database_operation_duration_seconds_count{database="postgres",operation="insert_message"} 2"#,
        r#"chat_requests_total{cohort="legacy",code="ok"} 3"#,
        r#"chat_requests_total{cohort="legacy",code="permission_denied"} 1"#,
        r#"chat_request_duration_seconds_count{cohort="legacy"} 4"#,
        r#"chat_query_duration_seconds_count{database="postgres",operation="insert_message"} 2"#,
        r#"chat_active_connections{client_type="sse"} 0"#,
        "chat_flags_generation 7",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    // The health watch pings the store at once, then every 5 s: up, and its pool counted.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, metrics) = svc.get("/metrics").await;
        if metrics.contains(r#"chat_database_up{database="postgres",role="single"} 1"#)
            && metrics.contains(
                r#"chat_database_connections{database="postgres",role="single",state="idle"}"#,
            )
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no health or pool metrics:\n{metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
