//! The process harness of Ficus's tests: real servers on free loopback ports, each in a temp
//! dir of its own, killed with the test binary. An etcd + kube-apiserver control plane
//! ([`ControlPlane`]), Prometheus and Alertmanager fed by a test-controlled [`Exporter`],
//! PostgreSQL ([`Postgres`]), NATS ([`Nats`]), Cassandra ([`Cassandra`]) and moto ([`Moto`]).
//! Every server runs through one lifecycle, [`Server`] (start, stop, restart, logs), and shows
//! the same [`TestServer`] face.
//!
//! It knows nothing of the operator, so the chat service's tests use it without building that.
//!
//! ```ignore
//! #[tokio::test]
//! async fn works() {
//!     let cp = ficus_testkit::control_plane_or_skip!();
//!     let client = cp.client().await.expect("client");
//!     let ns = ficus_testkit::unique_namespace("works");
//!     ficus_testkit::create_namespace(&client, &ns).await.expect("namespace");
//!     let out = cp.kubectl(&["get", "ns", &ns]).expect("kubectl");
//!     assert!(out.success(), "{out}");
//! }
//! ```

pub mod alertmanager;
pub mod cassandra;
pub mod certs;
pub mod control_plane;
mod dirs;
mod error;
pub mod exporter;
pub mod helm;
mod http;
pub mod kubectl;
pub mod moto;
pub mod nats;
pub mod node;
mod ports;
pub mod postgres;
mod process;
pub mod prometheus;
pub mod redis;
pub mod server;
mod shared;
pub mod toxiproxy;

use std::{io::Write, sync::Once};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

pub use alertmanager::Alertmanager;
pub use cassandra::Cassandra;
pub use control_plane::{Binaries, ControlPlane};
pub use dirs::{cache_dir, repo_root, temp_dir};
pub use error::HarnessError;
pub use exporter::Exporter;
pub use kubectl::KubectlOutput;
pub use moto::Moto;
pub use nats::Nats;
pub use ports::{free_addr, free_ports, loopback};
pub use postgres::Postgres;
pub use process::{log_tail, memory_mib};
pub use prometheus::{Prometheus, PrometheusConfig, Sample};
pub use redis::Redis;
pub use server::{Server, ServerBuilder, TestServer};
pub use shared::unique_name;

/// One-time process setup; every entry point calls it, tests may too.
///
/// Installs the aws-lc-rs rustls provider (kube with aws-lc-rs plus other TLS users can leave
/// rustls with two providers and no default, which panics on the first connection) and a
/// tracing subscriber that writes through libtest's capture (`RUST_LOG`, default
/// `info,kube=warn`).
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// A namespace name unique within this test binary and unlikely to clash across runs:
/// `<prefix>-<pid>-<n>`, with the prefix made DNS-label safe.
pub fn unique_namespace(prefix: &str) -> String {
    shared::unique_name(prefix, '-', 63, "ns")
}

/// Creates namespace `name`. Note: without a controller-manager a deleted namespace stays
/// `Terminating` forever, so tests should use fresh names rather than delete and re-create.
pub async fn create_namespace(client: &Client, name: &str) -> Result<Namespace, kube::Error> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
}

/// True when running under CI (`CI=true`), where a missing component fails instead of skipping.
pub fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Used by [`skip_or_fail!`]: reports a skip for a missing component (locally), panics otherwise.
#[doc(hidden)]
#[track_caller]
pub fn skip_or_panic(err: &HarnessError) {
    match err {
        HarnessError::Missing { .. } if !on_ci() => {
            // Straight to stderr, past libtest's output capture, so the skip is visible.
            let _ = writeln!(std::io::stderr(), "SKIP: {err}");
        }
        HarnessError::Missing { .. } => panic!("{err} (CI=true: a missing component is a failure)"),
        _ => panic!("{err}"),
    }
}

/// What a skipped test returns: `()` or `Ok(())`, so the macros work in both kinds of test.
pub trait Skipped {
    fn skipped() -> Self;
}

impl Skipped for () {
    fn skipped() {}
}

impl<T> Skipped for Option<T> {
    fn skipped() -> Self {
        None
    }
}

impl<E> Skipped for Result<(), E> {
    fn skipped() -> Self {
        Ok(())
    }
}

/// Unwraps a `Result<T, HarnessError>`; on a missing component prints
/// `SKIP: <component> not available: <reason>` and returns from the test (panics when
/// `CI=true`); panics on any other error.
#[macro_export]
macro_rules! skip_or_fail {
    ($result:expr) => {
        match $result {
            ::core::result::Result::Ok(value) => value,
            ::core::result::Result::Err(err) => {
                $crate::skip_or_panic(&err);
                return $crate::Skipped::skipped();
            }
        }
    };
}

/// The shared [`ControlPlane`] of this test binary, or skip the test (see [`skip_or_fail!`]).
#[macro_export]
macro_rules! control_plane_or_skip {
    () => {
        $crate::skip_or_fail!($crate::ControlPlane::shared())
    };
}

/// The shared [`Postgres`] of this test binary, or skip the test (see [`skip_or_fail!`]).
#[macro_export]
macro_rules! postgres_or_skip {
    () => {
        $crate::skip_or_fail!($crate::Postgres::shared())
    };
}
