//! A real NATS server (the Debian `nats-server` package) on a free loopback port: core NATS
//! only (no JetStream), no authentication, no TLS.

use std::{
    env,
    io::{self, BufRead, BufReader, Read},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::{
    HarnessError,
    control_plane::{free_ports, temp_dir},
    process::{Proc, executable, locate_binary},
};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
/// Per-attempt connect/read timeout of the readiness check; everything is on loopback.
const INFO_TIMEOUT: Duration = Duration::from_secs(5);
/// Where the Debian package installs the server (not on a non-root user's `PATH`).
const DEBIAN_PATH: &str = "/usr/sbin/nats-server";

/// A running NATS server; dropping it kills the process and removes its directory.
#[derive(Debug)]
pub struct Nats {
    // `Drop::drop` kills the process before the fields drop, so the temp dir goes last.
    proc: Mutex<Proc>,
    bin: PathBuf,
    args: Vec<String>,
    addr: SocketAddr,
    dir: TempDir,
}

impl Nats {
    /// Starts `nats-server` and blocks until it greets a new connection with `INFO` (~20ms).
    ///
    /// The binary is `$FICUS_NATS`, else `nats-server` on `PATH`, else `/usr/sbin/nats-server`;
    /// without one this is [`HarnessError::Missing`]. Callable from inside a tokio runtime.
    pub fn start() -> Result<Self, HarnessError> {
        crate::init();
        let bin = locate()?;
        let begin = Instant::now();
        let dir = temp_dir()?;
        let [port] = free_ports()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        let proc = Proc::spawn("nats-server", &bin, &args, dir.path().join("nats.log"))?;
        let nats = Self {
            proc: Mutex::new(proc),
            bin,
            args,
            addr,
            dir,
        };
        // On error `nats` is dropped here, which kills the process.
        wait_ready(&nats.proc(), addr)?;
        tracing::info!(url = %nats.url(), elapsed = ?begin.elapsed(), "nats ready");
        Ok(nats)
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
        self.proc().kill();
    }

    /// Stops the server if running and starts it again on the same port; blocks until ready.
    pub fn restart(&self) -> Result<(), HarnessError> {
        let begin = Instant::now();
        let mut proc = self.proc();
        proc.kill();
        *proc = Proc::spawn(
            "nats-server",
            &self.bin,
            &self.args,
            self.dir.path().join("nats.log"),
        )?;
        wait_ready(&proc, self.addr)?;
        tracing::info!(url = %self.url(), elapsed = ?begin.elapsed(), "nats restarted");
        Ok(())
    }

    fn proc(&self) -> MutexGuard<'_, Proc> {
        self.proc.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

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

/// Blocks until a connection to `addr` is greeted with `INFO {...}`, failing early (with the
/// log tail) if the process exits.
fn wait_ready(proc: &Proc, addr: SocketAddr) -> Result<(), HarnessError> {
    proc.wait_ready(
        &format!("INFO on {addr}"),
        READY_TIMEOUT,
        POLL,
        || match info_line(addr) {
            Ok(line) if line.starts_with("INFO {") => Ok(()),
            Ok(line) => Err(format!("unexpected greeting {line:?}")),
            Err(e) => Err(e.to_string()),
        },
    )
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
