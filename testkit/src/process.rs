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
    sync::{OnceLock, mpsc},
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

/// One spawned child process whose stdout and stderr go to a log file. [`Server`] owns one at a
/// time and replaces it on every restart.
///
/// [`Server`]: crate::server::Server
#[derive(Debug)]
pub(crate) struct Proc {
    child: Child,
    /// The child leads its own process group, and killing it kills the whole group.
    group: bool,
}

impl Proc {
    /// Spawns `cmd` (built by the caller, e.g. with `uid`/`gid` or a working directory) with
    /// stdin from `/dev/null` and stdout and stderr appended to `log`. With `group` the child
    /// leads a process group of its own, so that [`kill`](Self::kill) takes its children too.
    ///
    /// `PR_SET_PDEATHSIG` still holds for a child that switches user: std applies `uid`/`gid`
    /// before the `pre_exec` hook that sets it (a credential change would clear it).
    pub(crate) fn spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        group: bool,
    ) -> Result<Self, HarnessError> {
        // Append: a restarted process keeps the earlier run's log above its own.
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(HarnessError::io("opening log file", log))?;
        let err = out
            .try_clone()
            .map_err(HarnessError::io("duplicating log file", log))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        if group {
            cmd.process_group(0);
        }
        let bin = PathBuf::from(cmd.get_program());
        let args: Vec<_> = cmd.get_args().collect();
        tracing::debug!(%name, bin = %bin.display(), ?args, "spawning");
        let child = spawn_orphan_proof(cmd).map_err(HarnessError::io("spawning", bin))?;
        Ok(Self { child, group })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has already ended.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILLs the process (and its group, if it leads one) and reaps it.
    pub(crate) fn kill(&mut self) {
        if self.group && self.exited().is_none() {
            // SAFETY: plain kill(2). The child leads the group and is not reaped yet, so the
            // group id cannot belong to anything else.
            unsafe { libc::kill(-(self.pid() as libc::pid_t), libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
pub fn log_tail(log: &Path, lines: usize) -> String {
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

/// [`locate_binary`], falling back to `fallback` when `$env_var` is unset: where a Debian
/// package installs a server off a non-root user's `PATH` (`/usr/sbin`).
pub(crate) fn locate_binary_or(
    component: &str,
    env_var: &str,
    name: &str,
    fallback: &'static str,
) -> Result<PathBuf, HarnessError> {
    match locate_binary(component, env_var, name) {
        Err(e) if env::var_os(env_var).is_none() && executable(Path::new(fallback)) => {
            tracing::debug!("{e}; using {fallback}");
            Ok(fallback.into())
        }
        found => found,
    }
}
