//! A real Redis server (the Debian `redis-server` package) on a free loopback port: no
//! persistence (nothing written to disk), no authentication, no TLS.

use crate::{
    HarnessError,
    process::locate_binary_or,
    server::{Instance, Server, command, impl_test_server},
};

/// Where the Debian package installs the server.
const DEBIAN_PATH: &str = "/usr/bin/redis-server";

/// A running Redis server; dropping it kills the process and removes its directory (with
/// `redis.log`). A stop loses everything it held (no persistence): a restart comes up empty.
#[derive(Debug)]
pub struct Redis(Instance);

impl Redis {
    /// Starts `redis-server` and blocks until it answers `PING` with `+PONG`.
    ///
    /// The binary is `$FICUS_REDIS`, else `redis-server` on `PATH`, else
    /// `/usr/bin/redis-server`; without one this is [`HarnessError::Missing`]. Callable from
    /// inside a tokio runtime.
    pub fn start() -> Result<Self, HarnessError> {
        let locate =
            || locate_binary_or("redis-server", "FICUS_REDIS", "redis-server", DEBIAN_PATH);
        Instance::start(locate, |bin, dir, addr| {
            let (port, dir_arg) = (addr.port().to_string(), dir.display().to_string());
            let args = [
                "--bind",
                "127.0.0.1",
                "--port",
                &port,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir_arg,
            ]
            .map(String::from);
            let log = dir.join("redis.log");
            Server::builder("redis-server", log, command(bin, args.into()))
                .ready_on_line(format!("PONG on {addr}"), addr, b"PING\r\n", |l| {
                    l == "+PONG"
                })
                .start()
        })
        .map(Self)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.0.addr)
    }
}

impl_test_server!(Redis, 0);
