//! StreamMessages (SSE): members receive their rooms' events, in-process and, with NATS, across
//! instances.

mod common;

use std::time::Duration;

use common::{SseReader, assert_error};
use ficus_testkit::{Nats, Postgres};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn members_receive_their_rooms_events() {
    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let svc = common::start(common::config(pg, "stream_local").await).await;
    let room = svc.create_group(1, &[2]).await;
    let foreign = svc.create_group(3, &[4]).await;

    let mut stream = SseReader::open(&svc, 2).await;
    let ready = stream.next_named("ready", WAIT).await;
    assert_eq!(ready.data, json!({ "userId": 2, "rooms": 1 }));

    // A message in someone else's room is not delivered; the member's room's message is, decrypted.
    svc.send(3, &foreign, "not for user 2").await;
    let sent = svc.send(1, &room, "hello stream").await;
    let got = stream.next_named("message_created", WAIT).await;
    assert_eq!(
        got.data, sent,
        "the event is the message as the API returns it"
    );

    svc.call(
        2,
        "ReactToMessage",
        json!({ "messageId": sent["id"], "reaction": "👍" }),
    )
    .await;
    let reaction = stream.next_named("reaction_added", WAIT).await;
    assert_eq!(
        reaction.data,
        json!({ "roomId": room, "messageId": sent["id"], "userId": 2, "reaction": "👍" })
    );

    svc.call(
        2,
        "MarkMessagesAsRead",
        json!({ "roomId": room, "messageIds": [sent["id"]] }),
    )
    .await;
    let read = stream.next_named("messages_read", WAIT).await;
    assert_eq!(
        (read.data["userId"].clone(), read.data["updated"].clone()),
        (json!(2), json!(1))
    );

    // A room created later with user 2 in it is followed from then on.
    let later = svc.create_group(5, &[2]).await;
    let created = stream.next_named("room_created", WAIT).await;
    assert_eq!(created.data["room"]["id"], later.as_str());
    let in_later = svc.send(5, &later, "welcome").await;
    assert_eq!(
        stream.next_named("message_created", WAIT).await.data,
        in_later
    );

    // After leaving, the room's events stop.
    svc.call(2, "LeaveRoom", json!({ "id": later })).await;
    assert_eq!(
        stream.next_named("member_left", WAIT).await.data,
        json!({ "roomId": later, "userId": 2 })
    );
    svc.send(5, &later, "gone").await;
    let after = svc.send(1, &room, "still here").await;
    assert_eq!(
        stream.next_named("message_created", WAIT).await.data,
        after,
        "nothing from the room left"
    );

    // Streams need auth like every method, and end when the server shuts down.
    let unauthenticated = svc
        .client
        .http()
        .get(svc.client.method_url("StreamMessages"))
        .send()
        .await
        .expect("HTTP");
    assert_error(
        &(
            unauthenticated.status().as_u16(),
            unauthenticated.json().await.expect("JSON"),
        ),
        401,
        "unauthenticated",
    );
    tokio::time::timeout(Duration::from_secs(20), svc.stop())
        .await
        .expect("graceful shutdown does not wait on open streams");
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(e) = stream.next().await {
            assert_ne!(e.event, "message_created");
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ends on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_cross_instances_through_nats() {
    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let nats = ficus_testkit::skip_or_fail!(Nats::start());
    let mut config = common::config(pg, "stream_nats").await;
    config.nats_url = Some(nats.url());
    // Two instances, one database, one NATS.
    let a = common::start(config.clone()).await;
    let b = common::start(config).await;
    let room = a.create_group(1, &[2]).await;

    let mut on_b = SseReader::open(&b, 2).await;
    on_b.next_named("ready", WAIT).await;
    let mut on_a = SseReader::open(&a, 1).await;
    on_a.next_named("ready", WAIT).await;

    let sent = a.send(1, &room, "from instance A").await;
    assert_eq!(
        on_b.next_named("message_created", WAIT).await.data,
        sent,
        "published on A, streamed on B"
    );
    assert_eq!(
        on_a.next_named("message_created", WAIT).await.data,
        sent,
        "and on A itself, once"
    );

    let reply = b.send(2, &room, "from instance B").await;
    assert_eq!(on_a.next_named("message_created", WAIT).await.data, reply);
    assert_eq!(on_b.next_named("message_created", WAIT).await.data, reply);

    // Each event arrives once: the next event on A is the next message, not a duplicate.
    let third = a.send(1, &room, "third").await;
    assert_eq!(on_a.next_named("message_created", WAIT).await.data, third);
    a.stop().await;
    b.stop().await;
}

/// A user may hold `max_streams_per_user` streams open: one more is 429 `resource_exhausted`
/// with a message, other users are not affected, and a closed stream frees its slot.
#[tokio::test]
async fn streams_per_user_are_limited_and_a_closed_one_frees_its_slot() {
    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let mut config = common::config(pg, "stream_limit").await;
    config.limits.max_streams_per_user = 2;
    let svc = common::start(config).await;
    svc.create_group(1, &[2]).await;

    let first = SseReader::open(&svc, 2).await;
    let _second = SseReader::open(&svc, 2).await;
    let refused = async |user: i32| {
        let response = svc
            .client
            .request(chat_service::ids::UserId(user), "StreamMessages")
            .send()
            .await
            .expect("stream request");
        let status = response.status().as_u16();
        if status == 200 {
            return None;
        }
        Some((
            status,
            response
                .json::<serde_json::Value>()
                .await
                .expect("error body"),
        ))
    };
    let third = refused(2).await.expect("a third stream is refused");
    assert_error(&third, 429, "resource_exhausted");
    assert!(
        refused(1).await.is_none(),
        "another user's streams are not limited by user 2's"
    );

    // The server notices the closed connection and frees the slot.
    drop(first);
    let start = std::time::Instant::now();
    loop {
        if refused(2).await.is_none() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "a closed stream's slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `message_created` contents a stream delivers until `count` of them arrived.
async fn contents(stream: &mut SseReader, count: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < count {
        let event = stream.next_named("message_created", WAIT).await;
        got.push(event.data["content"].as_str().expect("content").to_owned());
    }
    got
}

/// A stream that drops and reconnects with `Last-Event-ID` gets the events of its rooms it
/// missed, in order, then the live ones, none twice; with NATS, on another instance.
async fn a_reconnecting_stream_misses_nothing(nats: Option<&Nats>, test: &str) {
    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let mut config = common::config(pg, test).await;
    config.nats_url = nats.map(Nats::url);
    let a = common::start(config.clone()).await;
    // Without NATS the log is the instance's own: the client reconnects to the same one.
    let b = match nats {
        Some(_) => Some(common::start(config).await),
        None => None,
    };
    let back_to = b.as_ref().unwrap_or(&a);
    let room = a.create_group(1, &[2]).await;
    let foreign = a.create_group(3, &[4]).await;

    let mut stream = SseReader::open(&a, 2).await;
    let ready = stream.next_named("ready", WAIT).await;
    assert!(ready.id.is_some(), "ready carries the log position");
    a.send(1, &room, "one").await;
    let one = stream.next_named("message_created", WAIT).await;
    let last = one.id.clone().expect("an event id");
    drop(stream);

    // While the client is away.
    a.send(1, &room, "two").await;
    a.send(3, &foreign, "not for user 2").await;
    a.send(1, &room, "three").await;

    let mut resumed = SseReader::resume(back_to, 2, Some(&last)).await;
    resumed.next_named("ready", WAIT).await;
    assert_eq!(contents(&mut resumed, 2).await, ["two", "three"]);
    a.send(1, &room, "four").await;
    assert_eq!(
        contents(&mut resumed, 1).await,
        ["four"],
        "then the live events, without the replayed ones again"
    );
    a.stop().await;
    if let Some(b) = b {
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconnecting_stream_misses_nothing_with_the_local_log() {
    a_reconnecting_stream_misses_nothing(None, "stream_resume_local").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconnecting_stream_misses_nothing_across_instances_with_jetstream() {
    let nats = ficus_testkit::skip_or_fail!(Nats::start());
    a_reconnecting_stream_misses_nothing(Some(&nats), "stream_resume_nats").await;
}

/// Events older than the log keeps (`--events-retention`) cannot be replayed: the stream says
/// how many were missed (`lagged`), so the client re-reads history, and goes on live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconnect_past_the_retention_is_told_what_it_missed() {
    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let nats = ficus_testkit::skip_or_fail!(Nats::start());
    let mut config = common::config(pg, "stream_retention").await;
    config.nats_url = Some(nats.url());
    config.events_retention = Duration::from_secs(1);
    let svc = common::start(config).await;
    let room = svc.create_group(1, &[2]).await;
    let mut stream = SseReader::open(&svc, 2).await;
    stream.next_named("ready", WAIT).await;
    svc.send(1, &room, "one").await;
    let last = stream
        .next_named("message_created", WAIT)
        .await
        .id
        .expect("an event id");
    drop(stream);
    svc.send(1, &room, "aged out").await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    let mut resumed = SseReader::resume(&svc, 2, Some(&last)).await;
    let lagged = resumed.next_named("lagged", WAIT).await;
    assert!(
        lagged.data["missed"].as_u64().is_some_and(|m| m >= 1),
        "{lagged:?}"
    );
    svc.send(1, &room, "live").await;
    assert_eq!(contents(&mut resumed, 1).await, ["live"]);
    svc.stop().await;
}

/// A stream ends when its token expires: a last `token_expired` event, then the end.
#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let svc = common::start(common::config(pg, "stream_expiry").await).await;
    svc.create_group(1, &[2]).await;
    let token = chat_service::auth::Authenticator::new(common::JWT_SECRET)
        .issue(chat_service::ids::UserId(2), Duration::from_secs(2));
    let request = svc
        .client
        .http()
        .post(svc.client.method_url("StreamMessages"))
        .bearer_auth(token)
        .header("X-User-ID", "2");
    let opened = std::time::Instant::now();
    let mut stream = SseReader::from_request(request).await;
    stream.next_named("ready", WAIT).await;
    stream.next_named("token_expired", WAIT).await;
    assert!(
        opened.elapsed() <= Duration::from_secs(3),
        "ended at the token's expiry, not later: {:?}",
        opened.elapsed()
    );
    let end = tokio::time::timeout(WAIT, stream.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "nothing after token_expired: {end:?}"
    );
}

/// A Last-Event-ID that is not an event id is refused with a message, not ignored.
#[tokio::test]
async fn a_malformed_last_event_id_is_invalid_argument() {
    common::init();
    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let svc = common::start(common::config(pg, "stream_bad_id").await).await;
    let response = svc
        .client
        .request(chat_service::ids::UserId(1), "StreamMessages")
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .expect("a response");
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("a JSON error");
    assert_error(&(status, body), 400, "invalid_argument");
}
