//! A real Redis server (the Debian `redis-server` package) on a free loopback port: no
//! persistence (nothing written to disk), no authentication, no TLS.

use std::{
    env,
    io::{self, BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use tempfile::TempDir;

use crate::{
    HarnessError,
    dirs::temp_dir,
    ports::free_addr,
    process::{executable, locate_binary},
    server::{Server, command, impl_test_server},
};

/// Per-attempt connect/read timeout of the readiness check; everything is on loopback.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Where the Debian package installs the server.
const DEBIAN_PATH: &str = "/usr/bin/redis-server";

/// A running Redis server; dropping it kills the process and removes its directory.
#[derive(Debug)]
pub struct Redis {
    // Fields drop in order: the server is killed before the temp dir goes.
    server: Server,
    addr: SocketAddr,
    dir: TempDir,
}

impl Redis {
    /// Starts `redis-server` and blocks until it answers `PING` with `+PONG`.
    ///
    /// The binary is `$FICUS_REDIS`, else `redis-server` on `PATH`, else
    /// `/usr/bin/redis-server`; without one this is [`HarnessError::Missing`]. Callable from
    /// inside a tokio runtime.
    pub fn start() -> Result<Self, HarnessError> {
        crate::init();
        let bin = locate()?;
        let dir = temp_dir()?;
        let addr = free_addr()?;
        let args = [
            "--bind",
            "127.0.0.1",
            "--port",
            &addr.port().to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.path().display().to_string(),
        ]
        .map(String::from);
        let command = command(bin, args.into());
        let server = Server::builder("redis-server", dir.path().join("redis.log"), command)
            .ready_when(format!("PONG on {addr}"), move || match ping(addr) {
                Ok(line) if line == "+PONG" => Ok(()),
                Ok(line) => Err(format!("unexpected answer {line:?}")),
                Err(e) => Err(e.to_string()),
            })
            .start()?;
        Ok(Self { server, addr, dir })
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Temp dir with `redis.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (SIGKILL, like a crash): connections drop, new ones are refused, and
    /// everything it held is gone (no persistence). Its port stays for [`restart`](Self::restart).
    pub fn stop(&self) {
        self.server.stop();
    }

    /// Stops the server if running and starts it again, empty, on the same port; blocks until
    /// ready.
    pub fn restart(&self) -> Result<(), HarnessError> {
        self.server.restart()
    }

    /// The server process: pid and log.
    pub fn server(&self) -> &Server {
        &self.server
    }
}

impl_test_server!(Redis);

/// `$FICUS_REDIS`, else `redis-server` on `PATH`, else the Debian package's path.
fn locate() -> Result<PathBuf, HarnessError> {
    const VAR: &str = "FICUS_REDIS";
    match locate_binary("redis-server", VAR, "redis-server") {
        Err(e) if env::var_os(VAR).is_none() && executable(Path::new(DEBIAN_PATH)) => {
            tracing::debug!("{e}; using {DEBIAN_PATH}");
            Ok(DEBIAN_PATH.into())
        }
        found => found,
    }
}

/// The answer to an inline `PING` (RESP simple string, e.g. `+PONG`).
fn ping(addr: SocketAddr) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, PING_TIMEOUT)?;
    stream.set_read_timeout(Some(PING_TIMEOUT))?;
    stream.write_all(b"PING\r\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}
