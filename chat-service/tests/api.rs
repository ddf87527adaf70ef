//! Every API method over HTTP against a real PostgreSQL, and again against the CQL store on a
//! real Apache Cassandra node (ScyllaDB's protocol): results, membership rules, and the Connect
//! errors for auth failures, non-members, unknown ids and malformed input; and all of it again
//! with the room cache (a real Redis) in front of each store.
//!
//! One file over 600 lines on purpose: a test binary shares its PostgreSQL and NATS among these tests.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Backend, Db, TestService, assert_error};
use serde_json::{Value, json};

const METHODS: [&str; 12] = [
    "CreateRoom",
    "GetRoom",
    "GetRooms",
    "LeaveRoom",
    "PinRoom",
    "SendMessage",
    "GetMessageHistory",
    "MarkMessagesAsRead",
    "ReactToMessage",
    "RegisterDeviceToken",
    "ListDeviceTokens",
    "DeleteDeviceToken",
];

/// A store, and whether the room cache (Redis) answers reads in front of it.
#[derive(Clone, Copy, Debug)]
struct Setup {
    backend: Backend,
    cached: bool,
}

async fn service(setup: Setup, test: &str) -> Option<(TestService, Db)> {
    common::init();
    let config = match common::backend_config(setup.backend, test).await {
        Ok(config) => config,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return None;
        }
    };
    let db = Db::connect(&config).await;
    let svc = if setup.cached {
        match common::start_cached(config).await {
            Ok(svc) => svc,
            Err(e) => {
                ficus_testkit::skip_or_panic(&e);
                return None;
            }
        }
    } else {
        common::start(config).await
    };
    Some((svc, db))
}

/// Each suite below, once per store, with and without the room cache: `postgres::<name>`,
/// `cql::<name>`, `postgres_cached::<name>` and `cql_cached::<name>`. The cached runs show
/// that every write a suite makes is seen at once by the GetRoom / GetRooms that follow it.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        on_every_store!(@mod postgres, Postgres, false, $($name),*);
        on_every_store!(@mod cql, Cql, false, $($name),*);
        on_every_store!(@mod postgres_cached, Postgres, true, $($name),*);
        on_every_store!(@mod cql_cached, Cql, true, $($name),*);
    };
    (@mod $module:ident, $backend:ident, $cached:expr, $($name:ident),*) => {
        mod $module {
            $(#[tokio::test] async fn $name() {
                let setup = super::Setup { backend: super::Backend::$backend, cached: $cached };
                super::$name(setup).await
            })*
        }
    };
}

on_every_store!(
    rooms_create_get_list_and_leave,
    owners_remove_participants_and_nobody_else_removes_anyone,
    get_rooms_orders_pinned_first_then_latest_activity_and_pages,
    messages_send_history_read_markers_and_reactions,
    unread_counts_follow_sends_and_read_markers,
    a_since_marker_walks_a_long_room_one_chunk_per_call,
    every_method_rejects_unauthenticated_calls,
    malformed_input_is_invalid_argument_never_500,
    unknown_methods_and_wrong_http_methods_get_connect_errors,
    device_tokens_register_list_delete_per_user,
);

fn ids(values: &Value) -> Vec<String> {
    values
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn rooms_create_get_list_and_leave(backend: Setup) {
    let Some((svc, db)) = service(backend, "rooms").await else {
        return;
    };

    let room = svc
        .call(
            1,
            "CreateRoom",
            json!({ "name": "Team", "type": "group", "participants": [3, 2, 3] }),
        )
        .await["room"]
        .clone();
    assert_eq!(room["name"], "Team");
    assert_eq!(room["type"], "group");
    assert_eq!(
        room["participants"],
        json!([1, 2, 3]),
        "caller added, duplicates removed, ascending"
    );
    assert!(
        room["createdAt"]
            .as_str()
            .is_some_and(|t| t.parse::<chrono::DateTime<chrono::Utc>>().is_ok()),
        "{room}"
    );
    let room_id = room["id"].as_str().expect("id").to_owned();
    assert_eq!(
        room_id
            .parse::<uuid::Uuid>()
            .expect("uuid")
            .get_version_num(),
        4,
        "room ids are UUID v4"
    );

    // GetRoom: members see it, others are refused, unknown ids are not found.
    let got = svc.call(2, "GetRoom", json!({ "id": room_id })).await["room"].clone();
    assert_eq!(
        (
            got["id"].clone(),
            got["participants"].clone(),
            got["name"].clone()
        ),
        (json!(room_id), json!([1, 2, 3]), json!("Team"))
    );
    assert_error(
        &svc.raw(4, "GetRoom", json!({ "id": room_id })).await,
        403,
        "permission_denied",
    );
    assert_error(
        &svc.raw(1, "GetRoom", json!({ "id": uuid::Uuid::new_v4() }))
            .await,
        404,
        "not_found",
    );

    // p2p: exactly the caller and one other user.
    let p2p = svc
        .call(
            1,
            "CreateRoom",
            json!({ "name": "", "type": "p2p", "participants": [2] }),
        )
        .await["room"]
        .clone();
    assert_eq!(
        (p2p["type"].clone(), p2p["participants"].clone()),
        (json!("p2p"), json!([1, 2]))
    );
    assert_error(
        &svc.raw(
            1,
            "CreateRoom",
            json!({ "type": "p2p", "participants": [2, 3] }),
        )
        .await,
        400,
        "invalid_argument",
    );
    assert_error(
        &svc.raw(
            1,
            "CreateRoom",
            json!({ "type": "p2p", "participants": [] }),
        )
        .await,
        400,
        "invalid_argument",
    );
    assert_error(
        &svc.raw(
            1,
            "CreateRoom",
            json!({ "type": "p2p", "participants": [1] }),
        )
        .await,
        400,
        "invalid_argument",
    );
    assert_error(
        &svc.raw(
            1,
            "CreateRoom",
            json!({ "type": "channel", "participants": [2] }),
        )
        .await,
        400,
        "invalid_argument",
    );
    assert_error(
        &svc.raw(
            1,
            "CreateRoom",
            json!({ "type": "group", "participants": [0] }),
        )
        .await,
        400,
        "invalid_argument",
    );

    // LeaveRoom: the member is out, the room goes on without them.
    assert_eq!(
        svc.call(3, "LeaveRoom", json!({ "id": room_id })).await,
        json!({ "success": true, "removed": [3] })
    );
    assert_error(
        &svc.raw(3, "GetRoom", json!({ "id": room_id })).await,
        403,
        "permission_denied",
    );
    assert_error(
        &svc.raw(3, "LeaveRoom", json!({ "id": room_id })).await,
        403,
        "permission_denied",
    );
    assert_error(
        &svc.raw(3, "LeaveRoom", json!({ "id": uuid::Uuid::new_v4() }))
            .await,
        404,
        "not_found",
    );
    assert_eq!(
        svc.call(1, "GetRoom", json!({ "id": room_id })).await["room"]["participants"],
        json!([1, 2])
    );
    assert_eq!(
        svc.call(3, "GetRooms", json!({})).await["pagination"]["total"],
        0
    );
    assert!(
        db.removed_at_is_set(&room_id, 3).await,
        "membership ended, row kept"
    );
}

async fn owners_remove_participants_and_nobody_else_removes_anyone(backend: Setup) {
    let Some((svc, _db)) = service(backend, "leave_others").await else {
        return;
    };
    let room = svc.create_group(1, &[2, 3, 4, 5]).await;
    let members = async |svc: &TestService| {
        svc.call(1, "GetRoom", json!({ "id": room })).await["room"]["participants"].clone()
    };

    // A member may not remove anyone else, nor the owner; naming only themselves is leaving.
    for others in [json!([3]), json!([1]), json!([2, 3])] {
        assert_error(
            &svc.raw(
                2,
                "LeaveRoom",
                json!({ "id": room, "participants": others }),
            )
            .await,
            403,
            "permission_denied",
        );
    }
    assert_error(
        &svc.raw(2, "LeaveRoom", json!({ "id": room, "leaveAll": true }))
            .await,
        403,
        "permission_denied",
    );
    assert_eq!(members(&svc).await, json!([1, 2, 3, 4, 5]));

    // The owner removes two participants; a non-member in the list is skipped.
    assert_eq!(
        svc.call(
            1,
            "LeaveRoom",
            json!({ "id": room, "participants": [3, 5, 99] })
        )
        .await,
        json!({ "success": true, "removed": [3, 5] })
    );
    assert_eq!(members(&svc).await, json!([1, 2, 4]));
    assert_error(
        &svc.raw(3, "GetRoom", json!({ "id": room })).await,
        403,
        "permission_denied",
    );
    assert_error(
        &svc.raw(
            1,
            "LeaveRoom",
            json!({ "id": room, "participants": [2], "leaveAll": true }),
        )
        .await,
        400,
        "invalid_argument",
    );
    assert_error(
        &svc.raw(1, "LeaveRoom", json!({ "id": room, "participants": [0] }))
            .await,
        400,
        "invalid_argument",
    );

    // leaveAll ends every membership, the owner's too.
    assert_eq!(
        svc.call(1, "LeaveRoom", json!({ "id": room, "leaveAll": true }))
            .await,
        json!({ "success": true, "removed": [1, 2, 4] })
    );
    for user in [1, 2, 4] {
        assert_eq!(
            svc.call(user, "GetRooms", json!({})).await["pagination"]["total"],
            0
        );
    }

    // In a p2p room nobody removes the other participant.
    let p2p = svc
        .call(
            1,
            "CreateRoom",
            json!({ "type": "p2p", "participants": [2] }),
        )
        .await["room"]["id"]
        .as_str()
        .expect("room id")
        .to_owned();
    assert_error(
        &svc.raw(1, "LeaveRoom", json!({ "id": p2p, "participants": [2] }))
            .await,
        403,
        "permission_denied",
    );
}

async fn get_rooms_orders_pinned_first_then_latest_activity_and_pages(backend: Setup) {
    let Some((svc, _db)) = service(backend, "room_list").await else {
        return;
    };
    let a = svc.create_group(10, &[11]).await;
    let b = svc.create_group(10, &[11]).await;
    let c = svc.create_group(10, &[12]).await;
    let _foreign = svc.create_group(20, &[21]).await;

    // Newest creation first while nobody has written.
    let list = svc
        .call(10, "GetRooms", json!({ "page": 1, "limit": 20 }))
        .await;
    assert_eq!(ids(&list["items"]), [c.clone(), b.clone(), a.clone()]);
    assert_eq!(
        list["pagination"],
        json!({ "page": 1, "limit": 20, "total": 3 })
    );

    // A message makes a room the latest activity.
    svc.send(10, &a, "bump").await;
    let list = svc.call(10, "GetRooms", json!({})).await;
    assert_eq!(ids(&list["items"]), [a.clone(), c.clone(), b.clone()]);
    assert!(list["items"][0]["lastMessageAt"].is_string());

    // A pinned room comes first whatever its activity (pins are per user).
    assert_eq!(
        svc.call(10, "PinRoom", json!({ "id": b })).await,
        json!({ "success": true })
    );
    let list = svc.call(10, "GetRooms", json!({})).await;
    assert_eq!(ids(&list["items"]), [b.clone(), a.clone(), c.clone()]);
    assert_eq!(list["items"][0]["isPinned"], true);
    assert_eq!(
        svc.call(10, "GetRoom", json!({ "id": b })).await["room"]["isPinned"],
        true
    );
    assert_eq!(
        ids(&svc.call(11, "GetRooms", json!({})).await["items"]),
        [a.clone(), b.clone()],
        "user 11 has no pin"
    );
    // Pinning twice is harmless; unpinning puts the room back by activity; a pin of a room the
    // caller is not in is refused.
    svc.call(10, "PinRoom", json!({ "id": b, "pinned": true }))
        .await;
    svc.call(10, "PinRoom", json!({ "id": c })).await;
    svc.call(10, "PinRoom", json!({ "id": c, "pinned": false }))
        .await;
    assert_eq!(
        ids(&svc.call(10, "GetRooms", json!({})).await["items"]),
        [b.clone(), a.clone(), c.clone()]
    );
    assert_error(
        &svc.raw(11, "PinRoom", json!({ "id": c })).await,
        403,
        "permission_denied",
    );

    // Pages.
    let first = svc
        .call(10, "GetRooms", json!({ "page": 1, "limit": 2 }))
        .await;
    let second = svc
        .call(10, "GetRooms", json!({ "page": 2, "limit": 2 }))
        .await;
    let beyond = svc
        .call(10, "GetRooms", json!({ "page": 9, "limit": 2 }))
        .await;
    assert_eq!(ids(&first["items"]), [b.clone(), a.clone()]);
    assert_eq!(ids(&second["items"]), [c]);
    assert_eq!(
        (
            beyond["items"].clone(),
            beyond["pagination"]["total"].clone()
        ),
        (json!([]), json!(3))
    );
    // limit is clamped to 100; 0 (proto3 "unset") means the default 20.
    assert_eq!(
        svc.call(10, "GetRooms", json!({ "limit": 1000 })).await["pagination"]["limit"],
        100
    );
    assert_eq!(
        svc.call(10, "GetRooms", json!({ "page": 0, "limit": 0 }))
            .await["pagination"],
        json!({ "page": 1, "limit": 20, "total": 3 })
    );
}

async fn unread_counts_follow_sends_and_read_markers(backend: Setup) {
    let Some((svc, _db)) = service(backend, "unread").await else {
        return;
    };
    let room = svc.create_group(1, &[2, 3]).await;
    let other = svc.create_group(2, &[3]).await;
    let unread = |user: i32| {
        let (svc, room) = (&svc, &room);
        async move {
            let listed = svc.call(user, "GetRooms", json!({})).await;
            let item = listed["items"]
                .as_array()
                .expect("items")
                .iter()
                .find(|r| r["id"] == json!(room))
                .cloned()
                .expect("the room is listed");
            let got = svc.call(user, "GetRoom", json!({ "id": room })).await["room"]["unreadCount"]
                .clone();
            assert_eq!(
                item["unreadCount"], got,
                "GetRooms and GetRoom agree for user {user}"
            );
            got.as_u64().expect("unreadCount")
        }
    };
    assert_eq!(
        (unread(1).await, unread(2).await, unread(3).await),
        (0, 0, 0)
    );

    let m1 = svc.send(1, &room, "uno").await;
    let m2 = svc.send(1, &room, "dos").await;
    svc.send(1, &room, "tres").await;
    svc.send(2, &room, "cuatro").await;
    svc.send(2, &other, "elsewhere").await;
    // One's own messages never count; another room's do not either.
    assert_eq!(
        (unread(1).await, unread(2).await, unread(3).await),
        (1, 3, 4)
    );

    svc.call(
        3,
        "MarkMessagesAsRead",
        json!({ "roomId": room, "messageIds": [m1["id"], m2["id"]] }),
    )
    .await;
    assert_eq!(unread(3).await, 2);
    // Marking the same messages again changes nothing.
    svc.call(
        3,
        "MarkMessagesAsRead",
        json!({ "roomId": room, "messageIds": [m1["id"]] }),
    )
    .await;
    assert_eq!(unread(3).await, 2);
    svc.call(
        3,
        "MarkMessagesAsRead",
        json!({ "roomId": room, "since": "1970-01-01T00:00:00Z" }),
    )
    .await;
    assert_eq!(
        (unread(1).await, unread(2).await, unread(3).await),
        (1, 3, 0)
    );
}

/// `since: 1970` on a long room costs one chunk (500 messages) per call, not the room: the reply
/// says where the next chunk starts, and following it marks everything.
async fn a_since_marker_walks_a_long_room_one_chunk_per_call(backend: Setup) {
    let Some((svc, _db)) = service(backend, "since_chunks").await else {
        return;
    };
    let room = svc.create_group(1, &[3]).await;
    // The reader's own ten come first: they fill part of the first chunk but are never marked.
    for i in 0..10 {
        svc.send(3, &room, &format!("own {i}")).await;
    }
    for batch in 0..101 {
        let contents: Vec<String> = (0..10).map(|i| format!("m{}", batch * 10 + i)).collect();
        futures::future::join_all(contents.iter().map(|c| svc.send(1, &room, c))).await;
    }
    let unread = || async {
        svc.call(3, "GetRoom", json!({ "id": room })).await["room"]["unreadCount"]
            .as_u64()
            .expect("unreadCount")
    };
    assert_eq!(unread().await, 1_010);
    let mark = |since: Value| {
        let (svc, room) = (&svc, &room);
        async move {
            let reply = svc
                .call(
                    3,
                    "MarkMessagesAsRead",
                    json!({ "roomId": room, "since": since }),
                )
                .await;
            (
                reply["updated"].as_u64().expect("updated"),
                reply.get("nextSince").cloned(),
            )
        }
    };
    let mut since = json!("1970-01-01T00:00:00Z");
    let mut walked = Vec::new();
    loop {
        let (updated, next) = mark(since.clone()).await;
        walked.push((updated, unread().await));
        match next {
            Some(next) => since = next,
            None => break,
        }
    }
    assert_eq!(
        walked,
        vec![(490, 520), (500, 20), (20, 0)],
        "(updated, unread) after each call"
    );
    // Again from 1970: the first chunk only, nothing new, and the way on.
    let (updated, next) = mark(json!("1970-01-01T00:00:00Z")).await;
    assert_eq!(updated, 0);
    assert!(next.is_some(), "a long range always says where it goes on");
}

async fn messages_send_history_read_markers_and_reactions(backend: Setup) {
    let Some((svc, db)) = service(backend, "messages").await else {
        return;
    };
    let room = svc.create_group(1, &[2]).await;

    let sent = svc
        .call(
            1,
            "SendMessage",
            json!({ "roomId": room, "content": "hola 👋", "type": "user_message" }),
        )
        .await;
    assert_eq!(sent["success"], true);
    let m1 = sent["message"].clone();
    assert_eq!(
        (
            m1["roomId"].clone(),
            m1["senderId"].clone(),
            m1["content"].clone(),
            m1["type"].clone()
        ),
        (
            json!(room),
            json!(1),
            json!("hola 👋"),
            json!("user_message")
        )
    );
    let m1_id: uuid::Uuid = m1["id"].as_str().expect("id").parse().expect("uuid");
    assert_eq!(
        m1_id.get_version_num(),
        1,
        "message ids are time-based UUIDs (timeuuid)"
    );
    // `type` defaults to user_message.
    let m2 = svc
        .call(
            2,
            "SendMessage",
            json!({ "roomId": room, "content": "¿qué tal?" }),
        )
        .await["message"]
        .clone();
    assert_eq!(m2["type"], "user_message");
    let m3 = svc.send(1, &room, "bien").await;

    assert_error(
        &svc.raw(
            3,
            "SendMessage",
            json!({ "roomId": room, "content": "intruder" }),
        )
        .await,
        403,
        "permission_denied",
    );
    assert_error(
        &svc.raw(
            1,
            "SendMessage",
            json!({ "roomId": uuid::Uuid::new_v4(), "content": "x" }),
        )
        .await,
        404,
        "not_found",
    );
    assert_error(
        &svc.raw(1, "SendMessage", json!({ "roomId": room, "content": "  " }))
            .await,
        400,
        "invalid_argument",
    );

    // History: newest first, decrypted, last page has no cursor.
    let history = svc
        .call(2, "GetMessageHistory", json!({ "id": room, "limit": 20 }))
        .await;
    assert_eq!(
        ids(&history["items"]),
        [
            m3["id"].as_str().expect("id"),
            m2["id"].as_str().expect("id"),
            m1["id"].as_str().expect("id")
        ]
    );
    assert_eq!(
        history["items"][2], m1,
        "history returns the message as SendMessage did"
    );
    assert_eq!(history["pagination"], json!({ "nextCursor": null }));
    assert_error(
        &svc.raw(3, "GetMessageHistory", json!({ "id": room })).await,
        403,
        "permission_denied",
    );
    assert_error(
        &svc.raw(
            1,
            "GetMessageHistory",
            json!({ "id": uuid::Uuid::new_v4() }),
        )
        .await,
        404,
        "not_found",
    );
    assert_error(
        &svc.raw(
            1,
            "GetMessageHistory",
            json!({ "id": room, "before": uuid::Uuid::now_v1(&[1; 6]) }),
        )
        .await,
        404,
        "not_found",
    );

    // Read markers: by ids, then since; one's own messages are never counted; repeats count 0.
    let read = |user: i32, body: Value| {
        let svc = &svc;
        async move {
            svc.call(user, "MarkMessagesAsRead", body).await["updated"]
                .as_u64()
                .expect("updated")
        }
    };
    assert_eq!(
        read(
            2,
            json!({ "roomId": room, "messageIds": [m1["id"], m2["id"]] })
        )
        .await,
        1,
        "m2 is user 2's own"
    );
    assert_eq!(
        read(2, json!({ "roomId": room, "messageIds": [m1["id"]] })).await,
        0,
        "already read"
    );
    assert_eq!(
        read(
            2,
            json!({ "roomId": room, "since": "2000-01-01T00:00:00Z" })
        )
        .await,
        1,
        "only m3 is left"
    );
    assert_eq!(
        read(1, json!({ "roomId": room, "since": m1["createdAt"] })).await,
        1,
        "user 1 reads m2"
    );
    assert_eq!(
        read(
            2,
            json!({ "roomId": room, "messageIds": [uuid::Uuid::now_v1(&[1; 6])] })
        )
        .await,
        0,
        "unknown ids are ignored"
    );
    let last_read = db.last_read_at(&room, 2).await;
    let m3_at: chrono::DateTime<chrono::Utc> = m3["createdAt"]
        .as_str()
        .expect("createdAt")
        .parse()
        .expect("time");
    assert_eq!(
        last_read,
        Some(m3_at),
        "the read position is the newest message read"
    );
    assert_error(
        &svc.raw(
            3,
            "MarkMessagesAsRead",
            json!({ "roomId": room, "since": "2000-01-01T00:00:00Z" }),
        )
        .await,
        403,
        "permission_denied",
    );
    assert_error(
        &svc.raw(2, "MarkMessagesAsRead", json!({ "roomId": room }))
            .await,
        400,
        "invalid_argument",
    );
    assert_error(
        &svc.raw(
            2,
            "MarkMessagesAsRead",
            json!({ "roomId": room, "messageIds": [m1["id"]], "since": "2000-01-01T00:00:00Z" }),
        )
        .await,
        400,
        "invalid_argument",
    );
    assert_error(
        &svc.raw(
            2,
            "MarkMessagesAsRead",
            json!({ "roomId": room, "since": "yesterday" }),
        )
        .await,
        400,
        "invalid_argument",
    );

    // Reactions: idempotent per (message, user, reaction).
    for _ in 0..2 {
        assert_eq!(
            svc.call(
                2,
                "ReactToMessage",
                json!({ "messageId": m1["id"], "reaction": "👍" })
            )
            .await,
            json!({ "success": true })
        );
    }
    svc.call(
        2,
        "ReactToMessage",
        json!({ "messageId": m1["id"], "reaction": "🎉" }),
    )
    .await;
    svc.call(
        1,
        "ReactToMessage",
        json!({ "messageId": m1["id"], "reaction": "👍" }),
    )
    .await;
    assert_eq!(db.reaction_count(m1["id"].as_str().expect("id")).await, 3);
    assert_error(
        &svc.raw(
            3,
            "ReactToMessage",
            json!({ "messageId": m1["id"], "reaction": "👍" }),
        )
        .await,
        403,
        "permission_denied",
    );
    assert_error(
        &svc.raw(
            2,
            "ReactToMessage",
            json!({ "messageId": uuid::Uuid::now_v1(&[1; 6]), "reaction": "👍" }),
        )
        .await,
        404,
        "not_found",
    );
    assert_error(
        &svc.raw(
            2,
            "ReactToMessage",
            json!({ "messageId": m1["id"], "reaction": "" }),
        )
        .await,
        400,
        "invalid_argument",
    );

    // A member who left can no longer write or read.
    svc.call(2, "LeaveRoom", json!({ "id": room })).await;
    assert_error(
        &svc.raw(
            2,
            "SendMessage",
            json!({ "roomId": room, "content": "still here?" }),
        )
        .await,
        403,
        "permission_denied",
    );
    assert_error(
        &svc.raw(2, "GetMessageHistory", json!({ "id": room })).await,
        403,
        "permission_denied",
    );
}

/// A signed token with arbitrary claims.
fn token(secret: &[u8], claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

async fn every_method_rejects_unauthenticated_calls(backend: Setup) {
    let Some((svc, _db)) = service(backend, "auth").await else {
        return;
    };
    let room = svc.create_group(1, &[2]).await;
    let http = svc.client.http();
    let good = token(common::JWT_SECRET, json!({ "sub": 1, "exp": now() + 600 }));
    let cases: Vec<(&str, Option<String>, Option<&str>)> = vec![
        ("no token", None, Some("1")),
        ("not bearer", Some(format!("Basic {good}")), Some("1")),
        (
            "bad signature",
            Some(format!(
                "Bearer {}",
                token(
                    b"some-other-secret-some-other-secret",
                    json!({ "sub": 1, "exp": now() + 600 })
                )
            )),
            Some("1"),
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                token(common::JWT_SECRET, json!({ "sub": 1, "exp": now() - 600 }))
            )),
            Some("1"),
        ),
        (
            "no exp",
            Some(format!(
                "Bearer {}",
                token(common::JWT_SECRET, json!({ "sub": 1 }))
            )),
            Some("1"),
        ),
        (
            "non-numeric subject",
            Some(format!(
                "Bearer {}",
                token(
                    common::JWT_SECRET,
                    json!({ "sub": "alice", "exp": now() + 600 })
                )
            )),
            Some("1"),
        ),
        (
            "garbage token",
            Some("Bearer abc.def.ghi".into()),
            Some("1"),
        ),
        (
            "X-User-ID mismatch",
            Some(format!("Bearer {good}")),
            Some("2"),
        ),
        ("X-User-ID missing", Some(format!("Bearer {good}")), None),
    ];
    for method in METHODS {
        for (case, authorization, user) in &cases {
            let mut request = http
                .post(svc.client.method_url(method))
                .json(&json!({ "id": room, "roomId": room, "content": "x" }));
            if let Some(a) = authorization {
                request = request.header("authorization", a);
            }
            if let Some(u) = user {
                request = request.header("x-user-id", *u);
            }
            let response = request.send().await.expect("HTTP");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("JSON error body");
            assert_eq!(
                (status, body["code"].as_str()),
                (401, Some("unauthenticated")),
                "{method} / {case}: {body}"
            );
            if case.starts_with("X-User-ID") {
                assert!(
                    body["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("X-User-ID")),
                    "{method} / {case}: {body}"
                );
            }
        }
    }
    // A numeric-string subject is accepted.
    let response = http
        .post(svc.client.method_url("GetRooms"))
        .bearer_auth(token(
            common::JWT_SECRET,
            json!({ "sub": "1", "exp": now() + 600 }),
        ))
        .header("x-user-id", "1")
        .json(&json!({}))
        .send()
        .await
        .expect("HTTP");
    assert_eq!(response.status().as_u16(), 200);
}

async fn malformed_input_is_invalid_argument_never_500(backend: Setup) {
    let Some((svc, _db)) = service(backend, "bad_input").await else {
        return;
    };
    let room = svc.create_group(1, &[2]).await;
    let message = svc.send(1, &room, "hi").await["id"].clone();
    let http = svc.client.http();
    let token = svc.client.token(chat_service::ids::UserId(1));

    // Raw bodies no method accepts.
    let garbage: [&[u8]; 6] = [b"{", b"[]", b"null", b"42", b"\"text\"", b"\xff\xfe"];
    for method in METHODS {
        for body in garbage {
            let response = http
                .post(svc.client.method_url(method))
                .bearer_auth(&token)
                .header("x-user-id", "1")
                .header("content-type", "application/json")
                .body(body.to_vec())
                .send()
                .await
                .expect("HTTP");
            let status = response.status().as_u16();
            let reply: Value = response.json().await.expect("JSON error body");
            assert_eq!(
                (status, reply["code"].as_str()),
                (400, Some("invalid_argument")),
                "{method} {:?}: {reply}",
                String::from_utf8_lossy(body)
            );
        }
        // Not JSON at all.
        let response = http
            .post(svc.client.method_url(method))
            .bearer_auth(&token)
            .header("x-user-id", "1")
            .header("content-type", "text/plain")
            .body("hello")
            .send()
            .await
            .expect("HTTP");
        assert_eq!(response.status().as_u16(), 400, "{method} text/plain");
    }

    // Wrong types and missing fields, method by method.
    let cases = [
        ("CreateRoom", json!({ "name": "x", "participants": [2] })),
        (
            "CreateRoom",
            json!({ "name": 5, "type": "group", "participants": [2] }),
        ),
        (
            "CreateRoom",
            json!({ "type": "group", "participants": "2" }),
        ),
        (
            "CreateRoom",
            json!({ "type": "group", "participants": ["2"] }),
        ),
        (
            "CreateRoom",
            json!({ "type": "group", "participants": [2.5] }),
        ),
        (
            "CreateRoom",
            json!({ "type": "group", "participants": [99999999999i64] }),
        ),
        (
            "CreateRoom",
            json!({ "type": "group", "name": "n".repeat(256) }),
        ),
        ("GetRoom", json!({})),
        ("GetRoom", json!({ "id": 5 })),
        ("GetRoom", json!({ "id": "not-a-uuid" })),
        ("GetRooms", json!({ "page": -1 })),
        ("GetRooms", json!({ "limit": "ten" })),
        ("GetRooms", json!({ "page": 1.5 })),
        ("LeaveRoom", json!({ "id": null })),
        ("LeaveRoom", json!({ "id": room, "participants": "2" })),
        ("LeaveRoom", json!({ "id": room, "participants": [-1] })),
        (
            "LeaveRoom",
            json!({ "id": room, "participants": [4294967296i64] }),
        ),
        ("LeaveRoom", json!({ "id": room, "leaveAll": "yes" })),
        ("PinRoom", json!({})),
        ("PinRoom", json!({ "id": room, "pinned": 1 })),
        ("SendMessage", json!({ "roomId": room })),
        ("SendMessage", json!({ "content": "x" })),
        ("SendMessage", json!({ "roomId": room, "content": 5 })),
        (
            "SendMessage",
            json!({ "roomId": room, "content": "x", "type": "Not A Type" }),
        ),
        ("SendMessage", json!({ "roomId": room, "content": ["x"] })),
        ("GetMessageHistory", json!({ "id": room, "limit": -5 })),
        ("GetMessageHistory", json!({ "id": room, "before": "zzz" })),
        ("GetMessageHistory", json!({ "id": [room] })),
        (
            "MarkMessagesAsRead",
            json!({ "roomId": room, "messageIds": "all" }),
        ),
        (
            "MarkMessagesAsRead",
            json!({ "roomId": room, "messageIds": ["nope"] }),
        ),
        ("MarkMessagesAsRead", json!({ "roomId": room, "since": 12 })),
        ("ReactToMessage", json!({ "messageId": message })),
        (
            "ReactToMessage",
            json!({ "messageId": message, "reaction": 1 }),
        ),
        (
            "ReactToMessage",
            json!({ "messageId": "x", "reaction": "👍" }),
        ),
        (
            "ReactToMessage",
            json!({ "messageId": message, "reaction": "x".repeat(65) }),
        ),
    ];
    for (method, body) in cases {
        assert_error(
            &svc.raw(1, method, body.clone()).await,
            400,
            "invalid_argument",
        );
    }
}

async fn unknown_methods_and_wrong_http_methods_get_connect_errors(backend: Setup) {
    let Some((svc, _db)) = service(backend, "routing").await else {
        return;
    };
    assert_error(
        &svc.raw(1, "DeleteEverything", json!({})).await,
        404,
        "not_found",
    );
    let response = svc
        .client
        .http()
        .get(svc.client.method_url("SendMessage"))
        .send()
        .await
        .expect("HTTP");
    assert_eq!(response.status().as_u16(), 404);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["code"], "not_found");
    let (status, _) = svc.get("/healthz").await;
    assert_eq!(status, 200);
    tokio::time::timeout(Duration::from_secs(20), svc.stop())
        .await
        .expect("stops");
}

/// The (token, platform) pairs ListDeviceTokens shows `user`.
async fn listed_devices(svc: &TestService, user: i32) -> Vec<(String, String)> {
    svc.call(user, "ListDeviceTokens", json!({})).await["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| {
            assert!(
                d["registeredAt"].as_str().is_some(),
                "a device without registeredAt: {d}"
            );
            (
                d["token"].as_str().expect("token").to_owned(),
                d["platform"].as_str().expect("platform").to_owned(),
            )
        })
        .collect()
}

async fn device_tokens_register_list_delete_per_user(backend: Setup) {
    let Some((svc, _db)) = service(backend, "devices").await else {
        return;
    };
    assert_eq!(listed_devices(&svc, 1).await, vec![]);
    let reply = svc
        .call(
            1,
            "RegisterDeviceToken",
            json!({ "token": "apns-b", "platform": "ios" }),
        )
        .await;
    assert_eq!(reply["device"]["token"], json!("apns-b"));
    assert_eq!(reply["device"]["platform"], json!("ios"));
    svc.call(
        1,
        "RegisterDeviceToken",
        json!({ "token": "fcm-a", "platform": "android" }),
    )
    .await;
    svc.call(
        2,
        "RegisterDeviceToken",
        json!({ "token": "web-2", "platform": "web" }),
    )
    .await;
    // By token, and only the caller's own.
    assert_eq!(
        listed_devices(&svc, 1).await,
        vec![
            ("apns-b".to_owned(), "ios".to_owned()),
            ("fcm-a".to_owned(), "android".to_owned())
        ]
    );
    assert_eq!(
        listed_devices(&svc, 2).await,
        vec![("web-2".to_owned(), "web".to_owned())]
    );
    // Registering again moves the token to the new platform.
    tokio::time::sleep(Duration::from_millis(2)).await;
    svc.call(
        1,
        "RegisterDeviceToken",
        json!({ "token": "apns-b", "platform": "web" }),
    )
    .await;
    assert_eq!(
        listed_devices(&svc, 1).await[0],
        ("apns-b".to_owned(), "web".to_owned())
    );
    // Another user deleting the same token string deletes nothing of user 1's.
    svc.call(2, "DeleteDeviceToken", json!({ "token": "apns-b" }))
        .await;
    assert_eq!(listed_devices(&svc, 1).await.len(), 2);
    svc.call(1, "DeleteDeviceToken", json!({ "token": "apns-b" }))
        .await;
    assert_eq!(
        listed_devices(&svc, 1).await,
        vec![("fcm-a".to_owned(), "android".to_owned())]
    );
    // Idempotent: deleting it again (a client retry) succeeds.
    svc.call(1, "DeleteDeviceToken", json!({ "token": "apns-b" }))
        .await;
    // A deleted token can be registered again.
    tokio::time::sleep(Duration::from_millis(2)).await;
    svc.call(
        1,
        "RegisterDeviceToken",
        json!({ "token": "apns-b", "platform": "ios" }),
    )
    .await;
    assert_eq!(listed_devices(&svc, 1).await.len(), 2);

    // Bad input is invalid_argument, with a message.
    for body in [
        json!({ "token": "", "platform": "ios" }),
        json!({ "token": "has space", "platform": "ios" }),
        json!({ "token": "nul\u{0}", "platform": "ios" }),
        json!({ "token": "x".repeat(4097), "platform": "ios" }),
        json!({ "token": "ok", "platform": "blackberry" }),
        json!({ "token": "ok" }),
        json!({ "platform": "ios" }),
    ] {
        assert_error(
            &svc.raw(3, "RegisterDeviceToken", body.clone()).await,
            400,
            "invalid_argument",
        );
    }
    assert_error(
        &svc.raw(3, "DeleteDeviceToken", json!({ "token": "" }))
            .await,
        400,
        "invalid_argument",
    );
    assert_eq!(listed_devices(&svc, 3).await, vec![]);

    // At most 20 per user: the 21st is refused until one goes; registering a held one again
    // is still fine.
    for i in 0..20 {
        svc.call(
            4,
            "RegisterDeviceToken",
            json!({ "token": format!("t{i:02}"), "platform": "android" }),
        )
        .await;
    }
    assert_error(
        &svc.raw(
            4,
            "RegisterDeviceToken",
            json!({ "token": "t20", "platform": "android" }),
        )
        .await,
        429,
        "resource_exhausted",
    );
    svc.call(
        4,
        "RegisterDeviceToken",
        json!({ "token": "t05", "platform": "ios" }),
    )
    .await;
    svc.call(4, "DeleteDeviceToken", json!({ "token": "t00" }))
        .await;
    svc.call(
        4,
        "RegisterDeviceToken",
        json!({ "token": "t20", "platform": "android" }),
    )
    .await;
    assert_eq!(listed_devices(&svc, 4).await.len(), 20);
}
