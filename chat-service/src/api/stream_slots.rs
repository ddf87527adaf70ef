//! At most `limit` concurrent event streams per user. A stream holds a slot for as long as it is
//! open; a client that opens streams in a loop (or leaks them) is refused with
//! `resource_exhausted` (429) instead of taking a subscription and a connection each time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::metrics::gauge::Gauge;

use crate::api::error::{ApiError, Code};
use crate::ids::UserId;

/// The open streams of every user of this instance.
#[derive(Debug)]
pub struct StreamSlots {
    limit: usize,
    open: Mutex<HashMap<UserId, usize>>,
    /// Open streams of all users (`chat_active_connections`).
    gauge: Gauge,
}

/// One open stream's slot; dropping it (the stream ended or the client went away) frees it.
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    user: UserId,
}

impl StreamSlots {
    pub fn new(limit: usize, gauge: Gauge) -> Arc<StreamSlots> {
        Arc::new(StreamSlots {
            limit,
            open: Mutex::new(HashMap::new()),
            gauge,
        })
    }

    /// A slot for one more stream of `user`, unless they have `limit` open already.
    pub fn take(self: &Arc<Self>, user: UserId) -> Result<StreamSlot, ApiError> {
        // The map is consistent after any panic (one insert or decrement at a time).
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(user).or_insert(0);
        if *count >= self.limit {
            return Err(ApiError::new(
                Code::ResourceExhausted,
                format!(
                    "{} event streams are open for this user, the most allowed per instance (--max-streams-per-user); close one first",
                    self.limit
                ),
            ));
        }
        *count += 1;
        self.gauge.inc();
        Ok(StreamSlot {
            slots: self.clone(),
            user,
        })
    }

    /// The streams `user` has open.
    pub fn open(&self, user: UserId) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&user).copied().unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.user) {
            self.slots.gauge.dec();
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_limit_slots_and_one_more_once_one_is_freed() {
        let gauge = Gauge::default();
        let slots = StreamSlots::new(2, gauge.clone());
        let a = slots.take(UserId(1)).expect("first");
        let _b = slots.take(UserId(1)).expect("second");
        let refused = slots.take(UserId(1)).expect_err("third refused");
        assert_eq!(refused.code, Code::ResourceExhausted);
        let _other = slots
            .take(UserId(2))
            .expect("another user is not limited by the first");
        drop(a);
        assert_eq!(slots.open(UserId(1)), 1);
        let _c = slots.take(UserId(1)).expect("a freed slot is taken again");
        assert_eq!(slots.open(UserId(1)), 2);
        assert_eq!(
            gauge.get(),
            3,
            "every open stream counted, the refused one not"
        );
    }
}
