//! devices-service: device events (ingest, latest state, time ranges, hourly aggregates) on
//! the legacy PostgreSQL table and a time-partitioned new store, migrated the HSE way: it
//! follows the Ficus operator's flag document from AWS SSM Parameter Store, copies every write
//! to the other store in shadow mode (outbox, dead letters), compares the stores hour by hour
//! and exports the drift and per-system error rate and latency the Migration gates on.
//! See docs/devices-service.md.

pub mod api;
pub mod compare;
pub mod duration;
pub mod flags;
pub mod loadgen;
pub mod metrics;
pub mod model;
pub mod outbox;
pub mod routing;
pub mod serve;
pub mod store;
pub mod writer;
