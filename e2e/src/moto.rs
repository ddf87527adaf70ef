//! moto's server (PyPI `moto[server]`): the AWS SSM and ECS APIs on a loopback port.
//!
//! `scripts/install-deps.sh` installs it into a virtualenv under `~/.cache/ficus/moto-<ver>`;
//! `$FICUS_MOTO` points at another `moto_server`. Each [`Moto`] is a fresh, empty account.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::HarnessError;
use crate::control_plane::{cache_dir, free_ports, temp_dir};
use crate::process::{Proc, executable};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_VERSION: &str = "5.2.5";

#[derive(Debug)]
pub struct Moto {
    proc: Proc,
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
        let begin = Instant::now();
        let dir = temp_dir()?;
        let [port] = free_ports()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new(&bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn_command("moto", cmd, dir.path().join("moto.log"))?;
        let moto = Self { proc, addr, dir };
        moto.wait_ready()?;
        tracing::info!(url = %moto.url(), elapsed = ?begin.elapsed(), "moto ready");
        Ok(moto)
    }

    fn wait_ready(&self) -> Result<(), HarnessError> {
        let poll = Duration::from_millis(50);
        self.proc
            .wait_ready("200 from /moto-api/", READY_TIMEOUT, poll, || {
                match crate::http::get_blocking(self.addr, "/moto-api/") {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!("HTTP {}", r.status)),
                    Err(e) => Err(e.to_string()),
                }
            })
    }

    /// `http://127.0.0.1:<port>`: the endpoint URL for every AWS SDK client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
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

impl Drop for Moto {
    fn drop(&mut self) {
        self.proc.kill();
    }
}

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
