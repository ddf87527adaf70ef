//! What the operator tells the Jobs it runs (backfill, validation, rollback): environment
//! variable names and the migration id that keys their checkpoints.

use std::fmt;

/// Environment variables the operator sets on its Jobs' pods.
pub mod env {
    /// [`MigrationId`](super::MigrationId) of the attempt.
    pub const MIGRATION_ID: &str = "FICUS_MIGRATION_ID";
    /// RFC 3339: when the attempt turned dual writes on (backfill, validation).
    pub const DUAL_WRITE_STARTED_AT: &str = "FICUS_DUAL_WRITE_STARTED_AT";
    /// RFC 3339: when the attempt entered CutOver (rollback).
    pub const ROLLBACK_FROM: &str = "FICUS_ROLLBACK_FROM";
    /// Pods of the Indexed backfill Job (each copies shard `JOB_COMPLETION_INDEX`).
    pub const SHARD_COUNT: &str = "FICUS_SHARD_COUNT";
    /// `host:port` where backfill and validation pods serve `/metrics` while they run
    /// (`0.0.0.0:` [`METRICS_PORT`](super::METRICS_PORT)).
    pub const METRICS_ADDR: &str = "FICUS_METRICS_ADDR";
}

/// The port backfill and validation pods serve `/metrics` on (named `metrics`, announced by the
/// `prometheus.io/scrape` and `prometheus.io/port` pod annotations).
pub const METRICS_PORT: u16 = 9464;

/// One attempt of one Migration object: `<namespace>/<name>/<uid>/<attempt>`. The uid makes a
/// Migration re-created under the same name a different migration, so it never resumes the
/// checkpoints of the old one. `<namespace>/<name>/<attempt>` (no uid) is accepted for runs
/// started by hand.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MigrationId {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub attempt: u32,
}

/// A text that is not a migration id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not <namespace>/<name>/<uid>/<attempt> or <namespace>/<name>/<attempt> (e.g. chat/chat-to-scylla/1)"
)]
pub struct MigrationIdError(pub String);

impl MigrationId {
    pub fn parse(text: &str) -> Result<MigrationId, MigrationIdError> {
        let bad = || MigrationIdError(text.to_owned());
        let parts: Vec<&str> = text.trim().split('/').collect();
        let (namespace, name, uid, attempt) = match parts.as_slice() {
            [ns, name, attempt] => (*ns, *name, None, *attempt),
            [ns, name, uid, attempt] if !uid.is_empty() => (*ns, *name, Some(*uid), *attempt),
            _ => return Err(bad()),
        };
        if namespace.is_empty() || name.is_empty() {
            return Err(bad());
        }
        let attempt = if attempt.bytes().all(|b| b.is_ascii_digit()) {
            attempt.parse().map_err(|_| bad())?
        } else {
            return Err(bad());
        };
        Ok(MigrationId {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.map(str::to_owned),
            attempt,
        })
    }
}

impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.uid {
            Some(uid) => write!(f, "{}/{}/{uid}/{}", self.namespace, self.name, self.attempt),
            None => write!(f, "{}/{}/{}", self.namespace, self.name, self.attempt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_with_and_without_a_uid() {
        let with = MigrationId {
            namespace: "chat".into(),
            name: "chat-to-scylla".into(),
            uid: Some("df4c2e95-8b79-4091-8843-09f0453937e3".into()),
            attempt: 2,
        };
        let text = with.to_string();
        assert_eq!(
            text,
            "chat/chat-to-scylla/df4c2e95-8b79-4091-8843-09f0453937e3/2"
        );
        assert_eq!(MigrationId::parse(&text), Ok(with));
        let without = MigrationId::parse("chat/chat-to-scylla/3").expect("by hand");
        assert_eq!((without.uid, without.attempt), (None, 3));
        for bad in [
            "",
            "chat/x",
            "chat/x/y",
            "/x/1",
            "chat//1",
            "a/b//1",
            "a/b/c/d/1",
            "a/b/+1",
        ] {
            assert_eq!(
                MigrationId::parse(bad),
                Err(MigrationIdError(bad.into())),
                "{bad:?}"
            );
        }
    }
}
