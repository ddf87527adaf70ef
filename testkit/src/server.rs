//! One lifecycle for every server process the harness runs: start it from a command builder,
//! block until a readiness probe answers, kill it like a crash, and start it again on the same
//! ports and data.
//!
//! ```ignore
//! let server = Server::builder("nats-server", dir.join("nats.log"), move || {
//!     let mut cmd = Command::new(&bin);
//!     cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
//!     cmd
//! })
//! .ready_on_line(format!("INFO on {addr}"), addr, b"", |l| l.starts_with("INFO {"))
//! .start()?;
//! server.stop();      // SIGKILL; the port stays free for the restart
//! server.restart()?;  // same command, blocks until the probe answers again
//! ```

use std::{
    future::Future,
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use tempfile::TempDir;
use tokio::runtime::Runtime;

use crate::{
    HarnessError,
    dirs::temp_dir,
    http,
    ports::free_addr,
    process::{Proc, log_tail},
};

/// What every server of the harness shows, whatever it runs. The servers also have these as
/// inherent methods, so callers need not import the trait; it is for code that handles any
/// server (sharing one per test binary, fault injection).
pub trait TestServer {
    /// Where clients reach the server, as a URL.
    fn url(&self) -> String;
    /// Its temp dir with config, data and logs.
    fn dir(&self) -> &Path;
    /// Kills it (SIGKILL, like a crash); its ports and data stay for [`restart`](Self::restart).
    fn stop(&self);
    /// Stops it if running and starts it again on the same ports and data; blocks until ready.
    fn restart(&self) -> Result<(), HarnessError>;
}

/// Gives a server type whose [`Instance`] is in field `$field` the inherent `addr`, `dir`,
/// `stop`, `restart` and `server` every single-process server has, and [`TestServer`] through
/// them and the type's own `url`. What survives a restart differs: each type's docs say.
macro_rules! impl_test_server {
    ($server:ty, $field:tt) => {
        impl $server {
            /// Where it listens: `<host>:<port>`.
            pub fn addr(&self) -> ::std::net::SocketAddr {
                self.$field.addr
            }

            /// Its temp dir: config, data and log.
            pub fn dir(&self) -> &::std::path::Path {
                self.$field.dir.path()
            }

            /// Kills it (SIGKILL, like a crash): connections drop and new ones are refused. Its
            /// port and temp dir stay for [`restart`](Self::restart).
            pub fn stop(&self) {
                self.$field.server.stop();
            }

            /// Stops it if running and starts it again on the same port, config and data; blocks
            /// until it is ready.
            pub fn restart(&self) -> Result<(), $crate::HarnessError> {
                self.$field.server.restart()
            }

            /// Its process: pid and log.
            pub fn server(&self) -> &$crate::Server {
                &self.$field.server
            }
        }

        impl $crate::server::TestServer for $server {
            fn url(&self) -> String {
                <$server>::url(self)
            }
            fn dir(&self) -> &::std::path::Path {
                <$server>::dir(self)
            }
            fn stop(&self) {
                <$server>::stop(self)
            }
            fn restart(&self) -> Result<(), $crate::HarnessError> {
                <$server>::restart(self)
            }
        }
    };
}
pub(crate) use impl_test_server;

/// A running single-process server as the server types hold it: the process, where it listens
/// and its temp dir.
#[derive(Debug)]
pub(crate) struct Instance {
    // Fields drop in order: the process is killed before the temp dir goes.
    pub(crate) server: Server,
    pub(crate) addr: SocketAddr,
    pub(crate) dir: TempDir,
}

impl Instance {
    /// Finds what to run with `locate` (so a missing binary creates no files), then has `start`
    /// start the server in a fresh temp dir on a free loopback port. Callable from inside a
    /// tokio runtime.
    pub(crate) fn start<B>(
        locate: impl FnOnce() -> Result<B, HarnessError>,
        start: impl FnOnce(B, &Path, SocketAddr) -> Result<Server, HarnessError>,
    ) -> Result<Self, HarnessError> {
        crate::init();
        let found = locate()?;
        let dir = temp_dir()?;
        let addr = free_addr()?;
        let server = start(found, dir.path(), addr)?;
        Ok(Self { server, addr, dir })
    }
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_POLL: Duration = Duration::from_millis(20);
/// How much of the log a startup error carries.
const ERROR_TAIL: usize = 40;
/// How much of the log [`ServerBuilder::respawn_when`] looks at.
const RESPAWN_TAIL: usize = 5;
/// Per-attempt connect/read timeout of [`ServerBuilder::ready_on_line`]; all is on loopback.
const LINE_TIMEOUT: Duration = Duration::from_secs(5);

type Probe = Box<dyn Fn(&Runtime) -> Result<(), String> + Send + Sync>;

/// A restartable server process. Dropping it kills the process.
pub struct Server {
    spec: ServerBuilder,
    proc: Mutex<Proc>,
}

/// How to start a [`Server`] (see [`Server::builder`]), kept for every restart.
#[must_use]
pub struct ServerBuilder {
    name: &'static str,
    log: PathBuf,
    command: Box<dyn Fn() -> Command + Send + Sync>,
    waiting_for: String,
    probe: Probe,
    timeout: Duration,
    poll: Duration,
    group: bool,
    respawn_when: Option<fn(&str) -> bool>,
}

impl Server {
    /// A server called `name` (in logs and errors) that runs what `command` builds, with its
    /// output appended to `log`. `command` is called again for every restart; stdin, stdout,
    /// stderr and the parent-death signal are set here.
    ///
    /// Without a probe the server counts as ready as soon as it runs; the defaults are a 30 s
    /// timeout polled every 20 ms.
    pub fn builder(
        name: &'static str,
        log: impl Into<PathBuf>,
        command: impl Fn() -> Command + Send + Sync + 'static,
    ) -> ServerBuilder {
        ServerBuilder {
            name,
            log: log.into(),
            command: Box::new(command),
            waiting_for: "a running process".to_owned(),
            probe: Box::new(|_| Ok(())),
            timeout: DEFAULT_TIMEOUT,
            poll: DEFAULT_POLL,
            group: false,
            respawn_when: None,
        }
    }

    /// Kills the process (SIGKILL, like a crash of its host), with its whole process group if
    /// it leads one. Ports and files stay for [`restart`](Self::restart).
    pub fn stop(&self) {
        self.proc().kill();
    }

    /// Stops the process if running, starts it again with the same command and blocks until the
    /// probe answers. A failed restart leaves the process killed.
    pub fn restart(&self) -> Result<(), HarnessError> {
        let begin = Instant::now();
        let mut proc = self.proc();
        proc.kill();
        *proc = self.spec.spawn_proc()?;
        self.wait(&mut proc)?;
        drop(proc);
        self.log_ready("restarted", begin);
        Ok(())
    }

    /// Blocks until the probe answers (for a server from [`ServerBuilder::spawn`]); on failure
    /// kills the process and returns a startup error with the end of its log.
    pub fn wait_ready(&self) -> Result<(), HarnessError> {
        self.wait(&mut self.proc())
    }

    /// The pid of the current process (a new one after every restart).
    pub fn pid(&self) -> u32 {
        self.proc().pid()
    }

    /// The log file, holding the output of every run of the process one after the other.
    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }

    /// The last `lines` lines of the log (empty if it cannot be read).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.spec.log, lines)
    }

    /// `<what>: <waiting_for>`, e.g. `ready: 200 from http://127.0.0.1:9090/-/ready`.
    fn log_ready(&self, what: &str, begin: Instant) {
        tracing::info!(
            server = self.spec.name,
            pid = self.pid(),
            elapsed = ?begin.elapsed(),
            "{what}: {}",
            self.spec.waiting_for
        );
    }

    fn proc(&self) -> MutexGuard<'_, Proc> {
        self.proc.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait(&self, proc: &mut Proc) -> Result<(), HarnessError> {
        let ready = on_own_runtime(|runtime| self.poll_ready(proc, runtime))?;
        if ready.is_err() {
            proc.kill();
        }
        ready
    }

    /// Calls the probe every `poll` until it answers, respawning a process that exited early
    /// when `respawn_when` says so, until `timeout`.
    fn poll_ready(&self, proc: &mut Proc, runtime: &Runtime) -> Result<(), HarnessError> {
        let deadline = Instant::now() + self.spec.timeout;
        loop {
            if let Some(status) = proc.exited() {
                let respawn = self
                    .spec
                    .respawn_when
                    .is_some_and(|leftover| leftover(&self.log_tail(RESPAWN_TAIL)));
                if !respawn || Instant::now() >= deadline {
                    return Err(self.startup_error(format!("exited early with {status}")));
                }
                tracing::debug!(server = self.spec.name, "exited early; starting it again");
                std::thread::sleep(self.spec.poll);
                *proc = self.spec.spawn_proc()?;
                continue;
            }
            let last = match quietly(|| (self.spec.probe)(runtime)) {
                Ok(()) => return Ok(()),
                Err(last) => last,
            };
            if Instant::now() >= deadline {
                return Err(self.startup_error(format!(
                    "no {} after {:?}; last answer: {last}",
                    self.spec.waiting_for, self.spec.timeout
                )));
            }
            std::thread::sleep(self.spec.poll);
        }
    }

    fn startup_error(&self, reason: String) -> HarnessError {
        HarnessError::Startup {
            component: self.spec.name,
            reason,
            log: self.spec.log.clone(),
            tail: self.log_tail(ERROR_TAIL),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.spec.name)
            .field("log", &self.spec.log)
            .field("proc", &*self.proc())
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// Ready once `probe` answers `Ok`; its `Err` is the last answer a timeout reports, after
    /// `no <waiting_for>`. The probe blocks (it runs on a thread of its own).
    pub fn ready_when(
        mut self,
        waiting_for: impl Into<String>,
        probe: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.waiting_for = waiting_for.into();
        self.probe = Box::new(move |_| probe());
        self
    }

    /// [`ready_when`](Self::ready_when) for a probe that needs a tokio runtime (a database or
    /// kube client): each answer is awaited on a runtime of the wait's own.
    pub fn ready_when_async<F>(
        mut self,
        waiting_for: impl Into<String>,
        probe: impl Fn() -> F + Send + Sync + 'static,
    ) -> Self
    where
        F: Future<Output = Result<(), String>>,
    {
        self.waiting_for = waiting_for.into();
        self.probe = Box::new(move |runtime| runtime.block_on(probe()));
        self
    }

    /// Ready once `GET http://<addr><path>` answers 200.
    pub fn ready_on_http(self, addr: SocketAddr, path: &'static str) -> Self {
        self.ready_when(
            format!("200 from http://{addr}{path}"),
            move || match http::get_blocking(addr, path) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("HTTP {}: {}", r.status, r.body.trim())),
                Err(e) => Err(e.to_string()),
            },
        )
    }

    /// Ready once a new connection to `addr`, sent `request` (may be empty), gets a first line
    /// that `accept`s, e.g. a greeting or the answer to a ping.
    pub fn ready_on_line(
        self,
        waiting_for: impl Into<String>,
        addr: SocketAddr,
        request: &'static [u8],
        accept: fn(&str) -> bool,
    ) -> Self {
        self.ready_when(waiting_for, move || match first_line(addr, request) {
            Ok(line) if accept(&line) => Ok(()),
            Ok(line) => Err(format!("unexpected answer {line:?}")),
            Err(e) => Err(e.to_string()),
        })
    }

    /// How long a start or restart may take before it fails.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long to wait between two probes.
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Runs the process in a process group of its own and kills the whole group, for servers
    /// that fork workers (PostgreSQL's backends) which must die with it.
    pub fn own_process_group(mut self) -> Self {
        self.group = true;
        self
    }

    /// When the process exits before it is ready and the last lines of its log match
    /// `leftover`, starts it again (until the timeout) instead of failing: e.g. when the
    /// previous run's processes still hold its files right after a kill.
    pub fn respawn_when(mut self, leftover: fn(&str) -> bool) -> Self {
        self.respawn_when = Some(leftover);
        self
    }

    fn spawn_proc(&self) -> Result<Proc, HarnessError> {
        Proc::spawn(self.name, (self.command)(), &self.log, self.group)
    }

    /// Spawns the process without waiting for it (see [`Server::wait_ready`]), e.g. to start
    /// several that need each other.
    pub fn spawn(self) -> Result<Server, HarnessError> {
        let proc = self.spawn_proc()?;
        Ok(Server {
            spec: self,
            proc: Mutex::new(proc),
        })
    }

    /// Spawns the process and blocks until the probe answers. On failure the process is killed
    /// and the error carries the end of its log. Callable from inside a tokio runtime.
    pub fn start(self) -> Result<Server, HarnessError> {
        let begin = Instant::now();
        // On error `server` is dropped, which kills the process.
        let server = self.spawn()?;
        server.wait_ready()?;
        server.log_ready("ready", begin);
        Ok(server)
    }
}

/// A command builder for [`Server::builder`]: `bin` with `args`, nothing else.
pub fn command(bin: PathBuf, args: Vec<String>) -> impl Fn() -> Command + Send + Sync + 'static {
    move || {
        let mut cmd = Command::new(&bin);
        cmd.args(&args);
        cmd
    }
}

/// Sends `request` on a new connection to `addr` and reads the first line of the answer.
fn first_line(addr: SocketAddr, request: &[u8]) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, LINE_TIMEOUT)?;
    stream.set_read_timeout(Some(LINE_TIMEOUT))?;
    stream.write_all(request)?;
    let mut line = String::new();
    // A line is well under 4 KiB; the cap only guards against a runaway peer.
    BufReader::new(stream.take(64 << 10)).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// Runs `work` on a fresh current-thread runtime on another thread and waits for it.
///
/// Servers start synchronously (a start backs a `OnceLock`), usually from inside a test's
/// runtime, where `block_on` on the current thread would panic.
fn on_own_runtime<T: Send>(work: impl FnOnce(&Runtime) -> T + Send) -> Result<T, HarnessError> {
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(HarnessError::io("building a tokio runtime", "(in memory)"))?;
            Ok(work(&runtime))
        });
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `probe` with logging off: clients log every failed connection attempt, which while
/// polling is expected noise.
fn quietly<T>(probe: impl FnOnce() -> T) -> T {
    let _quiet = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
    probe()
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    /// A `sh -c <script>` server, run from `dir`, logging to `dir/server.log`.
    fn sh(dir: &Path, script: &'static str) -> ServerBuilder {
        let cwd = dir.to_owned();
        Server::builder("sh", dir.join("server.log"), move || {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", script]).current_dir(&cwd);
            cmd
        })
    }

    /// Ready once the log holds at least `runs` lines `up`.
    fn ups_at_least(log: PathBuf, runs: Arc<AtomicUsize>) -> impl Fn() -> Result<(), String> {
        move || {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let ups = log.lines().filter(|l| *l == "up").count();
            if ups >= runs.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(format!("{ups} lines `up`"))
            }
        }
    }

    /// Whether `pid` is gone (or a zombie nobody reaped yet).
    fn gone(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |stat| stat.split(' ').nth(2) == Some("Z"))
    }

    #[test]
    fn stop_kills_and_restart_runs_the_command_again() {
        let dir = tempfile::tempdir().unwrap();
        let runs = Arc::new(AtomicUsize::new(1));
        let server = sh(dir.path(), "echo up; exec sleep 600")
            .ready_when(
                "`up`",
                ups_at_least(dir.path().join("server.log"), runs.clone()),
            )
            .start()
            .unwrap();
        let first = server.pid();
        assert!(!gone(first));
        assert_eq!(server.log_tail(1), "up");

        server.stop();
        assert!(gone(first));

        runs.store(2, Ordering::SeqCst);
        server.restart().unwrap();
        let second = server.pid();
        assert_ne!(first, second);
        assert!(!gone(second));
        // The log keeps the earlier run above the new one.
        assert_eq!(server.log_tail(5), "up\nup");

        drop(server);
        assert!(gone(second));
    }

    #[test]
    fn an_early_exit_fails_with_the_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let err = sh(dir.path(), "echo boom; exit 3")
            .ready_when("never", || Err("not yet".to_owned()))
            .start()
            .unwrap_err();
        match err {
            HarnessError::Startup { reason, tail, .. } => {
                assert!(reason.starts_with("exited early"), "{reason}");
                assert_eq!(tail, "boom");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_timeout_names_the_wait_and_the_last_answer_and_kills_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let err = sh(dir.path(), "echo $$ > pid; exec sleep 600")
            .ready_when("an answer", || Err("still starting".to_owned()))
            .timeout(Duration::from_millis(200))
            .start()
            .unwrap_err();
        let HarnessError::Startup { reason, .. } = &err else {
            panic!("{err}");
        };
        assert!(reason.starts_with("no an answer after 200ms"), "{reason}");
        assert!(reason.ends_with("last answer: still starting"), "{reason}");
        let pid: u32 = std::fs::read_to_string(pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(gone(pid));
    }

    #[test]
    fn respawns_while_the_log_says_so() {
        let dir = tempfile::tempdir().unwrap();
        // The first run finds a "leftover" and exits; the second comes up.
        let script =
            "if [ -e ran ]; then echo up; exec sleep 600; fi; touch ran; echo leftover; exit 1";
        let server = sh(dir.path(), script)
            .ready_when(
                "`up`",
                ups_at_least(dir.path().join("server.log"), Arc::new(AtomicUsize::new(1))),
            )
            .respawn_when(|tail| tail.contains("leftover"))
            .start()
            .unwrap();
        assert_eq!(server.log_tail(5), "leftover\nup");
    }

    #[test]
    fn a_line_probe_sends_its_request_and_checks_the_first_line() {
        // A peer that answers `PING` with `+PONG` and anything else with `-ERR`.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).unwrap();
                let answer: &[u8] = if line == "PING\r\n" {
                    b"+PONG\r\n"
                } else {
                    b"-ERR\r\n"
                };
                (&stream).write_all(answer).unwrap();
            }
        });
        let dir = tempfile::tempdir().unwrap();
        sh(dir.path(), "exec sleep 600")
            .ready_on_line("PONG", addr, b"PING\r\n", |l| l == "+PONG")
            .start()
            .unwrap();
        let err = sh(dir.path(), "exec sleep 600")
            .ready_on_line("PONG", addr, b"HELLO\r\n", |l| l == "+PONG")
            .timeout(Duration::from_millis(100))
            .start()
            .unwrap_err();
        let HarnessError::Startup { reason, .. } = &err else {
            panic!("{err}");
        };
        assert!(
            reason.ends_with(r#"last answer: unexpected answer "-ERR""#),
            "{reason}"
        );
    }

    #[test]
    fn a_process_group_dies_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let probe_log = log.clone();
        let server = sh(dir.path(), "sleep 600 & echo $!; wait")
            .ready_when("the worker's pid", move || {
                match std::fs::read_to_string(&probe_log) {
                    Ok(pid) if pid.ends_with('\n') => Ok(()),
                    _ => Err("no pid yet".to_owned()),
                }
            })
            .own_process_group()
            .start()
            .unwrap();
        let worker: u32 = server.log_tail(1).parse().unwrap();
        assert!(!gone(worker));
        server.stop();
        // The worker dies with the group, though nothing waits for it here.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone(worker) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(gone(worker));
    }
}
