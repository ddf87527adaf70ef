//! The Cassandra (CQL) harness against the real Cassandra 5.0 jars: independent keyspaces on the
//! shared node, prepared statements through the `scylla` driver, and a SIGKILL mid-burst after
//! which every acknowledged write is back.
//!
//! One test: the node is shared by the whole binary, and stopping it would break any other.

use std::time::{Duration, Instant};

use ficus_testkit::{Cassandra, skip_or_fail};
use futures::{StreamExt, TryStreamExt, stream};
use scylla::client::session::Session;

/// Writes acknowledged just before the node is killed; all must survive the restart.
const BURST: i64 = 500;
/// Writes in flight at once during the burst.
const CONCURRENCY: usize = 32;

async fn count_rows(session: &Session, keyspace: &str, room: &str) -> anyhow::Result<i64> {
    let (count,): (i64,) = session
        .query_unpaged(
            format!("SELECT count(*) FROM {keyspace}.messages WHERE room = ?"),
            (room,),
        )
        .await?
        .into_rows_result()?
        .single_row()?;
    Ok(count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_keyspaces_prepared_statements_and_crash_recovery() -> anyhow::Result<()> {
    let begin = Instant::now();
    let cassandra = skip_or_fail!(Cassandra::shared());
    eprintln!(
        "shared cassandra ready after {:?} at {}",
        begin.elapsed(),
        cassandra.contact_point()
    );
    // The same instance every time.
    assert!(std::ptr::eq(cassandra, Cassandra::shared()?));
    assert!(cassandra.contact_point().starts_with("127.0.0.1:"));

    let created = Instant::now();
    let (a, b) = tokio::try_join!(
        cassandra.create_keyspace("cql-harness a"),
        cassandra.create_keyspace("cql-harness a")
    )?;
    eprintln!("two keyspaces created in {:?}: {a} {b}", created.elapsed());
    assert_ne!(a, b);
    assert!(a.starts_with("cql_harness_a_"), "{a}");

    let session = cassandra.session().await?;
    session
        .query_unpaged(
            format!(
                "CREATE TABLE {a}.messages (room text, seq bigint, body text, \
                 PRIMARY KEY (room, seq))"
            ),
            &[],
        )
        .await?;
    // Keyspaces are independent: the table exists in `a` only.
    let missing = session
        .query_unpaged(format!("SELECT * FROM {b}.messages"), &[])
        .await;
    assert!(missing.is_err(), "{b}.messages should not exist");

    let insert = session
        .prepare(format!(
            "INSERT INTO {a}.messages (room, seq, body) VALUES (?, ?, ?)"
        ))
        .await?;
    let select = session
        .prepare(format!(
            "SELECT body FROM {a}.messages WHERE room = ? AND seq = ?"
        ))
        .await?;
    session
        .execute_unpaged(&insert, ("lobby", 0i64, "héllo ✓"))
        .await?;
    let (body,): (String,) = session
        .execute_unpaged(&select, ("lobby", 0i64))
        .await?
        .into_rows_result()?
        .single_row()?;
    assert_eq!(body, "héllo ✓");

    // A burst of acknowledged writes, then SIGKILL at once.
    let burst = Instant::now();
    stream::iter(1..=BURST)
        .map(|seq| {
            let (session, insert) = (&session, &insert);
            async move {
                session
                    .execute_unpaged(insert, ("burst", seq, format!("message {seq}")))
                    .await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let burst = burst.elapsed();
    cassandra.stop();
    eprintln!("{BURST} acknowledged writes in {burst:?}, then SIGKILL");

    // Stopped: the open session's queries fail, and nobody can connect.
    let failed = tokio::time::timeout(
        Duration::from_secs(30),
        session.execute_unpaged(&select, ("lobby", 0i64)),
    )
    .await;
    assert!(
        !matches!(failed, Ok(Ok(_))),
        "a query succeeded on a stopped node"
    );
    let refused = cassandra.session().await;
    assert!(refused.is_err(), "connected to a stopped node");

    let restarted = Instant::now();
    tokio::task::spawn_blocking(|| cassandra.restart()).await??;
    eprintln!("cassandra restarted in {:?}", restarted.elapsed());

    // Every acknowledged write is back (commit log replay), seen from a new session...
    let fresh = cassandra.session().await?;
    assert_eq!(count_rows(&fresh, &a, "burst").await?, BURST);
    let (body,): (String,) = fresh
        .query_unpaged(
            format!("SELECT body FROM {a}.messages WHERE room = 'lobby' AND seq = 0"),
            &[],
        )
        .await?
        .into_rows_result()?
        .single_row()?;
    assert_eq!(body, "héllo ✓");

    // ...and from the old one, once its driver has reconnected (with its prepared statements).
    let reconnect = Instant::now();
    let body = loop {
        match session.execute_unpaged(&select, ("burst", BURST)).await {
            Ok(result) => break result.into_rows_result()?.single_row::<(String,)>()?.0,
            Err(e) if reconnect.elapsed() < Duration::from_secs(60) => {
                tracing::debug!("old session not back yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    eprintln!("old session reconnected after {:?}", reconnect.elapsed());
    assert_eq!(body, format!("message {BURST}"));
    Ok(())
}
