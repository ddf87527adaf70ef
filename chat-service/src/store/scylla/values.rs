//! Conversions between the chat types and their CQL columns.

use super::*;

pub(super) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(super) fn from_micros(us: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| StoreError::Internal(format!("time {us} out of range")))
}

pub(super) fn timeuuid(id: MessageId) -> CqlTimeuuid {
    CqlTimeuuid::from(id.0)
}

pub(super) fn message_id(t: CqlTimeuuid) -> MessageId {
    MessageId(Uuid::from(t))
}

/// The lowest timeuuid at `at` minus one millisecond: a safe lower bound for "created at or after
/// `at`" (the exact comparison is made on each id's time afterwards).
pub(crate) fn timeuuid_lower_bound(at: DateTime<Utc>) -> CqlTimeuuid {
    // 100 ns intervals between 1582-10-15 (the UUID epoch) and 1970-01-01.
    const GREGORIAN_OFFSET: u64 = 0x01B2_1DD2_1381_4000;
    let unix_ticks = (at.timestamp_micros() - 1_000).max(0) as u64 * 10;
    let ts = uuid::Timestamp::from_gregorian_time(unix_ticks + GREGORIAN_OFFSET, 0);
    CqlTimeuuid::from(Uuid::new_v1(ts, &[0; 6]))
}

/// The time a message's cell writes are stamped with (`USING TIMESTAMP`): the message's own
/// time, so the newest message wins in the denormalised "last message" columns whatever order
/// concurrent sends arrive in.
pub(super) fn write_time(message: &NewMessage) -> i64 {
    micros(message.id.created_at().unwrap_or(message.created_at))
}

pub(super) fn parse_type(room: RoomId, text: &str) -> StoreResult<RoomType> {
    RoomType::parse(text)
        .ok_or_else(|| StoreError::Internal(format!("room {room} has unknown type {text:?}")))
}
