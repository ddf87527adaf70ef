//! The load client (the original k6 scenario) against a real instance: no errors. And the live
//! flow's check of its ledger against a real instance: it finds an acknowledged write that is
//! gone and claims nothing about a call it never heard back from.

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

/// A LeaveRoom that went unanswered (an instance killed mid-call, a timeout) may have happened.
/// The check then neither calls the membership lost nor reads or marks anything as that user
/// (the service would refuse it: not a member); an acknowledged leave the service still shows as
/// membership is loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_check_claims_nothing_about_an_unanswered_leave() {
    use chat_service::flow::{AckedMessage, Leave, Ledger, verify};
    use chat_service::ids::{MessageId, RoomId, UserId};
    use serde_json::json;

    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let svc = common::start(common::config(pg, "ledger_check").await).await;
    let room_text = svc.create_group(601, &[602, 603]).await;
    let sent = svc.send(601, &room_text, "before the leave").await;
    let room: RoomId = room_text.parse().map(RoomId).expect("room id");
    let message: MessageId = sent["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .map(MessageId)
        .expect("message id");
    svc.call(
        602,
        "MarkMessagesAsRead",
        json!({ "roomId": room_text, "messageIds": [sent["id"]] }),
    )
    .await;
    // The service applies 602's leave; the flow never heard its answer.
    svc.call(602, "LeaveRoom", json!({ "id": room_text })).await;

    let mut ledger = Ledger::default();
    ledger
        .rooms
        .insert(room, [601, 602, 603].map(UserId).into_iter().collect());
    ledger.messages.push(AckedMessage {
        room,
        id: message,
        sender: UserId(601),
        content: "before the leave".into(),
    });
    ledger
        .read
        .insert((room, UserId(602)), [message].into_iter().collect());
    ledger.left.insert((room, UserId(602)), Leave::Unknown);
    let missing = verify(&ledger, &svc.client)
        .await
        .expect("the check reads nothing as a user who may have left");
    assert_eq!(missing.total(), 0, "{missing:?}");
    assert_eq!(ledger.members(room), [601, 603].map(UserId).into());
    assert_eq!(ledger.writes(), 3, "the room, the message, the read marker");

    // An acknowledged leave that the service does not show is a lost write.
    ledger.left.insert((room, UserId(603)), Leave::Left);
    let missing = verify(&ledger, &svc.client).await.expect("check");
    assert_eq!(
        missing.memberships,
        [(UserId(603), room, "left, still listed")],
        "{missing:?}"
    );
}
