//! A real NATS server (the Debian `nats-server` package) on a free loopback port: core NATS
//! only (no JetStream), no authentication, no TLS.

use std::{
    env,
    io::{self, BufRead, BufReader, Read},
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
const INFO_TIMEOUT: Duration = Duration::from_secs(5);
/// Where the Debian package installs the server (not on a non-root user's `PATH`).
const DEBIAN_PATH: &str = "/usr/sbin/nats-server";

/// A running NATS server; dropping it kills the process and removes its directory.
#[derive(Debug)]
pub struct Nats {
    // Fields drop in order: the server is killed before the temp dir goes.
    server: Server,
    addr: SocketAddr,
    dir: TempDir,
}

impl Nats {
    /// Starts `nats-server` with JetStream and blocks until it greets a new connection with `INFO` (~20ms).
    ///
    /// The binary is `$FICUS_NATS`, else `nats-server` on `PATH`, else `/usr/sbin/nats-server`;
    /// without one this is [`HarnessError::Missing`]. Callable from inside a tokio runtime.
    pub fn start() -> Result<Self, HarnessError> {
        crate::init();
        let bin = locate()?;
        let dir = temp_dir()?;
        let addr = free_addr()?;
        // JetStream on, its store in the temp dir: chat-service keeps its room events there.
        let store = dir.path().join("jetstream").display().to_string();
        let args = [
            "-a",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-js",
            "-sd",
            &store,
        ]
        .map(String::from);
        let command = command(bin, args.into());
        let server = Server::builder("nats-server", dir.path().join("nats.log"), command)
            .ready_when(format!("INFO on {addr}"), move || match info_line(addr) {
                Ok(line) if line.starts_with("INFO {") => Ok(()),
                Ok(line) => Err(format!("unexpected greeting {line:?}")),
                Err(e) => Err(e.to_string()),
            })
            .start()?;
        Ok(Self { server, addr, dir })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Temp dir with `nats.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (SIGKILL, like a crash): connections drop, new ones are refused. Its
    /// port stays for [`restart`](Self::restart). Core NATS keeps no state across this.
    pub fn stop(&self) {
        self.server.stop();
    }

    /// Stops the server if running and starts it again on the same port; blocks until ready.
    pub fn restart(&self) -> Result<(), HarnessError> {
        self.server.restart()
    }

    /// The server process: pid and log.
    pub fn server(&self) -> &Server {
        &self.server
    }
}

impl_test_server!(Nats);

/// `$FICUS_NATS`, else `nats-server` on `PATH`, else the Debian package's path.
fn locate() -> Result<PathBuf, HarnessError> {
    const VAR: &str = "FICUS_NATS";
    match locate_binary("nats-server", VAR, "nats-server") {
        Err(e) if env::var_os(VAR).is_none() && executable(Path::new(DEBIAN_PATH)) => {
            tracing::debug!("{e}; using {DEBIAN_PATH}");
            Ok(DEBIAN_PATH.into())
        }
        found => found,
    }
}

/// The first line the server sends on a new connection.
fn info_line(addr: SocketAddr) -> io::Result<String> {
    let stream = TcpStream::connect_timeout(&addr, INFO_TIMEOUT)?;
    stream.set_read_timeout(Some(INFO_TIMEOUT))?;
    let mut line = String::new();
    // INFO is well under 4 KiB; the cap only guards against a runaway peer.
    BufReader::new(stream.take(64 << 10)).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}
