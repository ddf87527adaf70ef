//! moto's server (PyPI `moto[server]`): the AWS SSM and ECS APIs on a loopback port.
//!
//! `scripts/install-deps.sh` installs it into a virtualenv under `~/.cache/ficus/moto-<ver>`;
//! `$FICUS_MOTO` points at another `moto_server`. Each [`Moto`] is a fresh, empty account.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use tempfile::TempDir;

use crate::{
    HarnessError,
    dirs::{cache_dir, temp_dir},
    ports::free_addr,
    process::executable,
    server::{Server, impl_test_server},
};

/// A Python server: its first start imports a lot.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_VERSION: &str = "5.2.5";

/// A running moto server; dropping it kills the process and removes its directory.
#[derive(Debug)]
pub struct Moto {
    // Fields drop in order: the process is killed before the temp dir goes.
    server: Server,
    addr: SocketAddr,
    dir: TempDir,
}

impl Moto {
    /// A moto server with IAM not enforced.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with_env(&[])
    }

    /// With extra environment, e.g. `INITIAL_NO_AUTH_ACTION_COUNT` to enforce IAM policies
    /// after that many unauthenticated calls.
    pub fn start_with_env(env: &[(&str, &str)]) -> Result<Self, HarnessError> {
        crate::init();
        let bin = binary()?;
        let dir = temp_dir()?;
        let addr = free_addr()?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let command = move || {
            let mut cmd = Command::new(&bin);
            cmd.args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
                .envs(env.iter().map(|(k, v)| (k, v)));
            cmd
        };
        let server = Server::builder("moto", dir.path().join("moto.log"), command)
            .ready_on_http(addr, "/moto-api/")
            .timeout(READY_TIMEOUT)
            .start()?;
        Ok(Self { server, addr, dir })
    }

    /// `http://127.0.0.1:<port>`: the endpoint URL for every AWS SDK client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Temp dir with `moto.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (SIGKILL, like a crash): AWS calls fail until
    /// [`restart`](Self::restart). moto keeps its state in memory, so that is lost.
    pub fn stop(&self) {
        self.server.stop();
    }

    /// Stops the server if running and starts it again on the same port, as a fresh, empty
    /// account; blocks until it answers.
    pub fn restart(&self) -> Result<(), HarnessError> {
        self.server.restart()
    }

    /// The moto process: pid and log.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The Python of moto's virtualenv (it has boto3), for setup the Rust SDKs here lack (IAM).
    pub fn python() -> Result<PathBuf, HarnessError> {
        let python = binary()?.with_file_name("python");
        if executable(&python) {
            Ok(python)
        } else {
            Err(missing(format!("{} not found", python.display())))
        }
    }
}

impl_test_server!(Moto);

fn binary() -> Result<PathBuf, HarnessError> {
    if let Some(bin) = std::env::var_os("FICUS_MOTO") {
        return Ok(bin.into());
    }
    let version = std::env::var("FICUS_MOTO_VERSION").unwrap_or_else(|_| DEFAULT_VERSION.into());
    let bin = cache_dir()
        .join(format!("moto-{version}"))
        .join("bin/moto_server");
    if executable(&bin) {
        Ok(bin)
    } else {
        Err(missing(format!("{} not found", bin.display())))
    }
}

fn missing(reason: String) -> HarnessError {
    HarnessError::Missing {
        component: "moto".into(),
        reason: format!("{reason}: run scripts/install-deps.sh"),
    }
}
