//! chat-service: the chat system Ficus migrates (rooms, messages, history, read markers,
//! reactions, event streams) behind a Connect-style HTTP/JSON API. This build runs on
//! PostgreSQL; the store is a trait ([`store::ChatStore`]) so a ScyllaDB store and the migration
//! router slot in without touching the handlers.
//!
//! Entry points: [`serve::bind`]/[`serve::run`] (the server), [`store::postgres::PgStore`]
//! (schema migrations, the store), [`loadtest::run`] (the load client),
//! [`client::ChatClient`] (an API client for tools and tests).
pub mod api;
pub mod auth;
pub mod backfill;
pub mod client;
pub mod config;
pub mod crypto;
pub mod events;
pub mod flags;
pub mod ids;
pub mod loadtest;
pub mod metrics;
pub mod routing;
pub mod serve;
pub mod store;
pub mod validate;
