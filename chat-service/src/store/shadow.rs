//! Comparing a shadow read with the answer the caller got (pure).
//!
//! A difference counts as drift only for data the other store is expected to hold: the
//! [`Scope`] of a read is the flag document's `shadow_compare_from` (data created since every
//! instance dual-writes, or everything once a backfill copied the history) and the moment the
//! read started (data created later is still on its way to one of the stores). Data outside
//! the scope is dropped from both answers before they are compared; a read with nothing left to
//! compare is [`Compared::Skipped`] and does not count as a compared read.
//!
//! What the comparison ignores, and why, is documented on [`rooms_equal`], [`messages_equal`],
//! [`compare_history`] and [`compare_rooms_page`].

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::flags::ShadowCompare;
use crate::ids::{MessageId, RoomId};
use crate::store::{HistoryPage, RoomView, StoredMessage};

/// A kind of difference between the two answers: the `type` label of
/// `chat_shadow_read_mismatches_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mismatch {
    /// In the served answer, not in the shadow's.
    Missing,
    /// Only in the shadow's answer.
    Extra,
    /// The same item with different fields.
    Content,
    /// The common items in another order.
    Order,
    /// A different total.
    Count,
}

impl Mismatch {
    pub const ALL: [Mismatch; 5] = [
        Mismatch::Missing,
        Mismatch::Extra,
        Mismatch::Content,
        Mismatch::Order,
        Mismatch::Count,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Mismatch::Missing => "missing",
            Mismatch::Extra => "extra",
            Mismatch::Content => "content",
            Mismatch::Order => "order",
            Mismatch::Count => "count",
        }
    }
}

/// The outcome of comparing one read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compared {
    /// Nothing in either answer is data the other store is expected to hold.
    Skipped,
    Same,
    /// Each kind at most once.
    Differs(Vec<Mismatch>),
}

impl Compared {
    fn of(kinds: Vec<Mismatch>) -> Compared {
        if kinds.is_empty() {
            Compared::Same
        } else {
            Compared::Differs(kinds)
        }
    }
}

/// Which data one shadow read compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope {
    pub compare: ShadowCompare,
    /// When the read started: newer data may have reached one store and not yet the other.
    pub until: DateTime<Utc>,
}

impl Scope {
    pub fn covers(&self, created_at: DateTime<Utc>) -> bool {
        self.compare.covers_millis(ms(created_at)) && ms(created_at) <= ms(self.until)
    }
}

/// An answer that can be shadowed.
pub trait Shadowed: Clone + Send + Sync + 'static {
    /// Whether the answer holds anything the scope compares (decides whether a NotFound on
    /// the other side is a difference).
    fn any_in_scope(&self, scope: &Scope) -> bool;
    fn compare(served: &Self, shadow: &Self, scope: &Scope) -> Compared;
    /// The rooms the answer shows (where a write on its way would make it differ).
    fn rooms(&self) -> Vec<RoomId>;
}

/// Milliseconds: CQL `timestamp` resolution (PostgreSQL keeps microseconds).
fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Results of a read on both stores (`Err` is NotFound): both NotFound agree; found on one
/// side only is `missing` (the shadow lacks it) or `extra` (only the shadow has it), when the
/// found answer holds data in scope.
pub fn compare_results<T: Shadowed>(
    served: &Result<T, String>,
    shadow: &Result<T, String>,
    scope: &Scope,
) -> Compared {
    match (served, shadow) {
        (Ok(a), Ok(b)) => T::compare(a, b, scope),
        (Ok(a), Err(_)) if a.any_in_scope(scope) => Compared::Differs(vec![Mismatch::Missing]),
        (Err(_), Ok(b)) if b.any_in_scope(scope) => Compared::Differs(vec![Mismatch::Extra]),
        (Ok(_), Err(_)) | (Err(_), Ok(_)) => Compared::Skipped,
        (Err(_), Err(_)) => Compared::Same,
    }
}

/// Rooms are equal when id, name, type, members (as a set), creation time (to the millisecond:
/// CQL timestamps have millisecond resolution) and the viewer's pin agree. Ignored:
/// `last_message_at`, a denormalized value that lags legitimately while a message is still on
/// its way to the secondary (async dual write, outbox), and which a CQL store keeps in a
/// separate column; and `unread_count`: the CQL store's counters are at most once (a send that
/// died after its claim never counts), and the backfill sets them from a count taken while
/// messages keep arriving.
pub fn rooms_equal(a: &RoomView, b: &RoomView) -> bool {
    let members = |r: &RoomView| r.participants.iter().copied().collect::<HashSet<_>>();
    a.id == b.id
        && a.name == b.name
        && a.room_type == b.room_type
        && members(a) == members(b)
        && ms(a.created_at) == ms(b.created_at)
        && a.is_pinned == b.is_pinned
}

/// Messages are equal when every field agrees, the time to the millisecond. `content` is
/// compared as stored: both stores hold the same sealed bytes (sealed once, before the write).
pub fn messages_equal(a: &StoredMessage, b: &StoredMessage) -> bool {
    a.id == b.id
        && a.room_id == b.room_id
        && a.sender_id == b.sender_id
        && a.content == b.content
        && a.message_type == b.message_type
        && ms(a.created_at) == ms(b.created_at)
}

/// Differences between two lists of the same query, `served` being the answer the caller got:
/// `missing`, `extra`, `content` and, with `ordered`, `order` (the common ids in another order).
pub fn diff_lists<T>(
    served: &[&T],
    shadow: &[&T],
    id: impl Fn(&T) -> Uuid,
    same: impl Fn(&T, &T) -> bool,
    ordered: bool,
) -> Vec<Mismatch> {
    let mut kinds = Vec::new();
    let by_id: HashMap<Uuid, &T> = shadow.iter().map(|t| (id(t), *t)).collect();
    let served_ids: HashSet<Uuid> = served.iter().map(|t| id(t)).collect();
    if served.iter().any(|t| !by_id.contains_key(&id(t))) {
        kinds.push(Mismatch::Missing);
    }
    if shadow.iter().any(|t| !served_ids.contains(&id(t))) {
        kinds.push(Mismatch::Extra);
    }
    if served
        .iter()
        .any(|t| by_id.get(&id(t)).is_some_and(|s| !same(t, s)))
    {
        kinds.push(Mismatch::Content);
    }
    if ordered {
        let common_served: Vec<Uuid> = served
            .iter()
            .map(|t| id(t))
            .filter(|i| by_id.contains_key(i))
            .collect();
        let common_shadow: Vec<Uuid> = shadow
            .iter()
            .map(|t| id(t))
            .filter(|i| served_ids.contains(i))
            .collect();
        if common_served != common_shadow {
            kinds.push(Mismatch::Order);
        }
    }
    kinds
}

impl Shadowed for HistoryPage {
    fn any_in_scope(&self, scope: &Scope) -> bool {
        self.items.iter().any(|m| scope.covers(m.created_at))
    }

    fn rooms(&self) -> Vec<RoomId> {
        let mut rooms: Vec<RoomId> = self.items.iter().map(|m| m.room_id).collect();
        rooms.dedup();
        rooms
    }

    fn compare(served: &Self, shadow: &Self, scope: &Scope) -> Compared {
        compare_history(served, shadow, scope)
    }
}

/// History pages. `next_cursor` is ignored (it follows from the items). When a page is full
/// (has a next cursor) only the window both pages cover is compared: items older than the newer
/// of the two pages' oldest items are dropped first, so one missing message counts once as
/// `missing` instead of also making the shadow page reach one message further (`extra`). Then
/// messages outside the scope are dropped from both.
pub fn compare_history(served: &HistoryPage, shadow: &HistoryPage, scope: &Scope) -> Compared {
    let key = |m: &StoredMessage| (ms(m.created_at), m.id);
    let cutoff = if served.next_cursor.is_some() || shadow.next_cursor.is_some() {
        served
            .items
            .last()
            .map(key)
            .into_iter()
            .chain(shadow.items.last().map(key))
            .max()
    } else {
        None
    };
    let (a, b) = (window(served, cutoff), window(shadow, cutoff));
    let (sa, sb) = (messages_in(&a, scope), messages_in(&b, scope));
    if sa.is_empty() && sb.is_empty() && !(a.is_empty() && b.is_empty()) {
        return Compared::Skipped;
    }
    Compared::of(diff_lists(&sa, &sb, |m| m.id.0, messages_equal, true))
}

fn window(page: &HistoryPage, cutoff: Option<(i64, MessageId)>) -> Vec<&StoredMessage> {
    page.items
        .iter()
        .filter(|m| cutoff.is_none_or(|c| (ms(m.created_at), m.id) >= c))
        .collect()
}

fn messages_in<'a>(items: &[&'a StoredMessage], scope: &Scope) -> Vec<&'a StoredMessage> {
    items
        .iter()
        .copied()
        .filter(|m| scope.covers(m.created_at))
        .collect()
}

fn rooms_in<'a>(rooms: &'a [RoomView], scope: &Scope) -> Vec<&'a RoomView> {
    rooms
        .iter()
        .filter(|r| scope.covers(r.created_at))
        .collect()
}

impl Shadowed for RoomView {
    fn any_in_scope(&self, scope: &Scope) -> bool {
        scope.covers(self.created_at)
    }

    fn rooms(&self) -> Vec<RoomId> {
        vec![self.id]
    }

    /// A room created before the scope is not compared (its members may have changed while
    /// only the legacy store was written).
    fn compare(served: &Self, shadow: &Self, scope: &Scope) -> Compared {
        if !scope.covers(served.created_at) {
            Compared::Skipped
        } else if rooms_equal(served, shadow) {
            Compared::Same
        } else {
            Compared::Differs(vec![Mismatch::Content])
        }
    }
}

impl Shadowed for (Vec<RoomView>, u64) {
    fn any_in_scope(&self, scope: &Scope) -> bool {
        self.0.iter().any(|r| scope.covers(r.created_at))
    }

    fn rooms(&self) -> Vec<RoomId> {
        self.0.iter().map(|r| r.id).collect()
    }

    fn compare(served: &Self, shadow: &Self, scope: &Scope) -> Compared {
        compare_rooms_page(served, shadow, scope)
    }
}

/// A page of a user's rooms, and the total. Rooms outside the scope are dropped from both
/// lists. The list's order (by latest activity, which lags legitimately) is not compared. When
/// either page is only part of the user's rooms, which rooms make the page depends on that
/// order too: only the rooms both pages hold are compared. The totals (`count`) are compared
/// only when the scope is every room.
pub fn compare_rooms_page(
    served: &(Vec<RoomView>, u64),
    shadow: &(Vec<RoomView>, u64),
    scope: &Scope,
) -> Compared {
    let (a, b) = (rooms_in(&served.0, scope), rooms_in(&shadow.0, scope));
    let everything = scope.compare == ShadowCompare::All;
    if a.is_empty() && b.is_empty() && !everything {
        return Compared::Skipped;
    }
    let partial = |page: &(Vec<RoomView>, u64)| (page.0.len() as u64) < page.1;
    let (a, b) = if partial(served) || partial(shadow) {
        let ids: HashSet<Uuid> = b.iter().map(|r| r.id.0).collect();
        let a: Vec<&RoomView> = a.into_iter().filter(|r| ids.contains(&r.id.0)).collect();
        let ids: HashSet<Uuid> = a.iter().map(|r| r.id.0).collect();
        let b: Vec<&RoomView> = b.into_iter().filter(|r| ids.contains(&r.id.0)).collect();
        (a, b)
    } else {
        (a, b)
    };
    let mut kinds = diff_lists(&a, &b, |r| r.id.0, rooms_equal, false);
    if everything && served.1 != shadow.1 {
        kinds.push(Mismatch::Count);
    }
    Compared::of(kinds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::UserId;
    use crate::store::RoomType;

    fn time(at_ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(at_ms).expect("time")
    }

    /// Everything up to a late instant.
    fn all() -> Scope {
        Scope {
            compare: ShadowCompare::All,
            until: time(1_000_000_000),
        }
    }

    fn from(at_ms: i64) -> Scope {
        Scope {
            compare: ShadowCompare::From(
                jiff::Timestamp::from_millisecond(at_ms).expect("instant"),
            ),
            ..all()
        }
    }

    fn message(n: u128, at_ms: i64) -> StoredMessage {
        StoredMessage {
            id: MessageId(Uuid::from_u128(n)),
            room_id: RoomId(Uuid::from_u128(1)),
            sender_id: UserId(1),
            content: vec![n as u8],
            message_type: "user_message".into(),
            created_at: time(at_ms),
        }
    }

    /// Newest first, message `n` created at `n` seconds.
    fn page(ids: &[u128], more: bool) -> HistoryPage {
        let items: Vec<StoredMessage> =
            ids.iter().map(|n| message(*n, 1_000 * *n as i64)).collect();
        HistoryPage {
            next_cursor: if more {
                items.last().map(|m| m.id)
            } else {
                None
            },
            items,
        }
    }

    fn room(n: u128, created_ms: i64) -> RoomView {
        RoomView {
            id: RoomId(Uuid::from_u128(n)),
            name: format!("room {n}"),
            room_type: RoomType::Group,
            participants: vec![UserId(1), UserId(2)],
            created_at: time(created_ms),
            last_message_at: None,
            is_pinned: false,
            unread_count: 0,
        }
    }

    use Mismatch::*;

    #[test]
    fn identical_pages_match_and_microseconds_are_ignored() {
        assert_eq!(
            compare_history(&page(&[5, 4, 3], false), &page(&[5, 4, 3], false), &all()),
            Compared::Same
        );
        let mut micro = page(&[5, 4], false);
        micro.items[0].created_at += chrono::Duration::microseconds(300);
        assert_eq!(
            compare_history(&page(&[5, 4], false), &micro, &all()),
            Compared::Same
        );
    }

    #[test]
    fn kinds_of_history_mismatch() {
        let cases = [
            (page(&[5, 4, 3], false), page(&[5, 3], false), vec![Missing]),
            (page(&[5, 3], false), page(&[5, 4, 3], false), vec![Extra]),
            (page(&[5, 4], false), page(&[4, 5], false), vec![Order]),
        ];
        for (served, shadow, kinds) in cases {
            assert_eq!(
                compare_history(&served, &shadow, &all()),
                Compared::Differs(kinds)
            );
        }
        let mut changed = page(&[5, 4], false);
        changed.items[1].content = vec![9];
        assert_eq!(
            compare_history(&page(&[5, 4], false), &changed, &all()),
            Compared::Differs(vec![Content])
        );
    }

    #[test]
    fn a_full_page_missing_one_message_counts_missing_only() {
        // Limit 3: the shadow lacks 4, so its page reaches down to 2.
        assert_eq!(
            compare_history(&page(&[5, 4, 3], true), &page(&[5, 3, 2], true), &all()),
            Compared::Differs(vec![Missing])
        );
    }

    #[test]
    fn history_before_the_scope_is_not_drift_and_later_history_still_is() {
        // Messages 1..=3 predate dual-write (scope from 4 s): the new store lacks them.
        let served = page(&[6, 5, 4, 3, 2, 1], false);
        let shadow = page(&[6, 5, 4], false);
        assert_eq!(
            compare_history(&served, &shadow, &from(4_000)),
            Compared::Same
        );
        assert_eq!(
            compare_history(&served, &shadow, &all()),
            Compared::Differs(vec![Missing]),
            "after the backfill the same gap is drift"
        );
        // A message written since dual-write started and missing from the new store is drift.
        let lost = page(&[6, 4], false);
        assert_eq!(
            compare_history(&served, &lost, &from(4_000)),
            Compared::Differs(vec![Missing])
        );
        // A page of old history only: nothing to compare.
        assert_eq!(
            compare_history(&page(&[3, 2], false), &page(&[], false), &from(4_000)),
            Compared::Skipped
        );
        // Both empty: compared, and equal.
        assert_eq!(
            compare_history(&page(&[], false), &page(&[], false), &from(4_000)),
            Compared::Same
        );
    }

    #[test]
    fn data_newer_than_the_read_is_not_compared() {
        // Message 6 was written after the read started: one store may not have it yet.
        let scope = Scope {
            until: time(5_500),
            ..all()
        };
        assert_eq!(
            compare_history(&page(&[6, 5, 4], false), &page(&[5, 4], false), &scope),
            Compared::Same
        );
        assert_eq!(
            compare_results(&Ok(room(1, 6_000)), &Err("not found".into()), &scope),
            Compared::Skipped
        );
    }

    #[test]
    fn rooms_ignore_last_message_and_member_order() {
        let a = room(7, 5_000);
        let other = RoomView {
            participants: vec![UserId(2), UserId(1)],
            last_message_at: Some(Utc::now()),
            ..a.clone()
        };
        assert!(rooms_equal(&a, &other));
        assert!(!rooms_equal(
            &a,
            &RoomView {
                name: "x".into(),
                ..a.clone()
            }
        ));
    }

    #[test]
    fn a_room_found_on_one_side_only_differs_when_in_scope() {
        let old = room(1, 1_000);
        let new = room(2, 9_000);
        let nf = || Err::<RoomView, String>("not found".into());
        let scope = from(4_000);
        assert_eq!(
            compare_results(&Ok(old.clone()), &nf(), &scope),
            Compared::Skipped
        );
        assert_eq!(
            compare_results(&Ok(new.clone()), &nf(), &scope),
            Compared::Differs(vec![Missing])
        );
        assert_eq!(
            compare_results(&nf(), &Ok(new.clone()), &scope),
            Compared::Differs(vec![Extra])
        );
        assert_eq!(compare_results(&nf(), &nf(), &scope), Compared::Same);
        let renamed = RoomView {
            name: "renamed".into(),
            ..old.clone()
        };
        assert_eq!(
            compare_results(&Ok(old.clone()), &Ok(renamed.clone()), &scope),
            Compared::Skipped,
            "a room from before the scope is not compared"
        );
        assert_eq!(
            compare_results(&Ok(old), &Ok(renamed), &all()),
            Compared::Differs(vec![Content])
        );
    }

    #[test]
    fn room_pages_compare_rooms_in_scope_without_order() {
        let (old, a, b) = (room(1, 1_000), room(2, 5_000), room(3, 6_000));
        // The new store lacks the old room: before the backfill that is no difference, nor
        // is the total; the order of the list is never compared.
        let served = (vec![old.clone(), b.clone(), a.clone()], 3);
        let shadow = (vec![a.clone(), b.clone()], 2);
        assert_eq!(
            compare_rooms_page(&served, &shadow, &from(4_000)),
            Compared::Same
        );
        assert_eq!(
            compare_rooms_page(&served, &shadow, &all()),
            Compared::Differs(vec![Missing, Count])
        );
        // A room created since dual-write and missing from the other store is drift.
        let lacking = (vec![b.clone()], 1);
        assert_eq!(
            compare_rooms_page(&(vec![b.clone(), a.clone()], 2), &lacking, &from(4_000)),
            Compared::Differs(vec![Missing])
        );
        // Part of the user's rooms on a page: only the rooms both pages hold are compared.
        let left = RoomView {
            participants: vec![UserId(1)],
            ..a.clone()
        };
        assert_eq!(
            compare_rooms_page(
                &(vec![b.clone(), a.clone()], 9),
                &(vec![a.clone()], 9),
                &all()
            ),
            Compared::Same
        );
        assert_eq!(
            compare_rooms_page(&(vec![b, a], 9), &(vec![left], 9), &all()),
            Compared::Differs(vec![Content])
        );
        assert_eq!(
            compare_rooms_page(&(vec![old], 1), &(vec![], 0), &from(4_000)),
            Compared::Skipped
        );
    }
}
