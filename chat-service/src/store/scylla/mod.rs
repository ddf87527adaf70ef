//! The ScyllaDB store (scylla driver; any CQL database, e.g. Apache Cassandra, works too).
//!
//! Query-first tables (schema: [`SCHEMA`], applied by [`CqlStore::migrate`] at start):
//!
//! | table | key | serves |
//! |---|---|---|
//! | `messages_by_room` | `((room_id), message_id timeuuid)` DESC | history, cursor checks, read markers |
//! | `message_rooms` | `((message_id))` | message -> room (reactions), idempotency claim of a send |
//! | `rooms_by_user` | `((user_id), room_id)` | GetRooms, room ids of a stream (denormalised room) |
//! | `room_counters_by_user` | `((user_id), room_id)` | unread counters |
//! | `room_details` | `((room_id))` | the room itself, its last activity |
//! | `participants_by_room` | `((room_id), user_id)` | members (`removed_at` kept on leave) |
//! | `reactions_by_message` | `((message_id), user_id, reaction)` | reactions |
//! | `read_markers` | `((room_id, user_id), message_id)` | which messages a member has read |
//! | `device_tokens_by_user` | `((user_id), push_token)` | push device tokens (latest write wins) |
//!
//! Times other than a message's (which is its timeuuid's) are `bigint` microseconds since the
//! epoch: CQL `timestamp` has only milliseconds, and rooms created within one millisecond must
//! still sort by creation as they do in PostgreSQL.
//!
//! Every statement on the request path is prepared once in [`CqlStore::connect`]; the
//! consistency level is the session's default execution profile (`LOCAL_QUORUM` unless
//! configured). Batches are only used within one partition; a send fans out to each
//! participant's `rooms_by_user` row and counter with separate (concurrent) writes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, NewSessionError, PrepareError, RequestAttemptError};
use scylla::response::query_result::QueryResult;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{Counter, CqlTimeuuid};
use uuid::Uuid;

use crate::ids::{MessageId, RoomId, UserId};
use crate::store::{
    ChatStore, DeviceToken, HistoryPage, NewMessage, NewRoom, PageRequest, Platform, READ_CHUNK,
    ReadChunk, Role, RoomAccess, RoomType, RoomView, StoreError, StoreResult, StoredMessage,
};

mod backfill;
mod errors;
mod requests;
mod reseal;
mod schema;
mod session;
mod statements;
mod values;

pub use backfill::*;
pub(crate) use errors::*;
pub use reseal::ResealCounts;
pub use schema::*;
pub(crate) use session::*;
use statements::*;
pub(crate) use values::*;

/// Rows per write batch (one partition each): well under the default 50 KiB batch limit.
const BATCH_ROWS: usize = 100;
/// Rows per read when scanning a range of a room's messages (read markers).
const SCAN_ROWS: i32 = 500;
/// Concurrent writes of a fan-out.
const FAN_OUT: usize = 32;

/// How to reach the CQL cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CqlConfig {
    /// `host:port` of one or more nodes (the driver discovers the rest).
    pub contact_points: Vec<String>,
    /// The keyspace: created beforehand (its replication is an operator's choice).
    pub keyspace: String,
    pub consistency: Consistency,
    /// Where to reach a node that broadcasts an address this process cannot (or should not)
    /// use directly: behind NAT, a port-forward or a proxy. Empty: the broadcast addresses.
    pub address_map: HashMap<SocketAddr, SocketAddr>,
}

/// Parses a consistency level as CQL spells it: `ONE`, `LOCAL_ONE`, `QUORUM`, `LOCAL_QUORUM`,
/// `EACH_QUORUM`, `ALL`, `TWO`, `THREE`, `ANY` (case-insensitive).
pub fn parse_consistency(text: &str) -> Result<Consistency, String> {
    Ok(
        match text.trim().to_ascii_uppercase().replace('-', "_").as_str() {
            "ANY" => Consistency::Any,
            "ONE" => Consistency::One,
            "TWO" => Consistency::Two,
            "THREE" => Consistency::Three,
            "QUORUM" => Consistency::Quorum,
            "ALL" => Consistency::All,
            "LOCAL_QUORUM" => Consistency::LocalQuorum,
            "EACH_QUORUM" => Consistency::EachQuorum,
            "LOCAL_ONE" => Consistency::LocalOne,
            other => {
                return Err(format!(
                    "unknown consistency level {other:?}: use ONE, LOCAL_ONE, QUORUM, LOCAL_QUORUM, EACH_QUORUM, ALL"
                ));
            }
        },
    )
}

pub struct CqlStore {
    session: Session,
    st: Statements,
}

type RoomRow = (String, String, i64, Option<i64>);
type MessageRow = (CqlTimeuuid, i32, Vec<u8>, String, Option<bool>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MessageIdGenerator;

    #[test]
    fn consistency_levels_parse() {
        assert_eq!(
            parse_consistency("local_quorum"),
            Ok(Consistency::LocalQuorum)
        );
        assert_eq!(parse_consistency("LOCAL_ONE"), Ok(Consistency::LocalOne));
        assert_eq!(parse_consistency("One"), Ok(Consistency::One));
        assert!(parse_consistency("most").is_err());
    }

    #[test]
    fn lower_bound_is_below_every_id_at_or_after_the_time() {
        let ids = MessageIdGenerator::default();
        let id = ids.next();
        let at = id.created_at().expect("time");
        let bound = timeuuid_lower_bound(at);
        assert!(bound < timeuuid(id), "CQL timeuuid order");
        let bound_time = message_id(bound).created_at().expect("time");
        assert!(bound_time < at && at - bound_time <= chrono::Duration::milliseconds(2));
    }
}
