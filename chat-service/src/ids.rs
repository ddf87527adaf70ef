//! Identifiers: user ids (PostgreSQL `int`), room ids (UUID v4) and message ids.
//!
//! Message ids are time-based UUIDs (version 1, CQL `timeuuid`), so the id a message gets here
//! is also a valid clustering key of ScyllaDB's `messages_by_room` and sorts by time there. The
//! message's `created_at` is derived from its id ([`MessageId::created_at`]), so both stores
//! agree on a message's time to the microsecond.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A user id as the identity provider issues it (JWT `sub`); positive.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct UserId(pub i32);

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct RoomId(pub Uuid);

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct MessageId(pub Uuid);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl RoomId {
    pub fn random() -> Self {
        RoomId(Uuid::new_v4())
    }
}

impl MessageId {
    /// The id's timestamp truncated to microseconds (PostgreSQL's `timestamptz` resolution),
    /// or `None` for an id that is not time-based (not version 1).
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        if self.0.get_version_num() != 1 {
            return None;
        }
        let (secs, nanos) = self.0.get_timestamp()?.to_unix();
        DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos - nanos % 1_000)
    }
}

/// Makes message ids: UUID v1 with a random node id per process (RFC 9562 §6.10: multicast bit
/// set, so it can never collide with a real MAC address) and the uuid crate's shared clock
/// sequence, which changes on every id, so ids are unique within a process and, with the random
/// node id, across instances.
#[derive(Clone, Debug)]
pub struct MessageIdGenerator {
    node: [u8; 6],
}

impl Default for MessageIdGenerator {
    fn default() -> Self {
        let mut node: [u8; 6] = rand::random();
        node[0] |= 0x01;
        MessageIdGenerator { node }
    }
}

impl MessageIdGenerator {
    pub fn next(&self) -> MessageId {
        MessageId(Uuid::now_v1(&self.node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_time_based_and_unique() {
        let ids = MessageIdGenerator::default();
        let before = Utc::now();
        let made: Vec<MessageId> = (0..10_000).map(|_| ids.next()).collect();
        let after = Utc::now();
        let unique: std::collections::HashSet<_> = made.iter().collect();
        assert_eq!(unique.len(), made.len());
        for id in &made {
            assert_eq!(id.0.get_version_num(), 1);
            let at = id.created_at().expect("v1 ids carry a time");
            // Truncation to microseconds may put `at` up to 1µs before `before`.
            assert!(
                at >= before - chrono::Duration::microseconds(1) && at <= after,
                "{at} not in [{before}, {after}]"
            );
            assert_eq!(
                at.timestamp_subsec_nanos() % 1_000,
                0,
                "truncated to microseconds"
            );
        }
    }

    #[test]
    fn only_v1_ids_have_a_time() {
        assert_eq!(MessageId(Uuid::new_v4()).created_at(), None);
        assert_eq!(MessageId(Uuid::now_v7()).created_at(), None);
    }

    #[test]
    fn node_id_is_marked_random() {
        let ids = MessageIdGenerator::default();
        assert_eq!(ids.node[0] & 0x01, 0x01);
        // The node id is the last 6 bytes of a v1 UUID.
        assert_eq!(&ids.next().0.as_bytes()[10..], &ids.node);
    }
}
