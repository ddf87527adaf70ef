//! The PostgreSQL, NATS and Redis harness against the real Debian binaries: independent databases on
//! the shared server, stop/restart of a private one, NATS's greeting, and Redis without persistence.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use ficus_testkit::{Nats, Postgres, skip_or_fail};
use sqlx::{Connection, PgConnection};

/// Whether `table` exists in the connected database's `public` schema.
async fn has_table(conn: &mut PgConnection, table: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("public.{table}"))
        .fetch_one(conn)
        .await
}

#[tokio::test]
async fn shared_postgres_gives_independent_databases() -> anyhow::Result<()> {
    let begin = Instant::now();
    let pg = skip_or_fail!(Postgres::shared());
    eprintln!(
        "shared postgres ready after {:?} at {}",
        begin.elapsed(),
        pg.url()
    );
    // The same instance every time.
    assert!(std::ptr::eq(pg, Postgres::shared()?));

    let created = Instant::now();
    let (a, b) = tokio::try_join!(
        pg.create_database("data-harness a"),
        pg.create_database("data-harness b")
    )?;
    eprintln!("two databases created in {:?}: {a} {b}", created.elapsed());
    assert_ne!(a, b);
    assert!(
        a.starts_with(&format!(
            "postgres://postgres@127.0.0.1:{}/data_harness_a_",
            pg.port()
        )),
        "{a}"
    );

    let mut conn_a = PgConnection::connect(&a).await?;
    let mut conn_b = PgConnection::connect(&b).await?;
    sqlx::raw_sql("CREATE TABLE only_in_a (id bigint PRIMARY KEY, body text NOT NULL)")
        .execute(&mut conn_a)
        .await?;
    sqlx::query("INSERT INTO only_in_a VALUES (1, $1)")
        .bind("héllo ✓")
        .execute(&mut conn_a)
        .await?;
    assert!(has_table(&mut conn_a, "only_in_a").await?);
    assert!(!has_table(&mut conn_b, "only_in_a").await?);

    // The cluster's encoding and locale (see postgres.rs), as the application will see them.
    let (encoding, upper): (String, String) =
        sqlx::query_as("SELECT pg_encoding_to_char(encoding), upper('é') FROM pg_database WHERE datname = current_database()")
            .fetch_one(&mut conn_b)
            .await?;
    assert_eq!((encoding.as_str(), upper.as_str()), ("UTF8", "É"));
    let body: String = sqlx::query_scalar("SELECT body FROM only_in_a WHERE id = 1")
        .fetch_one(&mut conn_a)
        .await?;
    assert_eq!(body, "héllo ✓");
    conn_a.close().await?;
    conn_b.close().await?;
    Ok(())
}

#[tokio::test]
async fn postgres_stop_and_restart_keep_the_data() -> anyhow::Result<()> {
    // A private server: stopping the shared one would break the other tests of this binary.
    let begin = Instant::now();
    let pg = skip_or_fail!(Postgres::start());
    eprintln!("private postgres ready after {:?}", begin.elapsed());
    let url = pg.create_database("restart").await?;

    let mut conn = PgConnection::connect(&url).await?;
    sqlx::raw_sql("CREATE TABLE kept (n int)")
        .execute(&mut conn)
        .await?;
    // Commits acknowledged right before the kill must survive it (synchronous_commit=on).
    for n in 0..100 {
        sqlx::query("INSERT INTO kept VALUES ($1)")
            .bind(n)
            .execute(&mut conn)
            .await?;
    }

    pg.stop();
    let err = sqlx::query("SELECT 1").execute(&mut conn).await;
    assert!(err.is_err(), "an open connection still works after stop()");
    let err = PgConnection::connect(&url).await;
    assert!(err.is_err(), "a new connection succeeds after stop()");
    // Dropping a broken connection must not hang.
    drop(conn);

    let restarted = Instant::now();
    pg.restart()?;
    eprintln!("postgres restarted in {:?}", restarted.elapsed());
    let mut conn = PgConnection::connect(&url).await?;
    let (count, sum): (i64, i64) = sqlx::query_as("SELECT count(*), sum(n) FROM kept")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!((count, sum), (100, 4950));
    conn.close().await?;

    // restart() of a running server works as well, and so does a database created afterwards.
    pg.restart()?;
    let url2 = pg.create_database("after restart").await?;
    let mut conn = PgConnection::connect(&url2).await?;
    assert!(!has_table(&mut conn, "kept").await?);
    conn.close().await?;

    let dir = pg.dir().to_owned();
    drop(pg);
    assert!(!dir.exists(), "{} left behind", dir.display());
    Ok(())
}

#[test]
fn redis_answers_ping_and_forgets_everything_on_a_restart() -> anyhow::Result<()> {
    let begin = Instant::now();
    let redis = skip_or_fail!(ficus_testkit::Redis::start());
    eprintln!("redis ready after {:?} at {}", begin.elapsed(), redis.url());
    let addr = redis.addr();
    assert_eq!(redis.url(), format!("redis://{addr}"));
    let command = |line: &str| -> anyhow::Result<String> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("{line}\r\n").as_bytes())?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer)?;
        Ok(answer.trim_end().to_owned())
    };
    assert_eq!(command("SET kept 1")?, "+OK");
    assert_eq!(command("EXISTS kept")?, ":1");

    redis.stop();
    assert!(
        TcpStream::connect(addr).is_err(),
        "redis still listening after stop()"
    );
    redis.restart()?;
    assert_eq!(
        command("EXISTS kept")?,
        ":0",
        "no persistence: a restart starts empty"
    );

    let dir = redis.dir().to_owned();
    drop(redis);
    assert!(!dir.exists(), "{} left behind", dir.display());
    Ok(())
}

#[test]
fn nats_answers_info() -> anyhow::Result<()> {
    let begin = Instant::now();
    let nats = skip_or_fail!(Nats::start());
    eprintln!("nats ready after {:?} at {}", begin.elapsed(), nats.url());
    // The URL a client is given is where the server answers (checked by the INFO port below).
    let url = nats.url();
    let addr: std::net::SocketAddr = url
        .strip_prefix("nats://")
        .unwrap_or_else(|| panic!("not a nats:// URL: {url}"))
        .parse()?;

    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut info = String::new();
    reader.read_line(&mut info)?;
    let json = info
        .strip_prefix("INFO ")
        .unwrap_or_else(|| panic!("no INFO greeting: {info:?}"));
    let info: serde_json::Value = serde_json::from_str(json.trim_end())?;
    assert_eq!(info["port"], addr.port(), "{info}");
    assert!(info["server_id"].is_string(), "{info}");

    // A protocol round trip: PING is answered with PONG.
    let mut writer = stream;
    writer.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")?;
    let mut pong = String::new();
    reader.read_line(&mut pong)?;
    assert_eq!(pong, "PONG\r\n");

    nats.stop();
    assert!(
        TcpStream::connect(addr).is_err(),
        "nats still listening after stop()"
    );
    nats.restart()?;
    assert!(
        TcpStream::connect(addr).is_ok(),
        "nats not listening after restart()"
    );

    drop(nats);
    assert!(
        TcpStream::connect(addr).is_err(),
        "nats still listening after drop"
    );
    Ok(())
}
