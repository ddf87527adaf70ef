//! A real NATS server (the Debian `nats-server` package) on a free loopback port: core NATS
//! plus JetStream, no authentication, no TLS.

use crate::{
    HarnessError,
    process::locate_binary_or,
    server::{Instance, Server, command, impl_test_server},
};

/// Where the Debian package installs the server (not on a non-root user's `PATH`).
const DEBIAN_PATH: &str = "/usr/sbin/nats-server";

/// A running NATS server; dropping it kills the process and removes its directory (with
/// `nats.log`). A restart keeps the JetStream store; core NATS keeps no state across one.
#[derive(Debug)]
pub struct Nats(Instance);

impl Nats {
    /// Starts `nats-server` with JetStream and blocks until it greets a new connection with `INFO` (~20ms).
    ///
    /// The binary is `$FICUS_NATS`, else `nats-server` on `PATH`, else `/usr/sbin/nats-server`;
    /// without one this is [`HarnessError::Missing`]. Callable from inside a tokio runtime.
    pub fn start() -> Result<Self, HarnessError> {
        let locate = || locate_binary_or("nats-server", "FICUS_NATS", "nats-server", DEBIAN_PATH);
        Instance::start(locate, |bin, dir, addr| {
            // JetStream on, its store in the temp dir: chat-service keeps its room events there.
            let store = dir.join("jetstream").display().to_string();
            let port = addr.port().to_string();
            let args = ["-a", "127.0.0.1", "-p", &port, "-js", "-sd", &store].map(String::from);
            let log = dir.join("nats.log");
            Server::builder("nats-server", log, command(bin, args.into()))
                .ready_on_line(format!("INFO on {addr}"), addr, b"", |l| {
                    l.starts_with("INFO {")
                })
                .start()
        })
        .map(Self)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.0.addr)
    }
}

impl_test_server!(Nats, 0);
