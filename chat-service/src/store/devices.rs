//! Push device tokens: the devices a user registered to receive notifications on (the original
//! system's tokens handler). One per (user, token). Writes carry their time and each store keeps
//! the latest write of a token, whatever order the writes arrive in (PostgreSQL keeps a deleted
//! token as a tombstone row with its time; the CQL store's write timestamps and tombstones do the
//! same), so a dual write, an outbox replay and a backfill can land in any order and both stores
//! agree. On equal times a deletion wins, in both.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::UserId;
use crate::store::StoreError;

/// Where a token delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Ios,
    Android,
    Web,
}

impl Platform {
    pub const ALL: [Platform; 3] = [Platform::Ios, Platform::Android, Platform::Web];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Android => "android",
            Platform::Web => "web",
        }
    }

    pub fn parse(s: &str) -> Option<Platform> {
        Platform::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// A platform as a store holds it for `user`: an unknown one means the data and the code
    /// disagree (an internal error, not the caller's).
    pub fn stored(user: UserId, text: &str) -> Result<Platform, StoreError> {
        Platform::parse(text).ok_or_else(|| {
            StoreError::Internal(format!(
                "device token of user {user} has an unknown platform {text:?}"
            ))
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A registered device.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceToken {
    pub token: String,
    pub platform: Platform,
    /// When it was (last) registered.
    pub registered_at: DateTime<Utc>,
}

/// Devices one user may have registered at once; one more is refused until one is deleted.
pub const MAX_DEVICES_PER_USER: usize = 20;

/// Longest token accepted, in bytes (APNs tokens are 64 hex characters, FCM's about 160).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Why a token string is refused, or `None` for a good one: 1 to [`MAX_TOKEN_BYTES`] visible
/// ASCII characters (no spaces or control characters).
pub fn token_problem(token: &str) -> Option<String> {
    if token.is_empty() {
        return Some("token is empty".into());
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Some(format!(
            "token is {} bytes; at most {MAX_TOKEN_BYTES}",
            token.len()
        ));
    }
    if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic()) {
        return Some(format!(
            "token holds {:?}: only visible ASCII characters, no spaces",
            c
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_round_trip_and_unknown_ones_are_refused() {
        for p in Platform::ALL {
            assert_eq!(Platform::parse(p.as_str()), Some(p));
        }
        assert_eq!(Platform::parse("IOS"), None);
        assert_eq!(Platform::parse("blackberry"), None);
    }

    #[test]
    fn tokens_are_visible_ascii_of_bounded_length() {
        assert_eq!(token_problem("a1b2:APA91b-_"), None);
        assert!(token_problem("").is_some());
        assert!(token_problem("has space").is_some());
        assert!(token_problem("nul\0").is_some());
        assert!(token_problem("é").is_some());
        assert_eq!(token_problem(&"x".repeat(MAX_TOKEN_BYTES)), None);
        assert!(token_problem(&"x".repeat(MAX_TOKEN_BYTES + 1)).is_some());
    }
}
