//! A private Apache Cassandra 5.0 node (a CQL database; ScyllaDB speaks the same protocol) on
//! free loopback ports, for the chat service's ScyllaDB store.
//!
//! `scripts/fetch-cassandra.sh` (run by `scripts/install-deps.sh`) puts `cassandra-all` and its
//! dependencies from Maven Central into `~/.cache/ficus/cassandra-<version>/lib`; the harness
//! runs `org.apache.cassandra.service.CassandraDaemon` from there with Java 17 (`java` on
//! `PATH`, or `$FICUS_JAVA`), with a generated `cassandra.yaml` and `logback.xml`.
//!
//! Durability: `commitlog_sync: batch`, so a write is acknowledged only once its commit log
//! section is marked synced, and [`Cassandra::stop`] (SIGKILL) followed by
//! [`Cassandra::restart`] replays every acknowledged write. (`periodic` would lose the writes
//! of the last period: replay stops at the last sync marker.) `-Dcassandra.skip_sync=true`
//! skips the fsyncs, as `fsync=off` does for PostgreSQL: the commit log is memory-mapped, so
//! what is written survives a crash of the process, just not of the host.
//!
//! Under root, Cassandra `mlockall`s its memory (about doubling its RSS, to ~1 GB); the JVM is
//! started without `CAP_IPC_LOCK` and with `RLIMIT_MEMLOCK` 0, so that fails with a warning.

use std::{
    env, fs, io,
    net::{Ipv4Addr, SocketAddr},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use scylla::client::{session::Session, session_builder::SessionBuilder};

use crate::{
    HarnessError,
    dirs::{cache_dir, temp_dir},
    ports::free_ports,
    process::locate_binary,
    server::{Instance, Server, impl_test_server},
    shared::{shared, unique_name},
};

/// A first start on 2 busy cores takes 10–60 s (JVM warm-up, system keyspaces); restarts too.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(250);
/// Per-attempt connect and query timeout of the readiness check; everything is on loopback.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
const COMPONENT: &str = "cassandra";
/// Keep in step with `scripts/fetch-cassandra.sh` (both read `$FICUS_CASSANDRA_VERSION`).
const DEFAULT_VERSION: &str = "5.0.9";
/// The readiness query: a real CQL handshake plus a read of the local system table.
const RELEASE_VERSION: &str = "SELECT release_version FROM system.local";
/// Cassandra's limit on keyspace (and table) names.
const MAX_NAME: usize = 48;

/// JVM options: a small heap, and the Java 17 options of Cassandra 5.0's
/// `conf/jvm17-server.options` (module exports/opens, Netty settings) plus
/// `-Xss256k`/`-XX:+PerfDisableSharedMem` from `conf/jvm-server.options`.
const JVM_OPTIONS: &[&str] = &[
    "-Xms512m",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-Xss256k",
    "-XX:+PerfDisableSharedMem",
    // A node out of memory is broken: end it so the test fails rather than hangs.
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.net.preferIPv4Stack=true",
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
    // A single node that is its own seed: no waiting for gossip or ring settling.
    "-Dcassandra-foreground=yes",
    "-Dcassandra.skip_wait_for_gossip_to_settle=0",
    "-Dcassandra.ring_delay_ms=0",
    "-Dcassandra.join_ring=true",
    // Test data is disposable: no fsync (see the module docs).
    "-Dcassandra.skip_sync=true",
];

const LOGBACK_XML: &str = r#"<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
"#;

/// A running single-node Cassandra; dropping it kills the JVM and removes its data.
///
/// Holds nothing bound to a tokio runtime, so one instance serves every test in a binary (see
/// [`Cassandra::shared`]); give each test its own keyspace with
/// [`create_keyspace`](Cassandra::create_keyspace).
///
/// Its temp dir holds `cassandra.yaml`, `logback.xml`, the JVM's output (`cassandra.log`) and
/// the data (`data/`, `commitlog/`, ...). A stop kills the JVM: sessions lose their connections
/// and queries fail until the restart (~10 s), whose commit log replay brings back every
/// acknowledged write; existing sessions then reconnect by themselves. The restart blocks: in a
/// test whose runtime also runs the code under test, call it through
/// `tokio::task::spawn_blocking` (the shared node is `'static`).
#[derive(Debug)]
pub struct Cassandra(Instance);

impl Cassandra {
    /// The node shared by every test in this test binary, started on first use (a JVM with a
    /// 1 GB heap: there is one per test binary, never one per test).
    ///
    /// It lives until the process exits: the kernel kills the JVM then (see `process.rs`) and an
    /// `atexit` hook removes the data. [`stop`](Self::stop) and [`restart`](Self::restart) hit
    /// every test of the binary, so fault tests belong in a test binary of their own.
    ///
    /// Without Java or the jars this is [`HarnessError::Missing`]. Blocks until the node
    /// answers CQL; callable from inside a tokio runtime.
    pub fn shared() -> Result<&'static Cassandra, HarnessError> {
        static SHARED: OnceLock<Result<Cassandra, HarnessError>> = OnceLock::new();
        shared(&SHARED, Self::start)
    }

    fn start() -> Result<Self, HarnessError> {
        Self::start_on(Ipv4Addr::LOCALHOST)
    }

    /// A private node listening on `host` (not shared; dropping it kills the JVM), e.g. an
    /// address pods reach. Clients learn the node's address from `system.local`, so it must
    /// listen where they connect: a port forward would send them back to loopback.
    ///
    /// Writes the config to a fresh temp dir, starts the JVM and blocks until a CQL session
    /// reads `release_version` from `system.local`.
    pub fn start_on(host: Ipv4Addr) -> Result<Self, HarnessError> {
        crate::init();
        let java = locate_binary(COMPONENT, "FICUS_JAVA", "java")?;
        let (version, lib) = lib_dir()?;
        let begin = Instant::now();
        let dir = temp_dir()?;
        let path = |name: &str| dir.path().join(name);
        let [storage_port, native_port] = free_ports()?;
        let addr = SocketAddr::from((host, native_port));

        let yaml = path("cassandra.yaml");
        fs::write(
            &yaml,
            cassandra_yaml(dir.path(), host, storage_port, native_port),
        )
        .map_err(HarnessError::io("writing", &yaml))?;
        let logback = path("logback.xml");
        fs::write(&logback, LOGBACK_XML).map_err(HarnessError::io("writing", &logback))?;

        let triggers = path("triggers");
        fs::create_dir(&triggers).map_err(HarnessError::io("creating", &triggers))?;

        let mut args: Vec<String> = JVM_OPTIONS.iter().map(|&o| o.to_owned()).collect();
        args.extend([
            format!("-Dcassandra.config=file://{}", yaml.display()),
            format!("-Dcassandra.storagedir={}", dir.path().display()),
            format!("-Dcassandra.logdir={}", dir.path().display()),
            // Else it warns on every CREATE TABLE that `$CASSANDRA_HOME/conf/triggers` is missing.
            format!("-Dcassandra.triggers_dir={}", triggers.display()),
            format!("-Dlogback.configurationFile={}", logback.display()),
            "-cp".into(),
            format!("{}/*", lib.display()),
            "org.apache.cassandra.service.CassandraDaemon".into(),
        ]);
        let cwd = dir.path().to_owned();
        let server = Server::builder("cassandra", path("cassandra.log"), move || {
            command(&java, &args, &cwd)
        })
        .ready_when_async(
            format!("answer to `{RELEASE_VERSION}` on {addr}"),
            move || ping(addr),
        )
        .timeout(READY_TIMEOUT)
        .poll(POLL)
        .start()?;
        let cassandra = Self(Instance { server, addr, dir });
        let pid = cassandra.server().pid();
        tracing::info!(
            contact_point = %cassandra.contact_point(),
            %version,
            pid,
            rss_mib = crate::memory_mib(pid, "VmRSS").round(),
            dir = %cassandra.dir().display(),
            elapsed = ?begin.elapsed(),
            "cassandra ready"
        );
        Ok(cassandra)
    }

    /// `127.0.0.1:<port>`: the CQL native-protocol address, for `SessionBuilder::known_node`.
    pub fn contact_point(&self) -> String {
        self.0.addr.to_string()
    }

    /// A new session to this node, bound to the calling test's runtime.
    pub async fn session(&self) -> Result<Session, HarnessError> {
        SessionBuilder::new()
            .known_node_addr(self.0.addr)
            .connection_timeout(PING_TIMEOUT)
            .build()
            .await
            .map_err(|e| self.cql_error("connecting".into(), e))
    }

    /// Creates a fresh, empty keyspace named `<prefix>_<pid>_<n>` (made identifier-safe,
    /// lowercase, at most 48 bytes) with `SimpleStrategy` and replication factor 1, and returns
    /// its name. Each test should use its own keyspace.
    pub async fn create_keyspace(&self, prefix: &str) -> Result<String, HarnessError> {
        let name = unique_keyspace_name(prefix);
        let session = self.session().await?;
        // `name` holds only [a-z0-9_] and starts with a letter: a valid unquoted identifier.
        let cql = format!(
            "CREATE KEYSPACE {name} WITH replication = \
             {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
        );
        session
            .query_unpaged(cql, &[])
            .await
            .map_err(|e| self.cql_error(format!("creating keyspace {name}"), e))?;
        tracing::debug!(%name, "created keyspace");
        Ok(name)
    }

    /// `cql://127.0.0.1:<port>`, for logs; clients take [`contact_point`](Self::contact_point).
    pub fn url(&self) -> String {
        format!("cql://{}", self.0.addr)
    }

    fn cql_error(
        &self,
        action: String,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> HarnessError {
        HarnessError::Database {
            action,
            url: self.contact_point(),
            source: Arc::new(sqlx::Error::Io(io::Error::other(e))),
        }
    }
}

impl_test_server!(Cassandra, 0);

/// The Cassandra version and its `~/.cache/ficus/cassandra-<version>/lib` (see
/// `scripts/fetch-cassandra.sh`), if complete.
fn lib_dir() -> Result<(String, PathBuf), HarnessError> {
    let version =
        env::var("FICUS_CASSANDRA_VERSION").unwrap_or_else(|_| DEFAULT_VERSION.to_owned());
    let home = cache_dir().join(format!("cassandra-{version}"));
    if home.join(".complete").is_file() {
        Ok((version, home.join("lib")))
    } else {
        Err(HarnessError::Missing {
            component: COMPONENT.to_owned(),
            reason: format!(
                "Cassandra {version} jars not found in {}: run scripts/install-deps.sh",
                home.display()
            ),
        })
    }
}

/// A minimal single-node `cassandra.yaml` for 5.0 with everything under `dir`.
fn cassandra_yaml(dir: &Path, host: Ipv4Addr, storage_port: u16, native_port: u16) -> String {
    let dir = dir.display();
    format!(
        r#"cluster_name: ficus-e2e
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{host}:{storage_port}"
listen_address: {host}
rpc_address: {host}
storage_port: {storage_port}
native_transport_port: {native_port}
start_native_transport: true
data_file_directories:
  - '{dir}/data'
commitlog_directory: '{dir}/commitlog'
saved_caches_directory: '{dir}/saved_caches'
hints_directory: '{dir}/hints'
cdc_raw_directory: '{dir}/cdc_raw'
cdc_enabled: false
# Acknowledge a write once its commit log section is synced (see the module docs).
commitlog_sync: batch
endpoint_snitch: SimpleSnitch
dynamic_snitch: false
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
# A fresh cluster, nothing to stay compatible with.
storage_compatibility_mode: NONE
hinted_handoff_enabled: false
auto_snapshot: false
concurrent_reads: 4
concurrent_writes: 8
concurrent_counter_writes: 4
concurrent_materialized_view_writes: 2
concurrent_compactors: 1
memtable_flush_writers: 1
file_cache_size: 32MiB
"#
    )
}

/// `linux/capability.h` (not in the libc crate).
const CAP_IPC_LOCK: libc::c_ulong = 14;

/// The JVM command, run from `dir`.
fn command(java: &Path, args: &[String], dir: &Path) -> Command {
    let mut cmd = Command::new(java);
    cmd.args(args).current_dir(dir);
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(|| {
            // Make Cassandra's mlockall fail (see the module docs): the usual small memlock
            // allowance (mlockall then fails with ENOMEM, which Cassandra logs as a plain
            // warning), and no CAP_IPC_LOCK to bypass it after exec. Neither is an error when
            // not root.
            let small = libc::rlimit {
                rlim_cur: 64 * 1024,
                rlim_max: 64 * 1024,
            };
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &small);
            libc::prctl(libc::PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0);
            Ok(())
        });
    }
    cmd
}

/// One CQL session: handshake, `SELECT release_version FROM system.local`.
async fn ping(addr: SocketAddr) -> Result<(), String> {
    // Cheap check first: nothing listens until the node is nearly up.
    tokio::time::timeout(PING_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let session = tokio::time::timeout(
        PING_TIMEOUT,
        SessionBuilder::new()
            .known_node_addr(addr)
            .connection_timeout(PING_TIMEOUT)
            .build(),
    )
    .await
    .map_err(|_| "session setup timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let result = tokio::time::timeout(PING_TIMEOUT, session.query_unpaged(RELEASE_VERSION, &[]))
        .await
        .map_err(|_| "query timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (_version,): (String,) = result
        .into_rows_result()
        .map_err(|e| e.to_string())?
        .single_row()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// `<prefix>_<pid>_<n>`: lowercase `[a-z0-9_]`, starting with a letter, at most 48 bytes
/// (Cassandra's limit), unique within this test binary.
fn unique_keyspace_name(prefix: &str) -> String {
    unique_name(prefix, '_', MAX_NAME, "ks")
}
