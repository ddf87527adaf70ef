//! The one place that decides whether a document read from a source replaces the flags in force.

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{Document, FlagError, Flags, keys};

/// Owns the sending side of the flags channel and the generation gauge.
pub(super) struct Applier {
    origin: String,
    tx: watch::Sender<Flags>,
    gauge: Gauge,
    /// Whether any document has been applied (the initial value may be `Flags::default()`).
    had_document: bool,
    /// The last document rejected, so a source that re-delivers it (relist, timer) logs once.
    last_rejected: Option<Document>,
}

/// What [`Applier::offer`] did, for callers that need to know (the initial load).
#[derive(Debug)]
pub(super) enum Outcome {
    Applied,
    Unchanged,
    Kept,
    Rejected(FlagError),
}

impl Applier {
    pub(super) fn new(
        origin: String,
        initial: Flags,
        gauge: Gauge,
    ) -> (Applier, watch::Receiver<Flags>) {
        let (tx, rx) = watch::channel(initial);
        gauge.set(initial.generation);
        (
            Applier {
                origin,
                tx,
                gauge,
                had_document: false,
                last_rejected: None,
            },
            rx,
        )
    }

    pub(super) fn origin(&self) -> &str {
        &self.origin
    }

    pub(super) fn current(&self) -> Flags {
        *self.tx.borrow()
    }

    /// Resolves when every receiver is gone: the background task can stop.
    pub(super) async fn closed(&self) {
        self.tx.closed().await
    }

    /// Considers one reading of the source.
    pub(super) fn offer(&mut self, doc: Document) -> Outcome {
        let current = self.current();
        // A document with none of the flag keys (an empty ConfigMap someone pre-created, a file
        // caught mid-truncate) is no document yet, as for the operator.
        let no_keys =
            matches!(&doc, Document::Entries(e) if !keys::ALL.iter().any(|k| e.contains_key(*k)));
        let entries = match &doc {
            _ if no_keys => {
                if self.had_document {
                    warn!(origin = %self.origin, generation = current.generation, "flag document has no flag keys; keeping the last good flags");
                }
                return Outcome::Kept;
            }
            Document::Missing => {
                // Losing the document is not a reason to change behaviour: keep what is known
                // good until the operator writes again.
                if self.had_document {
                    warn!(origin = %self.origin, generation = current.generation, "flag document is gone; keeping the last good flags");
                }
                return Outcome::Kept;
            }
            Document::Entries(entries) => entries,
        };
        let flags = match Flags::parse(|k| entries.get(k).cloned()) {
            Ok(flags) => flags,
            Err(err) => {
                if self.last_rejected.as_ref() == Some(&doc) {
                    debug!(origin = %self.origin, %err, "same invalid flag document again");
                } else {
                    warn!(origin = %self.origin, kept_generation = current.generation, "rejected flag document, keeping the last good flags: {err}");
                    self.last_rejected = Some(doc);
                }
                return Outcome::Rejected(err.into());
            }
        };
        self.accept(flags)
    }

    /// Considers a document that already parsed.
    pub(super) fn accept(&mut self, flags: Flags) -> Outcome {
        let current = self.current();
        if flags.generation < current.generation {
            warn!(
                origin = %self.origin,
                document_generation = flags.generation,
                applied_generation = current.generation,
                "ignoring flag document with a lower generation than the applied one (the operator only increases it)"
            );
            return Outcome::Kept;
        }
        let first = !self.had_document;
        self.had_document = true;
        self.last_rejected = None;
        if flags == current {
            return Outcome::Unchanged;
        }
        if flags.generation == current.generation && !first {
            // The contract says every change bumps the generation; follow the document anyway
            // (it is the newest word), but say so: the gauge cannot tell the two apart.
            warn!(origin = %self.origin, generation = flags.generation, "flag values changed without a generation bump");
        }
        // One value swapped at once: readers see the old document or the new one, never a mix.
        self.tx.send_replace(flags);
        self.gauge.set(flags.generation);
        info!(
            origin = %self.origin,
            generation = flags.generation,
            write_primary = %flags.values.write_primary,
            dual_write = %flags.values.dual_write,
            shadow_read_percent = %flags.values.shadow_read_percent,
            read_split_percent = %flags.values.read_split_percent,
            shadow_compare_from = %flags.values.shadow_compare_from,
            "applied flags"
        );
        Outcome::Applied
    }
}
