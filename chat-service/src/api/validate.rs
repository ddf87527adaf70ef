//! Request validation (pure): every rule an input can break, each an `invalid_argument` that
//! says which field and what is allowed.

use chrono::{DateTime, Utc};

use crate::api::error::ApiError;
use crate::ids::{MessageId, UserId};
use crate::store::{ReadMarker, RoomType};

/// Message content, in Unicode scalar values (what most clients count as characters).
pub const MAX_MESSAGE_CHARS: usize = 4096;
pub const MAX_ROOM_NAME_CHARS: usize = 255;
/// Participants of a group, creator included.
pub const MAX_PARTICIPANTS: usize = 1000;
pub const MAX_READ_IDS: usize = 500;
/// A reaction is one emoji or a short code (`:thumbsup:`); some emoji are 25+ bytes of UTF-8.
pub const MAX_REACTION_BYTES: usize = 64;
pub const MAX_MESSAGE_TYPE_LEN: usize = 32;
pub const DEFAULT_MESSAGE_TYPE: &str = "user_message";

/// The users a LeaveRoom names: user ids, deduplicated and ascending.
pub fn leaving(requested: &[i64]) -> Result<Vec<UserId>, ApiError> {
    if requested.len() > MAX_PARTICIPANTS {
        return Err(ApiError::invalid(format!(
            "participants: at most {MAX_PARTICIPANTS} per call"
        )));
    }
    let mut users = Vec::with_capacity(requested.len());
    for &id in requested {
        match i32::try_from(id) {
            Ok(id) if id > 0 => users.push(UserId(id)),
            _ => {
                return Err(ApiError::invalid(format!(
                    "participants: {id} is not a user id (positive 32-bit integer)"
                )));
            }
        }
    }
    users.sort();
    users.dedup();
    Ok(users)
}

/// The members of a new room: the requested participants plus the creator, deduplicated and
/// ascending. A p2p room is the creator and exactly one other user.
pub fn participants(
    creator: UserId,
    room_type: RoomType,
    requested: &[i64],
) -> Result<Vec<UserId>, ApiError> {
    let mut users = Vec::with_capacity(requested.len() + 1);
    for &id in requested {
        match i32::try_from(id) {
            Ok(id) if id > 0 => users.push(UserId(id)),
            _ => {
                return Err(ApiError::invalid(format!(
                    "participants: {id} is not a user id (positive 32-bit integer)"
                )));
            }
        }
    }
    users.push(creator);
    users.sort();
    users.dedup();
    match room_type {
        RoomType::P2p if users.len() != 2 => Err(ApiError::invalid(format!(
            "a p2p room has exactly 2 participants, you and one other user; got {}",
            users.len()
        ))),
        RoomType::Group if users.len() > MAX_PARTICIPANTS => Err(ApiError::invalid(format!(
            "a group has at most {MAX_PARTICIPANTS} participants"
        ))),
        _ => Ok(users),
    }
}

pub fn room_name(name: &str) -> Result<String, ApiError> {
    // PostgreSQL text cannot hold U+0000: refused here, not a database error (500) later.
    if name.contains('\0') {
        return Err(ApiError::invalid(
            "name: must not contain the NUL character (U+0000)",
        ));
    }
    let name = name.trim();
    if name.chars().count() > MAX_ROOM_NAME_CHARS {
        return Err(ApiError::invalid(format!(
            "name: at most {MAX_ROOM_NAME_CHARS} characters"
        )));
    }
    Ok(name.to_owned())
}

pub fn message_content(content: &str) -> Result<(), ApiError> {
    if content.trim().is_empty() {
        return Err(ApiError::invalid("content: must not be empty"));
    }
    let chars = content.chars().count();
    if chars > MAX_MESSAGE_CHARS {
        return Err(ApiError::invalid(format!(
            "content: {chars} characters, at most {MAX_MESSAGE_CHARS} allowed"
        )));
    }
    Ok(())
}

/// `type` of a message: lowercase letters, digits and `_` (default `user_message`).
pub fn message_type(kind: Option<&str>) -> Result<String, ApiError> {
    let kind = match kind.map(str::trim) {
        None | Some("") => return Ok(DEFAULT_MESSAGE_TYPE.to_owned()),
        Some(kind) => kind,
    };
    let valid = kind.len() <= MAX_MESSAGE_TYPE_LEN
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(ApiError::invalid(format!(
            "type: at most {MAX_MESSAGE_TYPE_LEN} of a-z, 0-9 and _ (e.g. {DEFAULT_MESSAGE_TYPE})"
        )));
    }
    Ok(kind.to_owned())
}

pub fn reaction(reaction: &str) -> Result<String, ApiError> {
    let reaction = reaction.trim();
    if reaction.is_empty()
        || reaction.len() > MAX_REACTION_BYTES
        || reaction.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(format!(
            "reaction: 1 to {MAX_REACTION_BYTES} bytes of text without control characters"
        )));
    }
    Ok(reaction.to_owned())
}

/// `messageIds` or `since`, exactly one (an empty list counts as absent, as in proto3 JSON).
pub fn read_marker(
    message_ids: Option<Vec<MessageId>>,
    since: Option<DateTime<Utc>>,
) -> Result<ReadMarker, ApiError> {
    let ids = message_ids.filter(|ids| !ids.is_empty());
    match (ids, since) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "give either messageIds or since, not both",
        )),
        (None, None) => Err(ApiError::invalid(
            "give messageIds (a list of message ids) or since (an RFC 3339 time)",
        )),
        (Some(ids), None) if ids.len() > MAX_READ_IDS => Err(ApiError::invalid(format!(
            "messageIds: at most {MAX_READ_IDS} per call"
        ))),
        (Some(mut ids), None) => {
            ids.sort();
            ids.dedup();
            Ok(ReadMarker::Ids(ids))
        }
        (None, Some(since)) => Ok(ReadMarker::Since(since)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MessageIdGenerator;

    fn users(ids: &[i32]) -> Vec<UserId> {
        ids.iter().copied().map(UserId).collect()
    }

    #[test]
    fn the_creator_is_always_a_participant() {
        assert_eq!(
            participants(UserId(5), RoomType::Group, &[9, 3, 9]).expect("ok"),
            users(&[3, 5, 9])
        );
        assert_eq!(
            participants(UserId(5), RoomType::Group, &[]).expect("alone is fine"),
            users(&[5])
        );
        assert_eq!(
            participants(UserId(5), RoomType::Group, &[5, 5]).expect("ok"),
            users(&[5])
        );
    }

    #[test]
    fn p2p_rooms_have_exactly_two_participants() {
        assert_eq!(
            participants(UserId(1), RoomType::P2p, &[2]).expect("ok"),
            users(&[1, 2])
        );
        assert_eq!(
            participants(UserId(1), RoomType::P2p, &[1, 2]).expect("creator listed too"),
            users(&[1, 2])
        );
        for bad in [&[][..], &[1], &[2, 3]] {
            assert!(
                participants(UserId(1), RoomType::P2p, bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn participant_ids_are_positive_i32() {
        for bad in [0, -1, i64::from(i32::MAX) + 1] {
            assert!(
                participants(UserId(1), RoomType::Group, &[bad]).is_err(),
                "{bad}"
            );
        }
        let too_many: Vec<i64> = (2..=MAX_PARTICIPANTS as i64 + 1).collect();
        assert!(participants(UserId(1), RoomType::Group, &too_many).is_err());
        assert!(participants(UserId(1), RoomType::Group, &too_many[1..]).is_ok());
    }

    #[test]
    fn content_length_counts_characters() {
        assert!(message_content("hola").is_ok());
        assert!(
            message_content(&"ñ".repeat(MAX_MESSAGE_CHARS)).is_ok(),
            "4096 two-byte characters fit"
        );
        assert!(message_content(&"a".repeat(MAX_MESSAGE_CHARS + 1)).is_err());
        assert!(message_content("").is_err());
        assert!(message_content(" \n").is_err());
    }

    #[test]
    fn names_types_and_reactions() {
        assert_eq!(room_name("  Team ").expect("ok"), "Team");
        assert!(room_name("a\0b").is_err());
        assert!(room_name(&"n".repeat(MAX_ROOM_NAME_CHARS + 1)).is_err());
        assert_eq!(message_type(None).expect("default"), DEFAULT_MESSAGE_TYPE);
        assert_eq!(
            message_type(Some("")).expect("default"),
            DEFAULT_MESSAGE_TYPE
        );
        assert_eq!(
            message_type(Some("system_notice")).expect("ok"),
            "system_notice"
        );
        assert!(message_type(Some("Bad Type")).is_err());
        assert!(message_type(Some(&"a".repeat(33))).is_err());
        assert_eq!(reaction(" 👍 ").expect("ok"), "👍");
        assert!(reaction("👨‍👩‍👧‍👦").is_ok());
        assert!(reaction("").is_err());
        assert!(reaction("a\u{7}").is_err());
        assert!(reaction(&"x".repeat(MAX_REACTION_BYTES + 1)).is_err());
    }

    #[test]
    fn read_markers_take_ids_or_since() {
        let ids = MessageIdGenerator::default();
        let (a, b) = (ids.next(), ids.next());
        assert_eq!(
            read_marker(Some(vec![b, a, b]), None).expect("ids"),
            ReadMarker::Ids(vec![a.min(b), a.max(b)])
        );
        let t = Utc::now();
        assert_eq!(
            read_marker(None, Some(t)).expect("since"),
            ReadMarker::Since(t)
        );
        assert_eq!(
            read_marker(Some(vec![]), Some(t)).expect("empty list is absent"),
            ReadMarker::Since(t)
        );
        assert!(read_marker(Some(vec![a]), Some(t)).is_err());
        assert!(read_marker(None, None).is_err());
        assert!(read_marker(Some(vec![]), None).is_err());
        assert!(read_marker(Some((0..=MAX_READ_IDS).map(|_| ids.next()).collect()), None).is_err());
    }
}
