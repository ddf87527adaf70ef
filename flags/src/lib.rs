//! The flag document: the contract between the Ficus operator, which writes it, and the
//! services that follow it (chat-service and any other service being migrated).
//!
//! A document is six keys with string values, the same in every store:
//!
//! | key | values | meaning for a service |
//! |---|---|---|
//! | `generation` | integer ≥ 0 | bumped by the operator on every change; a service reports the one it applied |
//! | `write_primary` | `legacy` \| `new` | the store that must accept a write for it to succeed |
//! | `dual_write` | `off` \| `sync` \| `async` | whether (and how) writes also go to the other store |
//! | `shadow_read_percent` | 0..=100 | share of reads also served by the other store and compared |
//! | `read_split_percent` | 0..=100 | share of users (by [`bucket`]) whose reads the new store serves |
//! | `shadow_compare_from` | `none` \| `all` \| RFC 3339 instant | which data shadow reads compare ([`ShadowCompare`]); may be absent (`all`) |
//!
//! Rules both sides keep:
//! * The operator writes whole documents and only ever raises `generation`; a service ignores
//!   a document whose generation is lower than the one in force.
//! * A service reads strictly ([`Flags::parse`]): a document with a missing or invalid key is
//!   rejected whole and the flags in force stay. The operator reads the same document as a
//!   [`FlagRead`], so a corrupt document is rewritten with a generation above it.
//! * In AWS SSM Parameter Store the keys are parameters under a prefix ([`ssm`]), `generation`
//!   written last so a reader that sees a new generation sees its values.

mod cohort;
mod document;
pub mod job;
mod read;
pub mod ssm;
#[cfg(feature = "aws")]
pub mod ssm_client;

pub use cohort::bucket;
pub use document::{DualWrite, FlagError, FlagValues, Flags, Percent, ShadowCompare, Side, keys};
pub use job::{MigrationId, MigrationIdError};
pub use read::FlagRead;
