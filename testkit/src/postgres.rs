//! A private PostgreSQL cluster (the Debian `postgresql` package binaries) on a free loopback
//! port, tuned for throwaway data: `fsync=off`, `full_page_writes=off`, trust authentication.
//!
//! initdb and postgres refuse to run as root, so when the tests run as root both run as the
//! `postgres` system user (which owns the data directory); otherwise as the current user.
//!
//! `synchronous_commit` stays `on`: with `fsync=off` that costs one `write()` per commit, and
//! without it a commit is only in postgres's own memory for up to ~0.6s, so [`Postgres::stop`]
//! (SIGKILL) would lose acknowledged commits and a restart would not bring them back.

use std::{
    env,
    ffi::CString,
    fs::{self, File},
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::{
        fs::{PermissionsExt, chown},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::{
    HarnessError,
    dirs::temp_dir,
    ports::free_addr,
    process::{executable, log_tail},
    server::{Instance, Server, impl_test_server},
    shared::{shared, unique_name},
};

/// Per-attempt connect/read/write timeout of the readiness check; everything is on loopback.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
const COMPONENT: &str = "postgresql";
/// Where the Debian packages install one directory per major version.
const DEBIAN_DIR: &str = "/usr/lib/postgresql";
/// The superuser that initdb creates, and the system user the server runs as under root.
const USER: &str = "postgres";

/// A running PostgreSQL server; dropping it kills the server and removes its data.
///
/// Holds nothing bound to a tokio runtime, so one instance can serve every test in a binary
/// (see [`Postgres::shared`]); give each test its own database with
/// [`create_database`](Postgres::create_database).
///
/// Its temp dir holds the cluster (`data/`), the Unix socket dir (`sockets/`), `initdb.log` and
/// `postgres.log`. A stop kills the server with all its backends, like a crash of its host; a
/// restart replays the WAL, so every acknowledged commit is back.
#[derive(Debug)]
pub struct Postgres(Instance);

/// The system user the server processes run as (when the tests run as root).
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl Postgres {
    /// The server shared by every test in this test binary, started on first use.
    ///
    /// It lives until the process exits: the kernel kills the server then (see `process.rs`)
    /// and an `atexit` hook removes the data. [`stop`](Self::stop) and
    /// [`restart`](Self::restart) on it hit every test of the binary: fault tests should
    /// [`start`](Self::start) a private server instead.
    pub fn shared() -> Result<&'static Postgres, HarnessError> {
        static SHARED: OnceLock<Result<Postgres, HarnessError>> = OnceLock::new();
        shared(&SHARED, Self::start)
    }

    /// Creates a cluster in a temp dir, starts a private server on it and blocks until it
    /// answers `SELECT 1` (~1s, most of it initdb). Dropping it kills the server (SIGKILL)
    /// and removes its files.
    ///
    /// The binaries are those in `$FICUS_PG_BIN`, else in the newest
    /// `/usr/lib/postgresql/<version>/bin`; without them this is [`HarnessError::Missing`].
    /// Callable from inside a tokio runtime.
    pub fn start() -> Result<Self, HarnessError> {
        crate::init();
        let bin_dir = bin_dir()?;
        let run_as = run_as()?;
        let begin = Instant::now();
        let dir = temp_dir()?;
        let path = |name: &str| dir.path().join(name);
        let addr = free_addr()?;

        let (data, sockets) = (path("data"), path("sockets"));
        if let Some(user) = run_as {
            // The server user must reach its directories inside our (0700) temp dir.
            let perms = fs::Permissions::from_mode(0o755);
            fs::set_permissions(dir.path(), perms)
                .map_err(HarnessError::io("making accessible", dir.path()))?;
            for sub in [&data, &sockets] {
                fs::create_dir(sub).map_err(HarnessError::io("creating", sub))?;
                chown(sub, Some(user.uid), Some(user.gid))
                    .map_err(HarnessError::io("changing the owner of", sub))?;
            }
            // initdb wants the data directory private to its owner.
            fs::set_permissions(&data, fs::Permissions::from_mode(0o700))
                .map_err(HarnessError::io("restricting", &data))?;
        } else {
            fs::create_dir(&sockets).map_err(HarnessError::io("creating", &sockets))?;
        }

        initdb(&bin_dir.join("initdb"), &data, dir.path(), run_as)?;
        let initialized = begin.elapsed();

        let args = vec![
            "-D".into(),
            data.display().to_string(),
            "-k".into(),
            sockets.display().to_string(),
            "-p".into(),
            addr.port().to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            // Test data is disposable: skip every flush to disk. Commits still reach the
            // kernel, so they survive a SIGKILL of the server (see the module docs).
            "-c".into(),
            "fsync=off".into(),
            "-c".into(),
            "full_page_writes=off".into(),
            "-c".into(),
            "max_connections=200".into(),
        ];
        let bin = bin_dir.join("postgres");
        let cwd = dir.path().to_owned();
        let server = Server::builder("postgres", path("postgres.log"), move || {
            command(&bin, &args, &cwd, run_as)
        })
        .ready_when(format!("answer to `SELECT 1` on {addr}"), move || {
            ping(addr).map_err(|e| e.to_string())
        })
        // So that a stop takes the backends down with the postmaster.
        .own_process_group()
        // Right after a stop the old server's processes may not all be gone yet; the new one
        // then refuses the data dir and exits, and is started again.
        .respawn_when(|tail| {
            tail.contains("pre-existing shared memory block")
                || tail.contains("lock file \"postmaster.pid\" already exists")
        })
        .start()?;
        let pg = Self(Instance { server, addr, dir });
        tracing::info!(
            url = %pg.url(),
            dir = %pg.dir().display(),
            ?initialized,
            elapsed = ?begin.elapsed(),
            "postgres ready"
        );
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`: the superuser on the default database
    /// (trust authentication, no password, no TLS).
    pub fn url(&self) -> String {
        self.database_url(USER)
    }

    /// The URL of database `name` on this server (the database need not exist).
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://{USER}@{}/{name}", self.0.addr)
    }

    pub fn port(&self) -> u16 {
        self.0.addr.port()
    }

    /// Creates a fresh, empty database named `<prefix>_<pid>_<n>` (made identifier-safe, at
    /// most 63 bytes) and returns its URL. Each test should use its own database.
    pub async fn create_database(&self, prefix: &str) -> Result<String, HarnessError> {
        let name = unique_database_name(prefix);
        let url = self.url();
        let db_error = |action: String| {
            let url = url.clone();
            move |e| HarnessError::Database {
                action,
                url,
                source: Arc::new(e),
            }
        };
        let mut conn = PgConnection::connect(&url)
            .await
            .map_err(db_error("connecting".into()))?;
        // `name` holds only [a-z0-9_], so quoting it is enough.
        let sql = format!(r#"CREATE DATABASE "{name}""#);
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .map_err(db_error(format!("creating database {name}")))?;
        let _ = conn.close().await;
        tracing::debug!(%name, "created database");
        Ok(self.database_url(&name))
    }
}

impl_test_server!(Postgres, 0);

/// `$FICUS_PG_BIN`, else the `bin` dir of the newest version under `/usr/lib/postgresql`.
fn bin_dir() -> Result<PathBuf, HarnessError> {
    let missing = |reason: String| HarnessError::Missing {
        component: COMPONENT.to_owned(),
        reason,
    };
    let complete = |dir: &Path| {
        ["initdb", "postgres"]
            .iter()
            .all(|b| executable(&dir.join(b)))
    };
    if let Some(dir) = env::var_os("FICUS_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if complete(&dir) {
            Ok(dir)
        } else {
            Err(missing(format!(
                "FICUS_PG_BIN={} does not hold executable `initdb` and `postgres`",
                dir.display()
            )))
        };
    }
    let version = |name: &str| -> Option<Vec<u32>> {
        name.split('.').map(|part| part.parse().ok()).collect()
    };
    fs::read_dir(DEBIAN_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let v = version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            complete(&bin).then_some((v, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .ok_or_else(|| {
            missing(format!(
                "no {DEBIAN_DIR}/<version>/bin with `initdb` and `postgres`, and FICUS_PG_BIN \
                 not set: run scripts/install-deps.sh"
            ))
        })
}

/// Under root, the `postgres` system user (initdb and postgres refuse to run as root).
fn run_as() -> Result<Option<RunAs>, HarnessError> {
    // SAFETY: geteuid cannot fail and has no side effects.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    lookup_user(USER)
        .map(Some)
        .ok_or_else(|| HarnessError::Missing {
            component: COMPONENT.to_owned(),
            reason: format!(
                "running as root, and there is no `{USER}` system user to run the server as \
             (the Debian package creates it): run scripts/install-deps.sh"
            ),
        })
}

fn lookup_user(name: &str) -> Option<RunAs> {
    let name = CString::new(name).ok()?;
    // SAFETY: `passwd` is plain old data; getpwnam_r only writes into `pwd` and `buf`, which
    // outlive the call, and we read `pwd` only when it reports success.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut found = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        );
        (rc == 0 && !found.is_null()).then_some(RunAs {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }
}

/// A command for `bin` run as `run_as` (if set), from `cwd` (the server user may not be allowed
/// into the test's working directory).
fn command(bin: &Path, args: &[String], cwd: &Path, run_as: Option<RunAs>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(cwd);
    if let Some(user) = run_as {
        // std also drops root's supplementary groups when it switches the uid.
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd
}

/// Runs initdb (~1s with `--no-sync`), its output to `initdb.log` next to `data`.
fn initdb(bin: &Path, data: &Path, cwd: &Path, run_as: Option<RunAs>) -> Result<(), HarnessError> {
    let log = cwd.join("initdb.log");
    let out = File::create(&log).map_err(HarnessError::io("creating", &log))?;
    let err = out
        .try_clone()
        .map_err(HarnessError::io("duplicating log file", &log))?;
    let args: Vec<String> = vec![
        "-D".into(),
        data.display().to_string(),
        "-A".into(),
        "trust".into(),
        "-U".into(),
        USER.into(),
        "--no-sync".into(),
        "-E".into(),
        "UTF8".into(),
        // Not the test environment's locale (which may not be installed): C.UTF-8 always is
        // on Debian, and unlike plain C it classifies non-ASCII characters (lower(), ILIKE).
        "--locale=C.UTF-8".into(),
    ];
    let status = command(bin, &args, cwd, run_as)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(HarnessError::io("running", bin))?;
    if status.success() {
        Ok(())
    } else {
        Err(HarnessError::Startup {
            component: "initdb",
            reason: format!("exited with {status}"),
            tail: log_tail(&log, 40),
            log,
        })
    }
}

/// One wire-protocol session as `postgres` on database `postgres` (trust authentication):
/// startup, `SELECT 1`, terminate. The error is the server's (e.g. "the database system is
/// starting up") or the connection's.
fn ping(addr: SocketAddr) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, PING_TIMEOUT)?;
    stream.set_read_timeout(Some(PING_TIMEOUT))?;
    stream.set_write_timeout(Some(PING_TIMEOUT))?;

    let params = format!("user\0{USER}\0database\0{USER}\0\0");
    let mut startup = Vec::new();
    startup.extend((8 + params.len() as u32).to_be_bytes());
    startup.extend(196_608u32.to_be_bytes()); // protocol 3.0
    startup.extend(params.as_bytes());
    stream.write_all(&startup)?;

    let mut queried = false;
    loop {
        let (tag, body) = read_message(&mut stream)?;
        match tag {
            b'R' if body.get(..4) != Some(&[0, 0, 0, 0]) => {
                return Err(io::Error::other(
                    "server asks for a password (not trust auth)",
                ));
            }
            b'E' => return Err(io::Error::other(server_error(&body))),
            // ReadyForQuery: after the startup, then after the query.
            b'Z' if !queried => {
                let sql = b"SELECT 1\0";
                let mut query = vec![b'Q'];
                query.extend((4 + sql.len() as u32).to_be_bytes());
                query.extend(sql);
                stream.write_all(&query)?;
                queried = true;
            }
            b'Z' => {
                let _ = stream.write_all(&[b'X', 0, 0, 0, 4]);
                return Ok(());
            }
            // AuthenticationOk, ParameterStatus, BackendKeyData, RowDescription, DataRow, ...
            _ => {}
        }
    }
}

fn read_message(stream: &mut TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if !(4..=1 << 20).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad message length {len} (is this a PostgreSQL server?)"),
        ));
    }
    let mut body = vec![0; len - 4];
    stream.read_exact(&mut body)?;
    Ok((head[0], body))
}

/// `SEVERITY SQLSTATE: message` from an ErrorResponse body (type byte + C string fields).
fn server_error(body: &[u8]) -> String {
    let field = |code: u8| {
        body.split(|&b| b == 0)
            .find(|f| f.first() == Some(&code))
            .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
            .unwrap_or_default()
    };
    format!("{} {}: {}", field(b'S'), field(b'C'), field(b'M'))
}

/// `<prefix>_<pid>_<n>`: lowercase `[a-z0-9_]`, at most 63 bytes (PostgreSQL's limit), unique
/// within this test binary.
fn unique_database_name(prefix: &str) -> String {
    unique_name(prefix, '_', 63, "db")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_server_errors() {
        let body = b"SFATAL\0VFATAL\0C57P03\0Mthe database system is starting up\0\0";
        assert_eq!(
            server_error(body),
            "FATAL 57P03: the database system is starting up"
        );
    }
}
