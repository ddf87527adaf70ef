//! End-to-end tests of the Ficus operator: the operator running in-process against the
//! control plane of [`ficus_testkit`] ([`operator`]), and the evidence its gates and alerts read
//! ([`evidence`]). The process harness itself (servers, skip-or-fail) is `ficus_testkit`; tests
//! import it from there.
//!
//! ```ignore
//! #[tokio::test]
//! async fn reconciles() -> anyhow::Result<()> {
//!     let Some((_cp, client, ns)) = ficus_e2e::operator::test_namespace("reconciles").await?
//!     else {
//!         return Ok(());
//!     };
//!     let _operator = ficus_e2e::operator::Operator::start(client, &ns, "op-1", None);
//!     // create a Migration in `ns` and wait_for(...) its phase
//!     Ok(())
//! }
//! ```

pub mod evidence;
pub mod live;
pub mod operator;
