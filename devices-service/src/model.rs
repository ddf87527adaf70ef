//! Device events as the API accepts them and the stores keep them.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest device id, owner id or event type accepted (the legacy columns are `text`, but an
/// unbounded key would let one client bloat every index).
pub const MAX_KEY_LEN: usize = 128;
/// Most events in one batch request.
pub const MAX_BATCH: usize = 1000;

macro_rules! key_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidEvent;
            fn try_from(s: String) -> Result<Self, InvalidEvent> {
                check_key($what, &s)?;
                Ok($name(s))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidEvent;
            fn try_from(s: &str) -> Result<Self, InvalidEvent> {
                $name::try_from(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(k: $name) -> String {
                k.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

key_newtype!(
    /// A device, e.g. `thermostat-42`.
    DeviceId,
    "device_id"
);
key_newtype!(
    /// The device's owner: the user whose stable bucket ([`ficus_flags::bucket`]) puts their
    /// traffic on the old or the new system, as for chat-service's users.
    OwnerId,
    "user_id"
);
key_newtype!(
    /// What was measured or happened, e.g. `temperature`, `door_open`.
    EventType,
    "event_type"
);

/// An event rejected before any store saw it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InvalidEvent {
    #[error(
        "{field} must be 1 to {MAX_KEY_LEN} printable characters without spaces, got {value:?}"
    )]
    Key { field: &'static str, value: String },
    #[error("value must be a finite number, got {0}")]
    Value(f64),
    #[error("a batch holds 1 to {MAX_BATCH} events, got {0}")]
    BatchSize(usize),
}

fn check_key(field: &'static str, s: &str) -> Result<(), InvalidEvent> {
    let ok = !s.is_empty()
        && s.len() <= MAX_KEY_LEN
        && s.chars().all(|c| {
            c.is_ascii_graphic() || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
        });
    if ok {
        Ok(())
    } else {
        Err(InvalidEvent::Key {
            field,
            value: s.chars().take(MAX_KEY_LEN + 8).collect(),
        })
    }
}

/// One event as a device (or its gateway) sends it. `id` makes retries idempotent: a client
/// that resends after a timeout must send the same id; without one the service picks a UUIDv7.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventIn {
    #[serde(default)]
    pub id: Option<Uuid>,
    pub device_id: DeviceId,
    pub user_id: OwnerId,
    pub event_type: EventType,
    pub value: f64,
    pub timestamp: DateTime<Utc>,
}

/// An event as both stores keep it: `received_at` is chosen once by the service, so the two
/// copies are identical and the comparison can leave out events too fresh to have settled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct DeviceEvent {
    pub id: Uuid,
    pub device_id: String,
    pub user_id: String,
    pub event_type: String,
    pub value: f64,
    pub timestamp: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

impl DeviceEvent {
    /// Checks `e` and stamps it.
    pub fn accept(e: EventIn, received_at: DateTime<Utc>) -> Result<DeviceEvent, InvalidEvent> {
        if !e.value.is_finite() {
            return Err(InvalidEvent::Value(e.value));
        }
        Ok(DeviceEvent {
            id: e.id.unwrap_or_else(Uuid::now_v7),
            device_id: e.device_id.into(),
            user_id: e.user_id.into(),
            event_type: e.event_type.into(),
            value: e.value,
            timestamp: e.timestamp,
            received_at,
        })
    }
}

/// Checks a whole batch; the first bad event rejects it (nothing is written).
pub fn accept_batch(
    events: Vec<EventIn>,
    received_at: DateTime<Utc>,
) -> Result<Vec<DeviceEvent>, InvalidEvent> {
    if events.is_empty() || events.len() > MAX_BATCH {
        return Err(InvalidEvent::BatchSize(events.len()));
    }
    events
        .into_iter()
        .map(|e| DeviceEvent::accept(e, received_at))
        .collect()
}

/// One hour (or one bucket of the comparison's width) of a device's events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct HourlyAggregate {
    pub hour: DateTime<Utc>,
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(value: f64) -> EventIn {
        let mut e: EventIn = serde_json::from_value(serde_json::json!({
            "device_id": "thermo-1", "user_id": "u-7", "event_type": "temperature",
            "value": 0.0, "timestamp": "2024-05-01T10:00:00Z",
        }))
        .expect("event");
        // JSON has no NaN: set the value after decoding.
        e.value = value;
        e
    }

    #[test]
    fn keys_are_checked_when_decoded() {
        for bad in ["", "a b", "tab\there", &"x".repeat(129)] {
            assert!(DeviceId::try_from(bad).is_err(), "{bad:?}");
        }
        assert!(DeviceId::try_from("thermo-1").is_ok());
        let err = serde_json::from_value::<EventIn>(serde_json::json!({
            "device_id": "", "user_id": "u", "event_type": "t", "value": 1.0,
            "timestamp": "2024-05-01T10:00:00Z",
        }))
        .expect_err("empty device id");
        assert!(err.to_string().contains("device_id"), "{err}");
    }

    #[test]
    fn batches_are_bounded_and_values_finite() {
        let now = Utc::now();
        assert_eq!(accept_batch(vec![], now), Err(InvalidEvent::BatchSize(0)));
        assert_eq!(
            accept_batch(vec![event(1.0), event(f64::NAN)], now)
                .map(|_| ())
                .unwrap_err()
                .to_string(),
            "value must be a finite number, got NaN"
        );
        let ok = accept_batch(vec![event(1.0), event(2.5)], now).expect("batch");
        assert_eq!(ok.len(), 2);
        assert_ne!(ok[0].id, ok[1].id, "ids are picked per event");
        assert!(ok.iter().all(|e| e.received_at == now));
    }
}
