//! The service against a real PostgreSQL (ficus-testkit's; skipped locally when PostgreSQL is
//! not installed, a failure under CI=true): both schemas, the shadow copy, the outbox and its
//! dead letters, the comparison and the `validate` command's exit code.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use devices_service::api::{Accepted, Batch, USER_HEADER};
use devices_service::compare::{self, CompareConfig};
use devices_service::flags::{FlagSource, FlagWatcher};
use devices_service::metrics::{CopyOutcome, Metrics};
use devices_service::model::{DeviceEvent, EventIn, accept_batch};
use devices_service::outbox::{self, ReplayConfig, Replayer};
use devices_service::serve::{self, ServeConfig};
use devices_service::store::{self, NewLayout, Stores};
use devices_service::writer::{WriteConfig, Writer};
use ficus_flags::{DualWrite, FlagValues, Flags, Percent, Side};
use ficus_testkit::Postgres;
use prometheus_client::metrics::gauge::Gauge;
use uuid::Uuid;

fn shadow_flags() -> Flags {
    Flags {
        generation: 2,
        values: FlagValues {
            write_primary: Side::Legacy,
            dual_write: DualWrite::Sync,
            shadow_read_percent: Percent::ZERO,
            read_split_percent: Percent::ZERO,
            ..Default::default()
        },
    }
}

/// Two fresh databases on the shared server, or `None` to skip.
async fn databases(prefix: &str) -> Option<(String, String)> {
    ficus_testkit::init();
    let pg = match Postgres::shared() {
        Ok(pg) => pg,
        Err(e) => {
            ficus_testkit::skip_or_panic(&e);
            return None;
        }
    };
    let legacy = pg
        .create_database(&format!("{prefix}_legacy"))
        .await
        .expect("legacy database");
    let new = pg
        .create_database(&format!("{prefix}_new"))
        .await
        .expect("new database");
    Some((legacy, new))
}

fn events(owner: &str, n: usize, value: f64) -> Vec<EventIn> {
    (0..n)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "id": Uuid::now_v7(), "device_id": format!("dev-{owner}-{}", i % 3), "user_id": owner,
                "event_type": "temperature", "value": value + i as f64,
                "timestamp": Utc::now() - chrono::Duration::seconds(i as i64),
            }))
            .expect("event")
        })
        .collect()
}

async fn count(stores: &Stores, side: Side, ids: &[Uuid]) -> usize {
    store::present(stores.pool(side), side, ids)
        .await
        .expect("present")
        .len()
}

#[tokio::test]
async fn shadow_mode_writes_both_stores_and_the_comparison_finds_no_drift() {
    let Some((legacy, new)) = databases("shadow").await else {
        return;
    };
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        legacy_database_url: legacy,
        new_database_url: new,
        max_connections: 8,
        flags: FlagSource::Static(shadow_flags()),
        write: WriteConfig::default(),
        replay: ReplayConfig::default(),
        compare: CompareConfig {
            settle: Duration::ZERO,
            ..CompareConfig::default()
        },
        compare_interval: Duration::from_secs(3600),
    };
    let server = serve::bind(config).await.expect("bind");
    assert_eq!(
        server.layout,
        NewLayout::Partitioned,
        "no timescaledb on this server"
    );
    let (addr, stores, metrics) = (
        server.local_addr(),
        server.stores.clone(),
        server.metrics.clone(),
    );
    tokio::spawn(server.run(std::future::pending()));
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");

    let batch = events("user-1", 30, 20.0);
    let r = http
        .post(format!("{base}/v1/events/batch"))
        .json(&Batch {
            events: batch.clone(),
        })
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    let ids = r.json::<Accepted>().await.expect("ids").ids;
    assert_eq!(ids.len(), 30);
    assert_eq!(count(&stores, Side::Legacy, &ids).await, 30);
    assert_eq!(
        count(&stores, Side::New, &ids).await,
        30,
        "the copy is made inline in sync mode"
    );
    assert_eq!(metrics.copies(Side::New, CopyOutcome::Success), 1);

    // The same batch again (a client retry): idempotent.
    let r = http
        .post(format!("{base}/v1/events/batch"))
        .json(&Batch { events: batch })
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);

    // Reads: the caller's header picks the store; without it the request is refused.
    let latest = http
        .get(format!("{base}/v1/devices/dev-user-1-0/latest"))
        .header(USER_HEADER, "user-1")
        .send()
        .await
        .expect("get");
    assert_eq!(latest.status(), 200);
    let e: DeviceEvent = latest.json().await.expect("event");
    assert_eq!(e.device_id, "dev-user-1-0");
    assert_eq!(
        http.get(format!("{base}/v1/devices/dev-user-1-0/latest"))
            .send()
            .await
            .expect("get")
            .status(),
        400
    );
    let from = (Utc::now() - chrono::Duration::hours(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to = (Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let hourly: Vec<devices_service::model::HourlyAggregate> = http
        .get(format!(
            "{base}/v1/devices/dev-user-1-1/hourly?from={from}&to={to}"
        ))
        .header(USER_HEADER, "user-1")
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("hourly");
    assert_eq!(hourly.iter().map(|h| h.count).sum::<i64>(), 10);
    let range: Vec<DeviceEvent> = http
        .get(format!(
            "{base}/v1/devices/dev-user-1-2/events?from={from}&to={to}&limit=5"
        ))
        .header(USER_HEADER, "user-1")
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("events");
    assert_eq!(range.len(), 5);
    assert!(range.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
    let bad = http
        .post(format!("{base}/v1/events/batch"))
        .json(&serde_json::json!({"events": []}))
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status(), 400);

    let c = compare::run(
        &stores,
        Duration::from_secs(3600),
        Utc::now() - chrono::Duration::hours(1),
        Utc::now(),
    )
    .await
    .expect("compare");
    assert_eq!(
        (c.count_drift, c.value_drift, c.mismatching()),
        (0.0, 0.0, 0)
    );
    let text = metrics.encode();
    assert!(text.contains(r#"http_requests_total{service="devices",system="old",route="ingest_batch",code="201"} 2"#), "{text}");
}

/// Makes the new store silently drop the events of `user-drop` (a trigger that returns NULL):
/// inserts succeed, rows vanish.
async fn drop_events_in_new(new_url: &str) {
    let pool = sqlx::PgPool::connect(new_url).await.expect("connect");
    sqlx::raw_sql(
        "create function drop_some() returns trigger language plpgsql as $$
           begin if new.user_id = 'user-drop' then return null; end if; return new; end $$;
         create trigger drop_some before insert on device_readings for each row execute function drop_some();",
    )
    .execute(&pool)
    .await
    .expect("trigger");
}

#[tokio::test]
async fn events_the_new_store_drops_are_drift_and_validate_exits_2() {
    let Some((legacy, new)) = databases("drift").await else {
        return;
    };
    let stores = Stores::connect(&legacy, &new, 4).await.expect("connect");
    stores.migrate().await.expect("migrate");
    let metrics = Arc::new(Metrics::default());
    let flags = FlagWatcher::start(FlagSource::Static(shadow_flags()), None, Gauge::default())
        .await
        .expect("flags");
    let writer = Writer {
        stores: stores.clone(),
        flags,
        metrics,
        config: WriteConfig::default(),
    };
    store::mark_shadow_epoch(&stores.legacy, Utc::now() - chrono::Duration::seconds(60))
        .await
        .expect("epoch");

    let validate = |max: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_devices-service"))
            .args([
                "validate",
                "--legacy-database-url",
                &legacy,
                "--new-database-url",
                &new,
                "--settle",
                "0s",
                "--max-drift",
                max,
            ])
            .output()
            .expect("run validate")
    };
    writer
        .write(&accept_batch(events("user-ok", 99, 10.0), Utc::now()).expect("batch"))
        .await
        .expect("write");
    let out = validate("0.01");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    drop_events_in_new(&new).await;
    let dropped = accept_batch(events("user-drop", 2, 10.0), Utc::now()).expect("batch");
    writer
        .write(&dropped)
        .await
        .expect("the write succeeds: the loss is silent");
    let out = validate("0.01");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert_eq!(
        out.status.code(),
        Some(2),
        "2 of 101 events missing is above 1 %: {stdout}"
    );
    assert!(
        stdout.contains("NO") && stdout.contains("count drift 1.98"),
        "{stdout}"
    );
    assert_eq!(
        validate("0.05").status.code(),
        Some(0),
        "below a looser threshold"
    );
}

#[tokio::test]
async fn copies_the_new_store_refuses_wait_in_the_outbox_then_dead_letter_and_redrive() {
    let Some((legacy, new)) = databases("outbox").await else {
        return;
    };
    let stores = Stores::connect(&legacy, &new, 4).await.expect("connect");
    stores.migrate().await.expect("migrate");
    let metrics = Arc::new(Metrics::default());
    let flags = FlagWatcher::start(FlagSource::Static(shadow_flags()), None, Gauge::default())
        .await
        .expect("flags");
    let writer = Writer {
        stores: stores.clone(),
        flags,
        metrics: metrics.clone(),
        config: WriteConfig::default(),
    };
    let replayer = Replayer {
        stores: stores.clone(),
        metrics: metrics.clone(),
        config: ReplayConfig {
            max_attempts: 2,
            backoff_base: Duration::from_millis(1),
            backoff_cap: Duration::from_millis(2),
            ..ReplayConfig::default()
        },
    };

    // The new store's table is gone (a broken deploy): copies fail, the primary write does not.
    sqlx::query("alter table device_readings rename to device_readings_away")
        .execute(&stores.new)
        .await
        .expect("rename");
    let batch = accept_batch(events("user-3", 5, 1.0), Utc::now()).expect("batch");
    let ids: Vec<Uuid> = batch.iter().map(|e| e.id).collect();
    writer.write(&batch).await.expect("legacy accepts");
    assert_eq!(count(&stores, Side::Legacy, &ids).await, 5);
    assert_eq!(metrics.copies(Side::New, CopyOutcome::Error), 1);
    assert_eq!(
        outbox::depth(&stores).await.expect("depth").pending,
        1,
        "queued in the primary's transaction"
    );

    // Replayed until the attempts run out, then dead-lettered.
    let mut rounds = 0;
    while outbox::depth(&stores).await.expect("depth").dead_letters == 0 {
        replayer.round().await.expect("round");
        rounds += 1;
        assert!(rounds < 200, "never dead-lettered");
        tokio::task::yield_now().await;
    }
    assert_eq!(metrics.copies(Side::New, CopyOutcome::DeadLetter), 1);
    assert!(metrics.encode().contains("devices_outbox_dead_letters 1"));

    // Fixed and redriven: the copy lands.
    sqlx::query("alter table device_readings_away rename to device_readings")
        .execute(&stores.new)
        .await
        .expect("rename back");
    assert_eq!(outbox::redrive(&stores).await.expect("redrive"), 1);
    replayer.round().await.expect("round");
    assert_eq!(count(&stores, Side::New, &ids).await, 5);
    let d = outbox::depth(&stores).await.expect("depth");
    assert_eq!((d.pending, d.dead_letters), (0, 0));
    assert_eq!(metrics.copies(Side::New, CopyOutcome::Replayed), 1);

    // Async mode: the write returns after the primary commit; the copy follows.
    let flags = FlagWatcher::start(
        FlagSource::Static(Flags {
            values: FlagValues {
                dual_write: DualWrite::Async,
                ..shadow_flags().values
            },
            ..shadow_flags()
        }),
        None,
        Gauge::default(),
    )
    .await
    .expect("flags");
    let writer = Writer { flags, ..writer };
    let batch = accept_batch(events("user-4", 5, 1.0), Utc::now()).expect("batch");
    let ids: Vec<Uuid> = batch.iter().map(|e| e.id).collect();
    writer.write(&batch).await.expect("write");
    let start = std::time::Instant::now();
    while count(&stores, Side::New, &ids).await < 5
        || outbox::depth(&stores).await.expect("depth").pending > 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the background copy never settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
