//! The request path's statements, prepared once at connect.

use super::*;

/// Statements of the request path, prepared once at connect.
pub(super) struct Statements {
    pub(super) ping: PreparedStatement,
    pub(super) insert_room: PreparedStatement,
    pub(super) insert_participant: PreparedStatement,
    pub(super) insert_room_for_user: PreparedStatement,
    pub(super) select_room: PreparedStatement,
    pub(super) select_participants: PreparedStatement,
    pub(super) select_participant: PreparedStatement,
    pub(super) select_participant_role: PreparedStatement,
    pub(super) select_user_room: PreparedStatement,
    pub(super) select_unread: PreparedStatement,
    pub(super) select_user_rooms: PreparedStatement,
    pub(super) leave: PreparedStatement,
    pub(super) delete_room_for_user: PreparedStatement,
    pub(super) set_pinned: PreparedStatement,
    pub(super) claim_message: PreparedStatement,
    pub(super) insert_message: PreparedStatement,
    pub(super) select_message: PreparedStatement,
    pub(super) room_last_message: PreparedStatement,
    pub(super) user_room_last_message: PreparedStatement,
    pub(super) add_unread: PreparedStatement,
    pub(super) history_first: PreparedStatement,
    pub(super) history_before: PreparedStatement,
    pub(super) select_message_room: PreparedStatement,
    pub(super) messages_in: PreparedStatement,
    pub(super) messages_from: PreparedStatement,
    pub(super) messages_after: PreparedStatement,
    pub(super) read_in: PreparedStatement,
    pub(super) insert_read: PreparedStatement,
    pub(super) last_read: PreparedStatement,
    pub(super) insert_reaction: PreparedStatement,
    pub(super) register_device: PreparedStatement,
    pub(super) delete_device: PreparedStatement,
    pub(super) select_devices: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, keyspace: &str) -> StoreResult<Self> {
        let p = |cql: &'static str| async move {
            session
                .prepare(cql.replace("{ks}", keyspace))
                .await
                .map_err(classify_prepare)
        };
        Ok(Statements {
            ping: p("SELECT release_version FROM system.local WHERE key = 'local'").await?,
            insert_room: p("INSERT INTO {ks}.room_details (room_id, name, type, created_by, created_at) VALUES (?, ?, ?, ?, ?)").await?,
            insert_participant: p("INSERT INTO {ks}.participants_by_room (room_id, user_id, role, joined_at) VALUES (?, ?, ?, ?)").await?,
            // `is_pinned` unset (read as false): a creation replayed after a pin must not unpin.
            insert_room_for_user: p("INSERT INTO {ks}.rooms_by_user (user_id, room_id, name, type, created_at) VALUES (?, ?, ?, ?, ?)").await?,
            select_room: p("SELECT name, type, created_at, last_message_at FROM {ks}.room_details WHERE room_id = ?").await?,
            select_participants: p("SELECT user_id, removed_at FROM {ks}.participants_by_room WHERE room_id = ?").await?,
            select_participant: p("SELECT removed_at FROM {ks}.participants_by_room WHERE room_id = ? AND user_id = ?").await?,
            select_participant_role: p("SELECT removed_at, role FROM {ks}.participants_by_room WHERE room_id = ? AND user_id = ?").await?,
            select_user_room: p("SELECT is_pinned FROM {ks}.rooms_by_user WHERE user_id = ? AND room_id = ?").await?,
            select_unread: p("SELECT unread_count FROM {ks}.room_counters_by_user WHERE user_id = ? AND room_id = ?").await?,
            select_user_rooms: p("SELECT room_id, name, type, created_at, is_pinned, last_message_at FROM {ks}.rooms_by_user WHERE user_id = ?").await?,
            leave: p("UPDATE {ks}.participants_by_room SET removed_at = ? WHERE room_id = ? AND user_id = ? IF removed_at = null").await?,
            delete_room_for_user: p("DELETE FROM {ks}.rooms_by_user WHERE user_id = ? AND room_id = ?").await?,
            // Stamped with the pin's time: the latest pin wins in whatever order pins arrive.
            set_pinned: p("UPDATE {ks}.rooms_by_user USING TIMESTAMP ? SET is_pinned = ? WHERE user_id = ? AND room_id = ?").await?,
            claim_message: p("INSERT INTO {ks}.message_rooms (message_id, room_id, sender_id) VALUES (?, ?, ?) IF NOT EXISTS").await?,
            insert_message: p("INSERT INTO {ks}.messages_by_room (room_id, message_id, sender_id, content, type, deleted) VALUES (?, ?, ?, ?, ?, false)").await?,
            select_message: p("SELECT sender_id, content, type, deleted FROM {ks}.messages_by_room WHERE room_id = ? AND message_id = ?").await?,
            room_last_message: p("UPDATE {ks}.room_details USING TIMESTAMP ? SET last_message_at = ? WHERE room_id = ?").await?,
            user_room_last_message: p(
                "UPDATE {ks}.rooms_by_user USING TIMESTAMP ? SET last_message_at = ?, last_message_id = ?, last_message_sender = ?, \
                 last_message_type = ?, last_message_content = ? WHERE user_id = ? AND room_id = ?",
            )
            .await?,
            add_unread: p("UPDATE {ks}.room_counters_by_user SET unread_count = unread_count + ? WHERE user_id = ? AND room_id = ?").await?,
            history_first: p("SELECT message_id, sender_id, content, type, deleted FROM {ks}.messages_by_room WHERE room_id = ? LIMIT ?").await?,
            history_before: p("SELECT message_id, sender_id, content, type, deleted FROM {ks}.messages_by_room WHERE room_id = ? AND message_id < ? LIMIT ?").await?,
            select_message_room: p("SELECT room_id FROM {ks}.message_rooms WHERE message_id = ?").await?,
            messages_in: p("SELECT message_id, sender_id, deleted FROM {ks}.messages_by_room WHERE room_id = ? AND message_id IN ?").await?,
            messages_from: p("SELECT message_id, sender_id, deleted FROM {ks}.messages_by_room WHERE room_id = ? AND message_id >= ? ORDER BY message_id ASC LIMIT ?").await?,
            messages_after: p("SELECT message_id, sender_id, deleted FROM {ks}.messages_by_room WHERE room_id = ? AND message_id > ? ORDER BY message_id ASC LIMIT ?").await?,
            read_in: p("SELECT message_id FROM {ks}.read_markers WHERE room_id = ? AND user_id = ? AND message_id IN ?").await?,
            insert_read: p("INSERT INTO {ks}.read_markers (room_id, user_id, message_id, read_at) VALUES (?, ?, ?, ?)").await?,
            last_read: p("UPDATE {ks}.participants_by_room USING TIMESTAMP ? SET last_read_message_id = ? WHERE room_id = ? AND user_id = ?").await?,
            insert_reaction: p("INSERT INTO {ks}.reactions_by_message (message_id, user_id, reaction, created_at) VALUES (?, ?, ?, ?) IF NOT EXISTS").await?,
            register_device: p("INSERT INTO {ks}.device_tokens_by_user (user_id, push_token, platform, registered_at) VALUES (?, ?, ?, ?) USING TIMESTAMP ?").await?,
            delete_device: p("DELETE FROM {ks}.device_tokens_by_user USING TIMESTAMP ? WHERE user_id = ? AND push_token = ?").await?,
            select_devices: p("SELECT push_token, platform, registered_at FROM {ks}.device_tokens_by_user WHERE user_id = ?").await?,
        })
    }
}
