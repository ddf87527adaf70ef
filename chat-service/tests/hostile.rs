//! Hostile input against every method, through the migration router on both stores (legacy
//! PostgreSQL primary, the CQL store written in sync and serving half the users): random and
//! malformed bodies, headers, ids, cursors, times, Unicode (NUL, lone surrogates, the edges of
//! the planes) and numbers (huge, negative, fractional). Never a 5xx or a dropped connection;
//! every acknowledged message reads back as sent from either store; the stores agree
//! (`validate` finds no drift).
//!
//! The cases come from a seeded generator: `FICUS_FUZZ_SEED` replays a run (the seed is printed),
//! `FICUS_FUZZ_CASES` sets how many (default 1,500).
//!
//! Over 600 lines: the generator of hostile values for every method's fields and the checks
//! that follow them (answer codes, read-back, validate) belong together.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chat_service::config::{NewStoreChoice, StoreChoice};
use chat_service::flags::{DualWrite, FlagSource, Side};
use chat_service::ids::UserId;
use chat_service::metrics::Metrics;
use chat_service::routing::cohort;
use chat_service::store::postgres::PgStore;
use chat_service::store::scylla::{CqlConfig, CqlStore};
use chat_service::validate::{self, ValidateConfig};
use common::TestService;
use ficus_testkit::{Cassandra, Postgres};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Callers the generator plays; none owns the rooms the auditors read.
const FUZZ_USERS: [i32; 4] = [1, 2, 3, 4];

/// A field's kind, for a value that fits it.
#[derive(Clone, Copy)]
enum Kind {
    Name,
    RoomType,
    Users,
    Room,
    /// A room to leave: never one of the audited rooms, whose members must stay to write.
    RoomToLeave,
    Page,
    Flag,
    Content,
    MessageType,
    Message,
    Messages,
    Time,
    Reaction,
    DeviceToken,
    Platform,
}

const SCHEMAS: [(&str, &[(&str, Kind)]); 12] = [
    (
        "CreateRoom",
        &[
            ("name", Kind::Name),
            ("type", Kind::RoomType),
            ("participants", Kind::Users),
        ],
    ),
    ("GetRoom", &[("id", Kind::Room)]),
    ("GetRooms", &[("page", Kind::Page), ("limit", Kind::Page)]),
    (
        "LeaveRoom",
        &[
            ("id", Kind::RoomToLeave),
            ("participants", Kind::Users),
            ("leaveAll", Kind::Flag),
        ],
    ),
    ("PinRoom", &[("id", Kind::Room), ("pinned", Kind::Flag)]),
    (
        "SendMessage",
        &[
            ("roomId", Kind::Room),
            ("content", Kind::Content),
            ("type", Kind::MessageType),
        ],
    ),
    (
        "GetMessageHistory",
        &[
            ("id", Kind::Room),
            ("limit", Kind::Page),
            ("before", Kind::Message),
        ],
    ),
    (
        "MarkMessagesAsRead",
        &[
            ("roomId", Kind::Room),
            ("messageIds", Kind::Messages),
            ("since", Kind::Time),
        ],
    ),
    (
        "ReactToMessage",
        &[("messageId", Kind::Message), ("reaction", Kind::Reaction)],
    ),
    (
        "RegisterDeviceToken",
        &[("token", Kind::DeviceToken), ("platform", Kind::Platform)],
    ),
    ("ListDeviceTokens", &[]),
    ("DeleteDeviceToken", &[("token", Kind::DeviceToken)]),
];

/// What the run knows exists, so that many cases reach past validation into the stores.
struct World {
    /// The audited rooms first, then those the run created.
    rooms: Vec<String>,
    audited: usize,
    messages: Vec<String>,
}

/// Strings that have broken services: NUL, lone surrogates are not representable here (they
/// come in raw bodies), the edges of the planes, byte-order marks, direction overrides,
/// combining marks, SQL and path tricks, and long ones.
fn hostile_string(rng: &mut StdRng) -> String {
    let fixed = [
        "",
        " ",
        "\u{0}",
        "a\u{0}b",
        "\u{FEFF}",
        "\u{FFFF}",
        "\u{10FFFF}",
        "\u{202E}evil",
        "e\u{301}\u{301}\u{301}",
        "' or 1=1 --",
        "'); drop table room_message; --",
        "../../etc/passwd",
        "%00",
        "\t\r\n",
        "\u{7f}",
        "👍🏽",
        "\u{200B}",
        "null",
        "1970-01-01T00:00:00Z",
    ];
    match rng.random_range(0..5) {
        0 | 1 => (*fixed.choose(rng).expect("strings")).to_owned(),
        2 => (0..rng.random_range(1..300))
            .map(|_| random_char(rng))
            .collect(),
        // Ordinary text around one edge character: short enough to pass every length rule.
        3 => {
            let edge = [
                '\u{0}',
                '\u{1}',
                '\u{1b}',
                '\u{7f}',
                '\u{85}',
                '\u{FEFF}',
                '\u{FFFE}',
                '\u{FFFF}',
                '\u{10FFFF}',
                '\u{202E}',
                '\u{2028}',
                '\u{E000}',
            ];
            format!("ab{}cd", edge.choose(rng).expect("characters"))
        }
        _ => {
            let unit = fixed.choose(rng).expect("strings");
            let unit = if unit.is_empty() { "x" } else { unit };
            unit.repeat(rng.random_range(100..5_000))
        }
    }
}

fn random_char(rng: &mut StdRng) -> char {
    let ranges = [
        0u32..0x20,
        0x20..0x7f,
        0x80..0x800,
        0xE000..0x10000,
        0x1F300..0x1FAFF,
        0x10000..0x110000,
    ];
    let range = ranges.choose(rng).expect("ranges").clone();
    char::from_u32(rng.random_range(range)).unwrap_or('\u{FFFD}')
}

fn hostile_number(rng: &mut StdRng) -> Value {
    match rng.random_range(0..12) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(i32::MIN),
        3 => json!(i32::MAX),
        4 => json!(i64::MAX),
        5 => json!(u64::MAX),
        6 => json!(1e308),
        7 => json!(-1e308),
        8 => json!(0.5),
        9 => json!(-0.0),
        10 => json!(2_i64.pow(53) + 1),
        _ => json!(rng.random::<i64>()),
    }
}

fn hostile_time(rng: &mut StdRng) -> Value {
    let times = [
        "1970-01-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "+275760-09-13T00:00:00Z",
        "-262144-01-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-01-01T00:00:00+25:00",
        "2024-01-01",
        "yesterday",
        "",
    ];
    json!(times.choose(rng).expect("times"))
}

fn hostile_id(rng: &mut StdRng) -> Value {
    match rng.random_range(0..6) {
        0 => json!("00000000-0000-0000-0000-000000000000"),
        1 => json!("ffffffff-ffff-ffff-ffff-ffffffffffff"),
        2 => json!(uuid::Uuid::new_v4()),
        // A time-based id no message has.
        3 => json!(uuid::Uuid::now_v1(&[1, 2, 3, 4, 5, 6])),
        4 => json!("not-a-uuid"),
        _ => json!(format!("{}{}", uuid::Uuid::new_v4(), "0")),
    }
}

/// Any value at all, of any type.
fn hostile_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..9) {
        0 | 1 => json!(hostile_string(rng)),
        2 => hostile_number(rng),
        3 => hostile_time(rng),
        4 => hostile_id(rng),
        5 => json!(rng.random_bool(0.5)),
        6 => Value::Null,
        7 if depth < 3 => Value::Array(
            (0..rng.random_range(0..5))
                .map(|_| hostile_value(rng, depth + 1))
                .collect(),
        ),
        7 => json!([]),
        _ if depth < 3 => {
            let mut map = serde_json::Map::new();
            for _ in 0..rng.random_range(0..4) {
                map.insert(hostile_string(rng), hostile_value(rng, depth + 1));
            }
            Value::Object(map)
        }
        _ => json!({}),
    }
}

/// A value of the field's kind that the service may accept.
fn fitting(rng: &mut StdRng, kind: Kind, world: &World) -> Value {
    let room = |rng: &mut StdRng| json!(world.rooms.choose(rng).expect("rooms"));
    let message = |rng: &mut StdRng| json!(world.messages.choose(rng).expect("messages"));
    match kind {
        Kind::Name => json!(format!("room {}", rng.random_range(0..100))),
        Kind::RoomType => json!(["group", "p2p"].choose(rng).expect("types")),
        Kind::Users => json!(
            (0..rng.random_range(1..4))
                .map(|_| rng.random_range(1..8))
                .collect::<Vec<i32>>()
        ),
        // Mostly the audited rooms, where every fuzzed caller is a member.
        Kind::Room if rng.random_bool(0.7) => json!(
            world.rooms[..world.audited]
                .choose(rng)
                .expect("audited rooms")
        ),
        Kind::Room => room(rng),
        Kind::RoomToLeave => match world.rooms.get(world.audited..) {
            Some(created) if !created.is_empty() => json!(created.choose(rng).expect("rooms")),
            _ => json!(uuid::Uuid::new_v4()),
        },
        Kind::Page => json!(rng.random_range(1..60)),
        Kind::Flag => json!(rng.random_bool(0.5)),
        Kind::Content => json!(
            (0..rng.random_range(1..40))
                .map(|_| random_char(rng))
                .collect::<String>()
        ),
        Kind::MessageType => json!("user_message"),
        Kind::Message => message(rng),
        Kind::Messages => json!(
            (0..rng.random_range(1..5))
                .map(|_| message(rng))
                .collect::<Vec<_>>()
        ),
        Kind::Time => json!("1970-01-01T00:00:00Z"),
        Kind::Reaction => json!(["👍", "🎉", "ok"].choose(rng).expect("reactions")),
        Kind::DeviceToken => json!(format!("fuzz-device-{}", rng.random_range(0..30))),
        Kind::Platform => json!(["ios", "android", "web"].choose(rng).expect("platforms")),
    }
}

/// A body for `fields`. Half the time every field fits but one, which is hostile (for text
/// fields, often a hostile string that is still valid text: what the stores must keep intact);
/// otherwise each field fits, is hostile or is left out. Sometimes an unknown field too.
fn body(rng: &mut StdRng, fields: &[(&str, Kind)], world: &World) -> Value {
    let mut map = serde_json::Map::new();
    let twisted =
        (!fields.is_empty() && rng.random_bool(0.5)).then(|| rng.random_range(0..fields.len()));
    for (i, (name, kind)) in fields.iter().enumerate() {
        let value = match twisted {
            Some(t) if t == i => match kind {
                Kind::Name
                | Kind::Content
                | Kind::Reaction
                | Kind::DeviceToken
                | Kind::Platform
                    if rng.random_bool(0.7) =>
                {
                    Some(json!(hostile_string(rng)))
                }
                _ => Some(hostile_value(rng, 0)),
            },
            Some(_) => Some(fitting(rng, *kind, world)),
            None => match rng.random_range(0..10) {
                0..=6 => Some(fitting(rng, *kind, world)),
                7..=8 => Some(hostile_value(rng, 0)),
                _ => None,
            },
        };
        if let Some(value) = value {
            map.insert((*name).to_owned(), value);
        }
    }
    if rng.random_bool(0.1) {
        map.insert(hostile_string(rng), hostile_value(rng, 0));
    }
    Value::Object(map)
}

/// Bytes no JSON parser should accept as the body, made from a real one.
fn broken_bytes(rng: &mut StdRng, body: &Value) -> Vec<u8> {
    let text = body.to_string();
    match rng.random_range(0..7) {
        0 => {
            let cut = rng.random_range(0..text.len().max(1));
            text.as_bytes()[..cut].to_vec()
        }
        // Lone surrogates, escaped: valid JSON syntax, not a valid string.
        1 => text.replacen(':', r#":"\ud800","x":"#, 1).into_bytes(),
        2 => text
            .replacen(':', r#":"\udfff\ud800","x":"#, 1)
            .into_bytes(),
        // Numbers past every type.
        3 => text.replacen(':', ":1e400,\"x\":", 1).into_bytes(),
        4 => text
            .replacen(':', ":18446744073709551616,\"x\":", 1)
            .into_bytes(),
        // Invalid UTF-8 inside a string.
        5 => {
            let mut bytes = b"{\"name\":\"".to_vec();
            bytes.extend([0xff, 0xfe, 0xc0, 0x80]);
            bytes.extend(b"\"}");
            bytes
        }
        // Nested past any sane depth.
        _ => format!("{}{}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes(),
    }
}

/// One request's headers: right, or wrong in one way.
fn headers(rng: &mut StdRng, svc: &TestService, user: i32) -> Vec<(String, String)> {
    let token = svc.client.token(UserId(user));
    let good = vec![
        ("authorization".to_owned(), format!("Bearer {token}")),
        ("x-user-id".to_owned(), user.to_string()),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    if rng.random_bool(0.8) {
        return good;
    }
    let mut h = good;
    match rng.random_range(0..9) {
        0 => h.retain(|(k, _)| k != "authorization"),
        1 => h[0].1 = "Bearer not.a.token".to_owned(),
        2 => h[0].1 = format!("Basic {token}"),
        3 => h[1].1 = (user + 1).to_string(),
        4 => h[1].1 = ["-1", "abc", "99999999999", "1.5", ""][rng.random_range(0..5)].to_owned(),
        5 => h.retain(|(k, _)| k != "x-user-id"),
        6 => h[2].1 = "application/proto".to_owned(),
        7 => h.push(("connect-protocol-version".to_owned(), "2".to_owned())),
        _ => h.push(("x-padding".to_owned(), "p".repeat(16 * 1024))),
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_requests_never_get_a_5xx_and_acknowledged_writes_read_back_from_both_stores() {
    common::init();
    let seed = std::env::var("FICUS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    let cases: usize = std::env::var("FICUS_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_500);
    println!("hostile input: seed {seed} (FICUS_FUZZ_SEED={seed} replays it), {cases} cases");
    let mut rng = StdRng::seed_from_u64(seed);

    let pg = ficus_testkit::skip_or_fail!(Postgres::shared());
    let cassandra = ficus_testkit::skip_or_fail!(Cassandra::shared());
    let legacy_url = pg.create_database("hostile").await.expect("database");
    let keyspace = cassandra
        .create_keyspace("hostile")
        .await
        .expect("keyspace");
    let cql_config = CqlConfig {
        contact_points: vec![cassandra.contact_point()],
        keyspace: keyspace.clone(),
        consistency: scylla::statement::Consistency::One,
        address_map: Default::default(),
    };
    let flags = common::flag_doc(1, Side::Legacy, DualWrite::Sync, 100, 50);
    let mut config = common::config_for(
        legacy_url.clone(),
        chat_service::crypto::EncryptionKey::random(),
    );
    config.store = StoreChoice::Router {
        new: NewStoreChoice::Scylla(cql_config.clone()),
        outbox_max_attempts: 10,
        outbox_inline_grace: Duration::from_secs(30),
        switch_settle: Duration::from_secs(60),
    };
    config.flags = FlagSource::Static(flags);
    let svc = common::start(config).await;

    // One auditor per side: they own the rooms, so no fuzzed caller can remove them, and
    // between them every acknowledged message is read from each store.
    let auditor = |side| {
        (100..)
            .find(|u| cohort(&flags, UserId(*u)) == side)
            .expect("a user on each side")
    };
    let (on_legacy, on_new) = (auditor(Side::Legacy), auditor(Side::New));
    let mut world = World {
        rooms: vec![],
        audited: 3,
        messages: vec![],
    };
    for _ in 0..world.audited {
        let members: Vec<i32> = std::iter::once(on_new).chain(FUZZ_USERS).collect();
        let room = svc.create_group(on_legacy, &members).await;
        for user in FUZZ_USERS {
            let sent = svc.send(user, &room, "seed").await;
            world
                .messages
                .push(sent["id"].as_str().expect("id").to_owned());
        }
        world.rooms.push(room);
    }
    let audited = world.rooms.clone();

    let http = svc.client.http();
    // message id → (room, content) of every send the service acknowledged.
    let mut acknowledged: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
    let mut previous = String::new();
    for case in 0..cases {
        let (method, fields) = SCHEMAS.choose(&mut rng).expect("methods");
        let user = *FUZZ_USERS.choose(&mut rng).expect("users");
        let value = body(&mut rng, fields, &world);
        let raw = rng
            .random_bool(0.15)
            .then(|| broken_bytes(&mut rng, &value));
        let mut request = if rng.random_bool(0.03) {
            http.get(svc.client.method_url(method))
        } else {
            http.post(svc.client.method_url(method))
        };
        for (name, v) in headers(&mut rng, &svc, user) {
            request = request.header(name, v);
        }
        let shown = match &raw {
            Some(bytes) => String::from_utf8_lossy(bytes).chars().take(300).collect(),
            None => value.to_string().chars().take(300).collect::<String>(),
        };
        let request = match raw {
            Some(bytes) => request.body(bytes),
            None => request.body(value.to_string()),
        };
        let response = request.send().await.unwrap_or_else(|e| {
            panic!("case {case} (seed {seed}): {method} {shown}: no answer: {e:?}; the case before: {previous}")
        });
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        previous = format!("{method} {} bytes → {status} {text}", shown.len());
        *by_status.entry(status).or_default() += 1;
        assert!(
            status < 500,
            "case {case} (seed {seed}): {method} {shown} → {status} {text}"
        );
        let reply: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("case {case} (seed {seed}): {method} {shown} → {status}, not JSON ({e}): {text}")
        });
        if status != 200 {
            assert!(
                reply["code"].is_string(),
                "case {case} (seed {seed}): {method} → {status} without a Connect error code: {text}"
            );
            continue;
        }
        match *method {
            "SendMessage" => {
                let id = reply["message"]["id"]
                    .as_str()
                    .expect("message id")
                    .to_owned();
                let room = value["roomId"]
                    .as_str()
                    .expect("an accepted room id")
                    .to_owned();
                let content = value["content"]
                    .as_str()
                    .expect("accepted content")
                    .to_owned();
                assert_eq!(
                    reply["message"]["content"].as_str(),
                    Some(content.as_str()),
                    "case {case} (seed {seed}): the reply carries what was sent"
                );
                world.messages.push(id.clone());
                acknowledged.insert(id, (room, content));
            }
            "CreateRoom" => {
                let room = reply["room"]["id"].as_str().expect("room id").to_owned();
                let read = svc.raw(user, "GetRoom", json!({ "id": room })).await;
                assert_eq!(
                    (read.0, &read.1["room"]["name"]),
                    (200, &reply["room"]["name"]),
                    "case {case} (seed {seed}): a created room reads back"
                );
                world.rooms.push(room);
            }
            _ => {}
        }
    }
    println!("hostile input: answers by status {by_status:?}");
    let accepted = by_status.get(&200).copied().unwrap_or(0);
    assert!(
        accepted * 10 >= cases as u64,
        "fewer than a tenth of the cases reached the stores ({accepted}): the generator only tests validation"
    );
    let (status, _) = svc.get("/readyz").await;
    assert_eq!(status, 200, "the service is still ready");

    // Every acknowledged message in the audited rooms reads back as sent, from each store.
    let audited_sends: BTreeMap<&String, &(String, String)> = acknowledged
        .iter()
        .filter(|(_, (room, _))| audited.contains(room))
        .collect();
    for auditor in [on_legacy, on_new] {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for room in &audited {
            let mut before = Value::Null;
            loop {
                let page = svc
                    .call(
                        auditor,
                        "GetMessageHistory",
                        json!({ "id": room, "limit": 100, "before": before }),
                    )
                    .await;
                for item in page["items"].as_array().expect("items") {
                    seen.insert(
                        item["id"].as_str().expect("id").to_owned(),
                        item["content"].as_str().expect("content").to_owned(),
                    );
                }
                before = page["pagination"]["nextCursor"].clone();
                if before.is_null() {
                    break;
                }
            }
        }
        for (id, (_, content)) in &audited_sends {
            assert_eq!(
                seen.get(*id),
                Some(content),
                "seed {seed}: acknowledged message {id} read by user {auditor}"
            );
        }
    }
    println!(
        "hostile input: {} acknowledged sends, {} in audited rooms read back from both stores",
        acknowledged.len(),
        audited_sends.len()
    );

    // And the stores agree, as the Migration's validate Job would find.
    let legacy = PgStore::connect(&legacy_url, 4).await.expect("legacy");
    let cql = CqlStore::connect(&cql_config).await.expect("cql");
    let backfill = cql.backfill(&keyspace).await.expect("cql session");
    let report = validate::run(
        &legacy,
        &backfill,
        &ValidateConfig {
            sample: 10_000,
            ..ValidateConfig::default()
        },
        &Metrics::default(),
    )
    .await
    .expect("validate");
    assert_eq!(
        report.mismatched, 0,
        "seed {seed}: the stores disagree: {:?}",
        report.examples
    );
    println!(
        "hostile input: validate compared {} (rooms {}, messages {}/{}), 0 mismatched",
        report.compared, report.rooms, report.legacy_messages, report.new_messages
    );
    svc.stop().await;
}
