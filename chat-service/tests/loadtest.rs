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
        stages: None,
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

/// The original k6 options through the binary: stages ramp the virtual users up and down, and
/// the thresholds decide the exit code (99 when one fails, as k6).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stages_ramp_the_users_and_a_failed_threshold_fails_the_run() {
    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let svc = common::start(common::config(pg, "loadtest_stages").await).await;
    let run = |thresholds: &'static [&'static str]| {
        let base_url = svc.base_url.clone();
        tokio::task::spawn_blocking(move || {
            let mut args = vec![
                "loadtest".to_owned(),
                "--base-url".into(),
                base_url,
                "--rooms".into(),
                "2".into(),
                "--first-user-id".into(),
                "7000".into(),
                "--think-ms".into(),
                "20".into(),
                "--stages".into(),
                "1s:6,1s:6,1s:0".into(),
            ];
            for t in thresholds {
                args.extend(["--threshold".to_owned(), (*t).to_owned()]);
            }
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-service"))
                .args(&args)
                .env(
                    "CHAT_JWT_SECRET",
                    std::str::from_utf8(common::JWT_SECRET).expect("utf-8"),
                )
                .output()
                .expect("run loadtest");
            (
                out.status.code(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        })
    };

    // The original thresholds (none given) hold on a healthy local service.
    let (code, out) = run(&[]).await.expect("join");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("threshold ok   http_req_duration:p(95)<500")
            && out.contains("threshold ok   errors:rate<0.1")
            && out.contains("threshold ok   message_duration:p(95)<200"),
        "{out}"
    );
    let peak: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("peak virtual users: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("peak line");
    assert!(
        (2..=6).contains(&peak),
        "the ramp peaks at 6 users, never above: {peak}\n{out}"
    );

    // A threshold no run can meet fails it with k6's code, and says which.
    let (code, out) = run(&["http_req_duration:max<0.001", "errors:rate<0.5"])
        .await
        .expect("join");
    assert_eq!(code, Some(99), "{out}");
    assert!(
        out.contains("threshold FAIL http_req_duration:max<0.001")
            && out.contains("threshold ok   errors:rate<0.5"),
        "{out}"
    );

    // A malformed stage is refused before any call, saying what to write.
    let (code, out) = tokio::task::spawn_blocking({
        let base_url = svc.base_url.clone();
        move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-service"))
                .args(["loadtest", "--base-url", &base_url, "--stages", "2m"])
                .env("CHAT_JWT_SECRET", "x")
                .output()
                .expect("run loadtest");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    })
    .await
    .expect("join");
    assert_eq!(code, Some(2), "clap's usage error: {out}");
    assert!(out.contains("DURATION:TARGET"), "{out}");
}
