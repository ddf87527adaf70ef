//! chat-service: the chat system Ficus migrates (rooms, messages, history, read markers,
//! reactions, event streams) behind a Connect-style HTTP/JSON API. The handlers talk to one
//! store trait ([`store::ChatStore`]), implemented three times: the legacy PostgreSQL store
//! ([`store::postgres::PgStore`]), the ScyllaDB (CQL) store ([`store::scylla::CqlStore`]), and
//! the migration router ([`store::router::MigrationRouter`]) that serves from both by the flag
//! document the operator writes ([`flags`], decided by the pure [`routing`], failed secondary
//! writes replayed from [`store::outbox`]). `docs/data-path.md` is the summary.
//!
//! Entry points: [`serve::bind`]/[`serve::run`] (the server), [`backfill::run`] and
//! [`validate::run`] (copy and compare the stores), [`loadtest::run`] (the load client),
//! [`client::ChatClient`] (an API client for tools and tests).
pub mod api;
pub mod auth;
pub mod backfill;
pub mod client;
pub mod config;
pub mod crypto;
pub mod events;
pub mod flags;
pub mod flow;
pub mod ids;
pub mod loadtest;
pub mod metrics;
pub mod metrics_endpoint;
pub mod reencrypt;
pub mod rollback;
pub mod routing;
pub mod serve;
pub mod store;
pub mod validate;
