//! moto's server (PyPI `moto[server]`): the AWS SSM and ECS APIs on a loopback port.
//!
//! `scripts/install-deps.sh` installs it into a virtualenv under `~/.cache/ficus/moto-<ver>`;
//! `$FICUS_MOTO` points at another `moto_server`. Each [`Moto`] is a fresh, empty account.

use std::{path::PathBuf, process::Command, time::Duration};

use crate::{
    HarnessError,
    dirs::cache_dir,
    process::executable,
    server::{Instance, Server, impl_test_server},
};

/// A Python server: its first start imports a lot.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_VERSION: &str = "5.2.5";

/// The region the tests' SDK clients and [`use_test_credentials`] name.
pub const REGION: &str = "us-east-1";

/// Credentials the AWS way (the default chain: environment variables) that moto accepts, for
/// this test binary and the processes it starts, region [`REGION`]. Endpoint variables are
/// removed so a developer's environment cannot send the tests elsewhere. Every test of a binary
/// that talks to moto calls this first; only the first call changes the environment.
pub fn use_test_credentials() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: runs once, before the binary's tests create any thread that reads the
        // environment (every such test calls this first, and Once blocks the others until done).
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
            std::env::set_var("AWS_REGION", REGION);
            std::env::remove_var("AWS_ENDPOINT_URL");
            std::env::remove_var("AWS_ENDPOINT_URL_SSM");
        }
    });
}

/// A running moto server; dropping it kills the process and removes its directory (with
/// `moto.log`). moto keeps its state in memory: a restart comes up as a fresh, empty account.
#[derive(Debug)]
pub struct Moto(Instance);

impl Moto {
    /// A moto server with IAM not enforced.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with_env(&[])
    }

    /// With extra environment, e.g. `INITIAL_NO_AUTH_ACTION_COUNT` to enforce IAM policies
    /// after that many unauthenticated calls.
    pub fn start_with_env(env: &[(&str, &str)]) -> Result<Self, HarnessError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Instance::start(binary, |bin, dir, addr| {
            let command = move || {
                let mut cmd = Command::new(&bin);
                cmd.args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
                    .envs(env.iter().map(|(k, v)| (k, v)));
                cmd
            };
            Server::builder("moto", dir.join("moto.log"), command)
                .ready_on_http(addr, "/moto-api/")
                .timeout(READY_TIMEOUT)
                .start()
        })
        .map(Self)
    }

    /// `http://127.0.0.1:<port>`: the endpoint URL for every AWS SDK client.
    pub fn url(&self) -> String {
        format!("http://{}", self.0.addr)
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

impl_test_server!(Moto, 0);

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
