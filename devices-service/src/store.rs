//! The two stores, both PostgreSQL through sqlx, in separate databases:
//!
//! * **legacy**: `device_events`, the old system's table (one row per event, `created_at` the
//!   time the service received it).
//! * **new**: `device_readings`, the time-series store: a table partitioned by range of the
//!   event time (`ts`), one partition per UTC day created ahead ([`ensure_partitions`]) and a
//!   default partition for stragglers; or a TimescaleDB hypertable when the `timescaledb`
//!   extension is available on the server ([`NewLayout`]).
//!
//! Both databases hold the outbox (`device_outbox`, `device_outbox_dead_letter`): copies are
//! queued in the database of the store that is primary when they are written. Every insert is
//! idempotent on the event id (new store: `(ts, id)`, the partition key must be in the key), so
//! a replayed or retried copy is harmless.

use chrono::{DateTime, Days, NaiveTime, Utc};
use ficus_flags::Side;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use crate::model::{DeviceEvent, HourlyAggregate};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{store} store unreachable (check its database URL and that PostgreSQL is up): {source}"
    )]
    Unavailable {
        store: Side,
        #[source]
        source: sqlx::Error,
    },
    #[error("{store} store query failed: {source}")]
    Query {
        store: Side,
        #[source]
        source: sqlx::Error,
    },
    #[error("{store} store did not answer within {timeout:?}")]
    Timeout {
        store: Side,
        timeout: std::time::Duration,
    },
}

impl StoreError {
    pub fn from_sqlx(store: Side) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| match source {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                StoreError::Unavailable { store, source }
            }
            source => StoreError::Query { store, source },
        }
    }

    /// Whether a retry may succeed (the database is down or slow), as opposed to a bad query.
    pub fn transient(&self) -> bool {
        !matches!(self, StoreError::Query { .. })
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// How the new store keeps its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewLayout {
    /// PostgreSQL declarative partitioning by day of `ts`.
    Partitioned,
    /// A TimescaleDB hypertable on `ts` (the extension was available).
    Hypertable,
}

/// Both databases.
#[derive(Clone, Debug)]
pub struct Stores {
    pub legacy: PgPool,
    pub new: PgPool,
}

impl Stores {
    pub async fn connect(
        legacy_url: &str,
        new_url: &str,
        max_connections: u32,
    ) -> StoreResult<Stores> {
        let pool = |url: &str, side: Side| {
            let url = url.to_owned();
            async move {
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(std::time::Duration::from_secs(5))
                    .connect(&url)
                    .await
                    .map_err(StoreError::from_sqlx(side))
            }
        };
        Ok(Stores {
            legacy: pool(legacy_url, Side::Legacy).await?,
            new: pool(new_url, Side::New).await?,
        })
    }

    pub fn pool(&self, side: Side) -> &PgPool {
        match side {
            Side::Legacy => &self.legacy,
            Side::New => &self.new,
        }
    }

    /// Creates what is missing in both databases (idempotent; serialized by an advisory lock
    /// so several instances can start at once).
    pub async fn migrate(&self) -> StoreResult<NewLayout> {
        run_ddl(&self.legacy, Side::Legacy, LEGACY_SCHEMA).await?;
        run_ddl(&self.legacy, Side::Legacy, OUTBOX_SCHEMA).await?;
        let timescale: bool = sqlx::query_scalar(
            "select exists (select 1 from pg_available_extensions where name = 'timescaledb')",
        )
        .fetch_one(&self.new)
        .await
        .map_err(StoreError::from_sqlx(Side::New))?;
        let layout = if timescale {
            run_ddl(&self.new, Side::New, HYPERTABLE_SCHEMA).await?;
            NewLayout::Hypertable
        } else {
            run_ddl(&self.new, Side::New, PARTITIONED_SCHEMA).await?;
            ensure_partitions(&self.new, Utc::now(), 7).await?;
            NewLayout::Partitioned
        };
        run_ddl(&self.new, Side::New, OUTBOX_SCHEMA).await?;
        Ok(layout)
    }
}

async fn run_ddl(pool: &PgPool, side: Side, ddl: &'static str) -> StoreResult<()> {
    let mut tx = pool.begin().await.map_err(StoreError::from_sqlx(side))?;
    sqlx::query("select pg_advisory_xact_lock(7411)")
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx(side))?;
    sqlx::raw_sql(ddl)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx(side))?;
    tx.commit().await.map_err(StoreError::from_sqlx(side))
}

const LEGACY_SCHEMA: &str = "
create table if not exists device_events (
    id uuid primary key,
    device_id text not null,
    user_id text not null,
    event_type text not null,
    value double precision not null,
    \"timestamp\" timestamptz not null,
    created_at timestamptz not null default now()
);
create index if not exists device_events_device_time on device_events (device_id, \"timestamp\" desc);
create index if not exists device_events_created on device_events (created_at);
create table if not exists shadow_epoch (
    only_row boolean primary key default true check (only_row),
    started_at timestamptz not null
);";

const PARTITIONED_SCHEMA: &str = "
create table if not exists device_readings (
    id uuid not null,
    device_id text not null,
    user_id text not null,
    event_type text not null,
    value double precision not null,
    ts timestamptz not null,
    received_at timestamptz not null,
    primary key (ts, id)
) partition by range (ts);
create table if not exists device_readings_default partition of device_readings default;
create index if not exists device_readings_device_time on device_readings (device_id, ts desc);
create index if not exists device_readings_received on device_readings (received_at);";

const HYPERTABLE_SCHEMA: &str = "
create extension if not exists timescaledb;
create table if not exists device_readings (
    id uuid not null,
    device_id text not null,
    user_id text not null,
    event_type text not null,
    value double precision not null,
    ts timestamptz not null,
    received_at timestamptz not null,
    primary key (ts, id)
);
select create_hypertable('device_readings', 'ts', if_not_exists => true);
create index if not exists device_readings_device_time on device_readings (device_id, ts desc);
create index if not exists device_readings_received on device_readings (received_at);";

const OUTBOX_SCHEMA: &str = "
create table if not exists device_outbox (
    id bigserial primary key,
    target text not null check (target in ('legacy', 'new')),
    payload jsonb not null,
    events integer not null,
    attempts integer not null default 0,
    next_attempt_at timestamptz not null,
    created_at timestamptz not null default now(),
    last_error text
);
create index if not exists device_outbox_due on device_outbox (next_attempt_at);
create table if not exists device_outbox_dead_letter (
    id bigint primary key,
    target text not null,
    payload jsonb not null,
    events integer not null,
    attempts integer not null,
    created_at timestamptz not null,
    dead_at timestamptz not null default now(),
    last_error text
);";

/// Creates the daily partitions of the new store from the day before `now` to `days` ahead.
/// A day whose rows already sit in the default partition cannot get its own partition
/// (PostgreSQL refuses): that is logged and those rows stay in the default partition.
pub async fn ensure_partitions(pool: &PgPool, now: DateTime<Utc>, days: u64) -> StoreResult<()> {
    let today = now.date_naive();
    let first = today.checked_sub_days(Days::new(1)).unwrap_or(today);
    for d in 0..=days + 1 {
        let Some(day) = first.checked_add_days(Days::new(d)) else {
            break;
        };
        let Some(next) = day.checked_add_days(Days::new(1)) else {
            break;
        };
        let from = day.and_time(NaiveTime::MIN).and_utc();
        let to = next.and_time(NaiveTime::MIN).and_utc();
        // Names and bounds come from dates formatted here, never from input.
        let sql = format!(
            "create table if not exists device_readings_{} partition of device_readings for values from ('{}') to ('{}')",
            day.format("%Y%m%d"),
            from.to_rfc3339(),
            to.to_rfc3339()
        );
        if let Err(e) = sqlx::query(AssertSqlSafe(sql)).execute(pool).await {
            match &e {
                sqlx::Error::Database(db) if db.code().as_deref() == Some("23514") => {
                    tracing::warn!(%day, "rows for this day are in the default partition; the day keeps no partition of its own: {e}");
                }
                _ => return Err(StoreError::from_sqlx(Side::New)(e)),
            }
        }
    }
    Ok(())
}

/// Inserts `events` into `side`'s table on `conn` (a transaction or a connection); events
/// already there are left alone. Returns the rows inserted.
pub async fn insert(
    conn: &mut PgConnection,
    side: Side,
    events: &[DeviceEvent],
) -> StoreResult<u64> {
    let sql = match side {
        Side::Legacy => {
            "insert into device_events (id, device_id, user_id, event_type, value, \"timestamp\", created_at)
             select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::timestamptz[], $7::timestamptz[])
             on conflict (id) do nothing"
        }
        Side::New => {
            "insert into device_readings (id, device_id, user_id, event_type, value, ts, received_at)
             select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::timestamptz[], $7::timestamptz[])
             on conflict (ts, id) do nothing"
        }
    };
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let devices: Vec<&str> = events.iter().map(|e| e.device_id.as_str()).collect();
    let users: Vec<&str> = events.iter().map(|e| e.user_id.as_str()).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let values: Vec<f64> = events.iter().map(|e| e.value).collect();
    let times: Vec<DateTime<Utc>> = events.iter().map(|e| e.timestamp).collect();
    let received: Vec<DateTime<Utc>> = events.iter().map(|e| e.received_at).collect();
    let done = sqlx::query(sql)
        .bind(ids)
        .bind(devices)
        .bind(users)
        .bind(types)
        .bind(values)
        .bind(times)
        .bind(received)
        .execute(conn)
        .await
        .map_err(StoreError::from_sqlx(side))?;
    Ok(done.rows_affected())
}

/// Removes events by id (undoing a copy whose primary write failed).
pub async fn delete(pool: &PgPool, side: Side, ids: &[Uuid]) -> StoreResult<u64> {
    let sql = match side {
        Side::Legacy => "delete from device_events where id = any($1)",
        Side::New => "delete from device_readings where id = any($1)",
    };
    let done = sqlx::query(sql)
        .bind(ids)
        .execute(pool)
        .await
        .map_err(StoreError::from_sqlx(side))?;
    Ok(done.rows_affected())
}

/// The device's latest event (by event time).
pub async fn latest(pool: &PgPool, side: Side, device: &str) -> StoreResult<Option<DeviceEvent>> {
    let sql = match side {
        Side::Legacy => "select id, device_id, user_id, event_type, value, \"timestamp\", created_at as received_at
              from device_events where device_id = $1 order by \"timestamp\" desc limit 1",
        Side::New => "select id, device_id, user_id, event_type, value, ts as \"timestamp\", received_at
              from device_readings where device_id = $1 order by ts desc limit 1",
    };
    sqlx::query_as::<_, DeviceEvent>(sql)
        .bind(device)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from_sqlx(side))
}

/// The device's events with `from <= time < to`, oldest first, at most `limit`.
pub async fn range(
    pool: &PgPool,
    side: Side,
    device: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
) -> StoreResult<Vec<DeviceEvent>> {
    let sql = match side {
        Side::Legacy => "select id, device_id, user_id, event_type, value, \"timestamp\", created_at as received_at
              from device_events where device_id = $1 and \"timestamp\" >= $2 and \"timestamp\" < $3
              order by \"timestamp\", id limit $4",
        Side::New => "select id, device_id, user_id, event_type, value, ts as \"timestamp\", received_at
              from device_readings where device_id = $1 and ts >= $2 and ts < $3 order by ts, id limit $4",
    };
    sqlx::query_as::<_, DeviceEvent>(sql)
        .bind(device)
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from_sqlx(side))
}

/// The device's events per hour with `from <= time < to`.
pub async fn hourly(
    pool: &PgPool,
    side: Side,
    device: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> StoreResult<Vec<HourlyAggregate>> {
    let sql = match side {
        Side::Legacy => "select date_trunc('hour', \"timestamp\") as hour, count(*) as count, sum(value) as sum, min(value) as min, max(value) as max, avg(value) as avg
              from device_events where device_id = $1 and \"timestamp\" >= $2 and \"timestamp\" < $3 group by 1 order by 1",
        Side::New => "select date_trunc('hour', ts) as hour, count(*) as count, sum(value) as sum, min(value) as min, max(value) as max, avg(value) as avg
              from device_readings where device_id = $1 and ts >= $2 and ts < $3 group by 1 order by 1",
    };
    sqlx::query_as::<_, HourlyAggregate>(sql)
        .bind(device)
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from_sqlx(side))
}

/// Count and sum of values per bucket of event time (`width_secs` wide, aligned on the Unix
/// epoch), over the events received in `[received_from, received_to)`: the comparison's input.
pub async fn buckets(
    pool: &PgPool,
    side: Side,
    width_secs: f64,
    received_from: DateTime<Utc>,
    received_to: DateTime<Utc>,
) -> StoreResult<Vec<crate::compare::Bucket>> {
    let sql = match side {
        Side::Legacy => "select date_bin(make_interval(secs => $1), \"timestamp\", 'epoch'::timestamptz) as start, count(*) as count, coalesce(sum(value), 0) as sum
              from device_events where created_at >= $2 and created_at < $3 group by 1 order by 1",
        Side::New => "select date_bin(make_interval(secs => $1), ts, 'epoch'::timestamptz) as start, count(*) as count, coalesce(sum(value), 0) as sum
              from device_readings where received_at >= $2 and received_at < $3 group by 1 order by 1",
    };
    let rows = sqlx::query(sql)
        .bind(width_secs)
        .bind(received_from)
        .bind(received_to)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from_sqlx(side))?;
    rows.iter()
        .map(|r| {
            Ok(crate::compare::Bucket {
                start: r.try_get("start")?,
                count: r.try_get("count")?,
                sum: r.try_get("sum")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from_sqlx(side))
}

/// Records when dual writes were first seen on (the comparison starts there: the new store
/// holds nothing older unless a backfill copied it). The earliest record wins.
pub async fn mark_shadow_epoch(pool: &PgPool, at: DateTime<Utc>) -> StoreResult<DateTime<Utc>> {
    sqlx::query_scalar(
        "insert into shadow_epoch (started_at) values ($1)
         on conflict (only_row) do update set started_at = least(shadow_epoch.started_at, excluded.started_at)
         returning started_at",
    )
    .bind(at)
    .fetch_one(pool)
    .await
    .map_err(StoreError::from_sqlx(Side::Legacy))
}

pub async fn shadow_epoch(pool: &PgPool) -> StoreResult<Option<DateTime<Utc>>> {
    sqlx::query_scalar("select started_at from shadow_epoch")
        .fetch_optional(pool)
        .await
        .map_err(StoreError::from_sqlx(Side::Legacy))
}

/// Which of `ids` `side` holds.
pub async fn present(pool: &PgPool, side: Side, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
    let sql = match side {
        Side::Legacy => "select id from device_events where id = any($1)",
        Side::New => "select id from device_readings where id = any($1)",
    };
    sqlx::query_scalar(sql)
        .bind(ids)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from_sqlx(side))
}
