//! Paging rules shared by every store (pure, so both stores page the same way).
//!
//! * `limit`: missing or 0 means [`DEFAULT_LIMIT`] (proto3 JSON clients send 0 for "unset");
//!   anything above [`MAX_LIMIT`] is clamped to it, so a page is always bounded.
//! * `page` (room lists): missing or 0 means the first page.
//! * History is cursor-based: a store fetches `limit + 1` rows after the cursor, and the extra
//!   row only tells whether there is a next page; `nextCursor` is then the id of the last item
//!   returned.

use serde::{Deserialize, Serialize};

use crate::ids::MessageId;
use crate::store::StoredMessage;

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;
/// Bounds `page * limit` so the offset stays far inside `i64`.
pub const MAX_PAGE: u32 = 1_000_000;

/// The effective page size for a requested `limit`.
pub fn effective_limit(limit: Option<u32>) -> u32 {
    match limit {
        None | Some(0) => DEFAULT_LIMIT,
        Some(n) => n.min(MAX_LIMIT),
    }
}

/// A page of a numbered list (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    pub page: u32,
    pub limit: u32,
}

impl PageRequest {
    pub fn new(page: Option<u32>, limit: Option<u32>) -> Self {
        PageRequest {
            page: page.filter(|p| *p > 0).unwrap_or(1).min(MAX_PAGE),
            limit: effective_limit(limit),
        }
    }

    /// Rows to skip.
    pub fn offset(&self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.limit)
    }
}

/// One page of a room's history, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    pub items: Vec<StoredMessage>,
    /// The id to pass as `before` for the next (older) page; `None` on the last page.
    pub next_cursor: Option<MessageId>,
}

impl HistoryPage {
    /// The page from rows fetched with `LIMIT limit + 1`.
    pub fn from_rows(rows: Vec<StoredMessage>, limit: u32) -> Self {
        let (items, more) = trim_to_limit(rows, limit as usize);
        let next_cursor = if more {
            items.last().map(|m| m.id)
        } else {
            None
        };
        HistoryPage { items, next_cursor }
    }
}

/// Keeps the first `limit` rows; true if there were more.
fn trim_to_limit<T>(mut rows: Vec<T>, limit: usize) -> (Vec<T>, bool) {
    let more = rows.len() > limit;
    rows.truncate(limit);
    (rows, more)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MessageIdGenerator, RoomId, UserId};

    #[test]
    fn limits_default_and_clamp() {
        assert_eq!(effective_limit(None), DEFAULT_LIMIT);
        assert_eq!(effective_limit(Some(0)), DEFAULT_LIMIT);
        assert_eq!(effective_limit(Some(1)), 1);
        assert_eq!(effective_limit(Some(MAX_LIMIT)), MAX_LIMIT);
        assert_eq!(effective_limit(Some(MAX_LIMIT + 1)), MAX_LIMIT);
        assert_eq!(effective_limit(Some(u32::MAX)), MAX_LIMIT);
    }

    #[test]
    fn pages_are_one_based_and_bounded() {
        assert_eq!(
            PageRequest::new(None, None),
            PageRequest {
                page: 1,
                limit: DEFAULT_LIMIT
            }
        );
        assert_eq!(PageRequest::new(Some(0), Some(10)).offset(), 0);
        assert_eq!(PageRequest::new(Some(3), Some(10)).offset(), 20);
        let far = PageRequest::new(Some(u32::MAX), Some(u32::MAX));
        assert_eq!(far.page, MAX_PAGE);
        assert_eq!(far.offset(), i64::from(MAX_PAGE - 1) * i64::from(MAX_LIMIT));
    }

    fn messages(n: usize) -> Vec<StoredMessage> {
        let ids = MessageIdGenerator::default();
        let room = RoomId::random();
        (0..n)
            .map(|_| {
                let id = ids.next();
                StoredMessage {
                    id,
                    room_id: room,
                    sender_id: UserId(1),
                    content: vec![],
                    message_type: "user_message".into(),
                    created_at: chrono::Utc::now(),
                }
            })
            .collect()
    }

    #[test]
    fn next_cursor_only_when_more_rows_exist() {
        let rows = messages(4);
        let page = HistoryPage::from_rows(rows.clone(), 3);
        assert_eq!(page.items, rows[..3]);
        assert_eq!(
            page.next_cursor,
            Some(rows[2].id),
            "the cursor is the last item returned, not the extra row"
        );

        let page = HistoryPage::from_rows(rows[..3].to_vec(), 3);
        assert_eq!(page.items.len(), 3);
        assert_eq!(page.next_cursor, None, "exactly `limit` rows: last page");

        let page = HistoryPage::from_rows(vec![], 3);
        assert!(page.items.is_empty());
        assert_eq!(page.next_cursor, None);
    }
}
