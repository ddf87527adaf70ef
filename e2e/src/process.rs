//! Child processes that cannot outlive the test binary.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process.
//! libtest runs every test on its own short-lived thread, so children are forked from one
//! dedicated thread that lives until the process ends: then, and only then, the kernel SIGKILLs
//! them — also when the test binary panics, aborts or is killed.

use std::{
    env,
    fs::OpenOptions,
    io,
    os::unix::fs::PermissionsExt,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, MutexGuard, OnceLock, PoisonError, mpsc},
    time::{Duration, Instant},
};

use crate::HarnessError;

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` from the long-lived spawner thread, with `PR_SET_PDEATHSIG = SIGKILL`.
fn spawn_orphan_proof(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        // The sender lives in a static, so this loop (and the thread) never ends.
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        });
        tx
    });

    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect; we would then be reparented.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
    let gone = || io::Error::other("the process-spawner thread is gone");
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner.send((cmd, reply_tx)).map_err(|_| gone())?;
    reply_rx.recv().map_err(|_| gone())?
}

/// A running control-plane component whose stdout and stderr go to a log file.
#[derive(Debug)]
pub(crate) struct Proc {
    name: &'static str,
    child: Mutex<Child>,
    log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(
        name: &'static str,
        bin: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<Self, HarnessError> {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        Self::spawn_command(name, cmd, log)
    }

    /// Like [`spawn`](Self::spawn), for a caller-built `cmd` (e.g. with `uid`/`gid`, a working
    /// directory or its own process group); stdin, stdout and stderr are set here.
    ///
    /// `PR_SET_PDEATHSIG` still holds for a child that switches user: std applies `uid`/`gid`
    /// before the `pre_exec` hook that sets it (a credential change would clear it).
    pub(crate) fn spawn_command(
        name: &'static str,
        mut cmd: Command,
        log: PathBuf,
    ) -> Result<Self, HarnessError> {
        // Append: a restarted process keeps the earlier run's log above its own.
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(HarnessError::io("opening log file", &log))?;
        let err = out
            .try_clone()
            .map_err(HarnessError::io("duplicating log file", &log))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let bin = PathBuf::from(cmd.get_program());
        let args: Vec<_> = cmd.get_args().collect();
        tracing::debug!(%name, bin = %bin.display(), ?args, "spawning");
        let child = spawn_orphan_proof(cmd).map_err(HarnessError::io("spawning", bin))?;
        Ok(Self {
            name,
            child: Mutex::new(child),
            log,
        })
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child().id()
    }

    /// The exit status if the process has already ended.
    pub(crate) fn exited(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    pub(crate) fn kill(&self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Calls `probe` every `poll` until it answers `Ok`. A startup error (with the log tail)
    /// when the process exits first, or when `timeout` passes: then the reason names
    /// `waiting_for` and the probe's last answer.
    pub(crate) fn wait_ready<T>(
        &self,
        waiting_for: &str,
        timeout: Duration,
        poll: Duration,
        probe: impl FnMut() -> Result<T, String>,
    ) -> Result<T, HarnessError> {
        self.poll_ready(waiting_for, timeout, poll, probe)
            .map_err(|not_ready| self.startup_error(not_ready.to_string()))
    }

    /// [`wait_ready`](Self::wait_ready) for callers that treat an early exit differently
    /// from a timeout (e.g. to start the process again).
    pub(crate) fn poll_ready<T>(
        &self,
        waiting_for: &str,
        timeout: Duration,
        poll: Duration,
        mut probe: impl FnMut() -> Result<T, String>,
    ) -> Result<T, NotReady> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Err(NotReady::Exited(status));
            }
            let last = match probe() {
                Ok(ready) => return Ok(ready),
                Err(last) => last,
            };
            if Instant::now() >= deadline {
                return Err(NotReady::Timeout(format!(
                    "no {waiting_for} after {timeout:?}; last answer: {last}"
                )));
            }
            std::thread::sleep(poll);
        }
    }

    /// A startup error carrying the last lines of this process's log.
    pub(crate) fn startup_error(&self, reason: String) -> HarnessError {
        const LINES: usize = 40;
        HarnessError::Startup {
            component: self.name,
            reason,
            log: self.log.clone(),
            tail: log_tail(&self.log, LINES),
        }
    }

    pub(crate) fn log(&self) -> &Path {
        &self.log
    }
}

/// Why [`Proc::poll_ready`] gave up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotReady {
    #[error("exited early with {0}")]
    Exited(ExitStatus),
    #[error("{0}")]
    Timeout(String),
}

/// A memory figure of process `pid` from `/proc/<pid>/status` in MiB, e.g. `VmRSS` (resident
/// now) or `VmHWM` (resident at its peak); 0 when it cannot be read.
pub fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The last `lines` lines of the log file `log` (empty if it cannot be read).
pub(crate) fn log_tail(log: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// True when `path` is a file with an execute bit set.
pub(crate) fn executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds a binary: the path in `$env_var` if that is set, else `name` on `PATH`.
///
/// A missing binary is [`HarnessError::Missing`] (tests skip locally, fail under CI), with a hint
/// to run `scripts/install-deps.sh`.
pub(crate) fn locate_binary(
    component: &str,
    env_var: &str,
    name: &str,
) -> Result<PathBuf, HarnessError> {
    let missing = |reason: String| HarnessError::Missing {
        component: component.to_owned(),
        reason,
    };
    if let Some(path) = env::var_os(env_var) {
        let path = PathBuf::from(path);
        return if executable(&path) {
            Ok(path)
        } else {
            Err(missing(format!(
                "{env_var}={} is not an executable file",
                path.display()
            )))
        };
    }
    env::var_os("PATH")
        .iter()
        .flat_map(env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
        .ok_or_else(|| {
            missing(format!(
                "`{name}` not on PATH and {env_var} not set: run scripts/install-deps.sh"
            ))
        })
}
