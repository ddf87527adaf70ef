//! The operator's own writes against the cache it reads from.
//!
//! One reconcile can write a Migration twice: its status, then (after the flags changed) the
//! removal of the command annotations it carried out. The first write's watch event queues a
//! re-run of the reconcile; that re-run reads the controller's cache, which may not have
//! received the second write's event yet. Deciding on that copy would be deciding on an object
//! the API server has already moved past: its status write is refused as stale (409), the work
//! is thrown away and done again. Remembering the resourceVersion each write returned lets
//! such a reconcile wait for the cache instead (the second write's event queues the next run).
//!
//! resourceVersions are compared as numbers: the API server documents them as opaque, but
//! every one it serves from etcd is etcd's revision, which only grows. One that does not parse
//! as a number is never taken for behind.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::ResourceExt;

use crate::crd::Migration;

/// Migrations remembered at most; past it the record starts over (a reconcile may then decide
/// on a stale copy once, which the API server refuses as before).
const MAX_REMEMBERED: usize = 100_000;

/// The resourceVersion of the operator's last write of each Migration, by uid.
#[derive(Debug, Default)]
pub struct OwnWrites {
    last: Mutex<HashMap<String, u64>>,
}

fn version(mig: &Migration) -> Option<(String, u64)> {
    let uid = mig.uid()?;
    let version = mig.resource_version()?.parse().ok()?;
    Some((uid, version))
}

impl OwnWrites {
    /// Remembers what a write returned.
    pub fn record(&self, written: &Migration) {
        let Some((uid, version)) = version(written) else {
            return;
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.len() >= MAX_REMEMBERED && !last.contains_key(&uid) {
            last.clear();
        }
        let entry = last.entry(uid).or_insert(version);
        *entry = (*entry).max(version);
    }

    /// Whether `read` is older than the operator's own last write of it: the cache has not
    /// caught up yet.
    pub fn behind(&self, read: &Migration) -> bool {
        let Some((uid, version)) = version(read) else {
            return false;
        };
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.get(&uid).is_some_and(|written| *written > version)
    }

    /// Forgets a Migration that is gone.
    pub fn forget(&self, gone: &Migration) {
        if let Some(uid) = gone.uid() {
            self.last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mig(uid: &str, version: &str) -> Migration {
        let mut m: Migration = serde_json::from_value(serde_json::json!({
            "apiVersion": "ficus.dev/v1alpha1",
            "kind": "Migration",
            "metadata": { "name": "m", "namespace": "ns", "uid": uid, "resourceVersion": version },
            "spec": {
                "service": "chat", "flags": { "configMap": { "name": "flags" } },
                "steps": [50, 100],
            }
        }))
        .expect("a Migration");
        m.status = None;
        m
    }

    #[test]
    fn a_copy_older_than_the_last_write_is_behind_and_the_written_one_is_not() {
        let own = OwnWrites::default();
        assert!(!own.behind(&mig("a", "10")), "nothing written yet");
        own.record(&mig("a", "12"));
        assert!(own.behind(&mig("a", "11")));
        assert!(!own.behind(&mig("a", "12")));
        assert!(!own.behind(&mig("a", "13")), "someone else wrote after us");
        assert!(!own.behind(&mig("b", "1")), "another Migration");
        // An earlier write's answer arriving late does not move the mark back.
        own.record(&mig("a", "11"));
        assert!(own.behind(&mig("a", "11")));
        own.forget(&mig("a", "12"));
        assert!(!own.behind(&mig("a", "11")));
    }

    #[test]
    fn a_resource_version_that_is_not_a_number_is_never_behind() {
        let own = OwnWrites::default();
        own.record(&mig("a", "12"));
        assert!(!own.behind(&mig("a", "opaque")));
    }
}
