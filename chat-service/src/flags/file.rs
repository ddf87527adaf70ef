//! File source: `key=value` lines (format in the module doc of `flags`), followed with `notify`.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, watch};
use tokio::time::{MissedTickBehavior, interval_at, sleep};
use tracing::{debug, warn};

use super::apply::{Applier, Outcome};
use super::{Document, FlagError, Flags};

/// Re-read this often even without events (a missed or overflowed inotify queue, a network
/// file system without events).
const FALLBACK_INTERVAL: Duration = Duration::from_secs(5);
/// Editors write in steps (truncate, write, rename): wait this long after an event before
/// reading, so one save is usually one read.
const SETTLE: Duration = Duration::from_millis(50);

/// What one read of the file found; compared with the previous read, so unchanged content (the
/// timer, events for other files in the directory) costs no parsing and no repeated warnings.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Snapshot {
    Missing,
    Text(String),
    Unreadable(String),
}

pub(super) async fn start(
    path: PathBuf,
    gauge: Gauge,
) -> Result<watch::Receiver<Flags>, FlagError> {
    let (mut applier, rx) =
        Applier::new(format!("file {}", path.display()), Flags::default(), gauge);

    // The first read decides start: unreadable or invalid is an error, missing is the default.
    let first = match read(&path) {
        Ok(None) => Snapshot::Missing,
        Ok(Some(text)) => {
            let entries = parse_text(&text).map_err(|e| rejected(&applier, e))?;
            if let Outcome::Rejected(e) = applier.offer(Document::Entries(entries)) {
                return Err(rejected(&applier, e));
            }
            Snapshot::Text(text)
        }
        Err(source) => return Err(FlagError::Read { path, source }),
    };

    // Watch the directory, not the file: a rename-replace (editors, `kubectl cp`, kubelet's
    // `..data` symlink swap) would leave a watch on the old inode.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let wake = Arc::new(Notify::new());
    let notify_wake = Arc::clone(&wake);
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) if touches_content(&event.kind) => notify_wake.notify_one(),
            Ok(_) => {}
            Err(err) => {
                // Events may have been lost: read now rather than wait for the timer.
                warn!(%err, "flag file watch error");
                notify_wake.notify_one();
            }
        })
        .map_err(|source| FlagError::Watch {
            dir: dir.clone(),
            source,
        })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| FlagError::Watch {
            dir: dir.clone(),
            source,
        })?;

    tokio::spawn(follow(applier, path, watcher, wake, first));
    Ok(rx)
}

async fn follow(
    mut applier: Applier,
    path: PathBuf,
    watcher: notify::RecommendedWatcher,
    wake: Arc<Notify>,
    mut last: Snapshot,
) {
    let mut timer = interval_at(
        tokio::time::Instant::now() + FALLBACK_INTERVAL,
        FALLBACK_INTERVAL,
    );
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = applier.closed() => break,
            _ = wake.notified() => sleep(SETTLE).await,
            _ = timer.tick() => {}
        }
        let snapshot = match read(&path) {
            Ok(None) => Snapshot::Missing,
            Ok(Some(text)) => Snapshot::Text(text),
            Err(err) => Snapshot::Unreadable(err.to_string()),
        };
        if snapshot == last {
            continue;
        }
        last = snapshot.clone();
        match snapshot {
            Snapshot::Missing => {
                applier.offer(Document::Missing);
            }
            Snapshot::Unreadable(err) => {
                warn!(origin = %applier.origin(), kept_generation = applier.current().generation, %err, "flag file unreadable, keeping the last good flags");
            }
            Snapshot::Text(text) => match parse_text(&text) {
                Ok(entries) => {
                    applier.offer(Document::Entries(entries));
                }
                Err(err) => {
                    warn!(origin = %applier.origin(), kept_generation = applier.current().generation, "rejected flag document, keeping the last good flags: {err}");
                }
            },
        }
    }
    debug!(path = %path.display(), "no flag readers left; stopping the flag file watcher");
    drop(watcher);
}

/// Our own reads raise open/close-nowrite events: reacting to them would re-read forever.
fn touches_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// `Ok(None)` when the file does not exist. A blocking read: the file is a few hundred bytes.
fn read(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn rejected(applier: &Applier, err: FlagError) -> FlagError {
    FlagError::Rejected {
        origin: applier.origin().to_owned(),
        source: Box::new(err),
    }
}

/// `key=value` lines; blank lines and `#` comments skipped, whitespace trimmed.
pub(super) fn parse_text(text: &str) -> Result<BTreeMap<String, String>, FlagError> {
    let mut entries = BTreeMap::new();
    let mut lines_of = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(FlagError::Syntax {
                line: i + 1,
                content: raw.to_owned(),
            });
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(FlagError::Syntax {
                line: i + 1,
                content: raw.to_owned(),
            });
        }
        match entries.entry(key.to_owned()) {
            // Two values for one key: which one the operator meant is unknowable.
            Entry::Occupied(_) => {
                let first = lines_of.get(key).copied().unwrap_or(0);
                return Err(FlagError::DuplicateKey {
                    key: key.to_owned(),
                    first,
                    second: i + 1,
                });
            }
            Entry::Vacant(slot) => {
                slot.insert(value.trim().to_owned());
                lines_of.insert(key.to_owned(), i + 1);
            }
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_lines() {
        let text = "# comment\n\n generation = 4 \nwrite_primary=new\ndual_write=sync\nshadow_read_percent=5\nread_split_percent=0\nother.key=a=b\n";
        let entries = parse_text(text).expect("valid");
        assert_eq!(entries["generation"], "4");
        assert_eq!(entries["other.key"], "a=b");
        let flags = Flags::parse(|k| entries.get(k).cloned()).expect("valid flags");
        assert_eq!(flags.generation, 4);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = parse_text("generation=1\nwrite_primary new\n").expect_err("no =");
        assert!(matches!(err, FlagError::Syntax { line: 2, .. }), "{err}");
        let err = parse_text("=x\n").expect_err("empty key");
        assert!(matches!(err, FlagError::Syntax { line: 1, .. }), "{err}");
        let err = parse_text("generation=1\n\ngeneration=2\n").expect_err("duplicate");
        assert!(
            matches!(
                err,
                FlagError::DuplicateKey {
                    first: 1,
                    second: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "flag document sets `generation` twice (lines 1 and 3)"
        );
    }
}
