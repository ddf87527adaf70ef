//! The load client (the original k6 scenario) against a real instance: no errors.

mod common;

use std::time::Duration;

use chat_service::loadtest::{self, LoadConfig};
use ficus_testkit::Postgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_load_test_runs_without_errors() {
    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let svc = common::start(common::config(pg, "loadtest").await).await;
    let config = LoadConfig {
        base_url: svc.base_url.clone(),
        jwt_secret: common::JWT_SECRET.to_vec(),
        users: 40,
        rooms: 5,
        duration: Duration::from_secs(4),
        max_iterations: None,
        first_user_id: 500,
        think_time: Duration::ZERO,
    };
    let report = loadtest::run(&config).await.expect("load test");
    println!("{report}");
    assert_eq!(report.errors(), 0, "{report}");
    assert!(
        report.iterations > 40,
        "every virtual user looped: {report}"
    );
    for op in ["SendMessage", "GetMessageHistory", "GetRooms"] {
        assert_eq!(report.ops[op].ok, report.iterations, "{op}");
    }
    let metrics = svc.get("/metrics").await.1;
    let sent = format!(
        r#"chat_messages_sent_total{{room_type="group",database="postgres"}} {}"#,
        report.iterations
    );
    assert!(metrics.contains(&sent), "{sent} not in\n{metrics}");

    // The count bound stops the run before the duration.
    let bounded = loadtest::run(&LoadConfig {
        max_iterations: Some(25),
        duration: Duration::from_secs(60),
        ..config
    })
    .await
    .expect("bounded run");
    assert_eq!((bounded.iterations, bounded.errors()), (25, 0), "{bounded}");
    assert!(bounded.elapsed < Duration::from_secs(30));

    // The same through the binary's `loadtest` command: exit status 0 and a report.
    let base_url = svc.base_url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_chat-service"))
            .args([
                "loadtest",
                "--base-url",
                &base_url,
                "--users",
                "4",
                "--rooms",
                "2",
                "--duration-secs",
                "1",
            ])
            .env(
                "CHAT_JWT_SECRET",
                std::str::from_utf8(common::JWT_SECRET).expect("utf-8"),
            )
            .output()
            .expect("run loadtest")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(" 0 errors") && stdout.contains("SendMessage"),
        "{stdout}"
    );
}
