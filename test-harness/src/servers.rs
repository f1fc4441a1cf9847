//! Real `nats-server` and `redis-server` processes for Switchboard's integration tests.
//!
//! [`NatsServer::start`] and [`RedisServer::start`] launch the actual server binaries
//! (the Debian `nats-server` and `redis-server` packages) on a free loopback port, wait
//! until the server answers its own protocol, and hand back a guard that kills the
//! process and deletes its scratch directory when dropped — in the spirit of the
//! `nats-server` helper in the nats.rs test suite.
//!
//! * Binaries are looked up on `PATH` (plus the usual `sbin`/`bin` directories, since
//!   Debian installs `nats-server` in `/usr/sbin`); `SB_NATS_SERVER_BIN` and
//!   `SB_REDIS_SERVER_BIN` override the lookup with a path or a bare name.
//! * Each server gets a fresh directory under [`std::env::temp_dir`] holding its
//!   config and a log file with the process's stdout and stderr; the tail of that log
//!   is included in start-up errors.
//! * NATS runs plain core NATS: no monitoring port, no JetStream, no clustering.
//!   Redis runs without any persistence (`--save "" --appendonly no`).
//! * Readiness means "answers the protocol as *this* process": the NATS `INFO` line
//!   must carry the server name we configured, and Redis must answer `PING` with
//!   `+PONG` and report our process id in `INFO server`. A start that loses its port
//!   to another process is retried on a new port, up to three attempts in total.
//!
//! Everything here is synchronous (`std::process`, `std::net`): start-up blocks the
//! calling thread for the few tens of milliseconds a server needs to come up, so it
//! can be called from plain `#[test]`s, from `#[tokio::test]`s and from fixtures.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a freshly spawned server gets to start answering its protocol.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times [`NatsServer::start`] / [`RedisServer::start`] try a new port.
const START_ATTEMPTS: u32 = 3;
/// Timeout of a single readiness connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// Read/write timeout while talking to a server during the readiness probe.
const PROBE_IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between readiness attempts.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Pause between attempts to re-bind the old port in `restart()`.
const RESTART_RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// Longest protocol line the probe accepts (a NATS `INFO` line is well under this).
const MAX_LINE: u64 = 64 * 1024;
/// Longest `INFO server` reply the Redis probe accepts.
const MAX_BULK: usize = 1024 * 1024;
/// How many lines of the server log an error shows.
const LOG_TAIL_LINES: usize = 40;
/// At most this many bytes of the end of the log are read for an error.
const LOG_TAIL_BYTES: u64 = 16 * 1024;
/// Name of the log file (stdout + stderr) inside a server's directory.
const LOG_FILE: &str = "server.log";
/// Name of the NATS configuration file inside a server's directory.
const NATS_CONFIG_FILE: &str = "nats-server.conf";
/// Directories searched after `PATH`: Debian puts `nats-server` in `/usr/sbin`, which
/// is often missing from a non-root `PATH`.
const FALLBACK_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Errors from starting, probing or restarting a test server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// The server binary is not installed (or not on `PATH`).
    #[error("{binary} not found on PATH: install it with `apt-get install {package}`")]
    NotFound {
        /// Binary that was looked for, e.g. `nats-server`.
        binary: &'static str,
        /// Debian package that provides it.
        package: &'static str,
    },
    /// The override environment variable does not name an executable.
    #[error("{var}={} does not name an executable {binary}", .path.display())]
    BadOverride {
        /// The environment variable, e.g. `SB_NATS_SERVER_BIN`.
        var: &'static str,
        /// Binary the variable stands for.
        binary: &'static str,
        /// Value of the variable.
        path: PathBuf,
    },
    /// No free loopback port could be reserved.
    #[error("could not reserve a free loopback port: {0}")]
    NoFreePort(#[source] io::Error),
    /// The scratch directory or a file in it could not be created.
    #[error("could not prepare {}: {source}", .path.display())]
    TempDir {
        /// Directory or file that could not be created.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The server process could not be spawned.
    #[error("failed to spawn server process: {0}")]
    Spawn(#[source] io::Error),
    /// Another process holds the port the server was meant to listen on.
    #[error("{what} could not serve 127.0.0.1:{port}, the port is taken: {detail}{}", show_tail(.log_tail))]
    PortInUse {
        /// The server, e.g. `nats-server (pid 123, port 4567)`.
        what: String,
        /// The contested port.
        port: u16,
        /// What gave the clash away.
        detail: String,
        /// Last lines of the server's log.
        log_tail: String,
    },
    /// The server exited before it answered its protocol.
    #[error("{what} exited before it was ready ({status}){}", show_tail(.log_tail))]
    Exited {
        /// The server, e.g. `redis-server (pid 123, port 4567)`.
        what: String,
        /// Its exit status.
        status: ExitStatus,
        /// Last lines of the server's log.
        log_tail: String,
    },
    /// The server kept running but did not answer its protocol in time.
    #[error("{what} was not ready: {reason}{}", show_tail(.log_tail))]
    NotReady {
        /// The server, e.g. `nats-server (pid 123, port 4567)`.
        what: String,
        /// Why, including the last failed readiness attempt.
        reason: String,
        /// Last lines of the server's log.
        log_tail: String,
    },
    /// The running server could not be stopped (during `restart()`).
    #[error("could not stop {what}: {source}")]
    Stop {
        /// The server, e.g. `redis-server (pid 123, port 4567)`.
        what: String,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
}

/// Coarse classification of a [`HarnessError`], for matching without the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HarnessErrorKind {
    /// The binary is missing or the override variable is wrong.
    NotFound,
    /// The process could not be spawned.
    Spawn,
    /// The port was taken by another process.
    PortInUse,
    /// The process exited during start-up.
    Exited,
    /// The process did not answer in time.
    NotReady,
    /// Local I/O trouble: ports, scratch directory, stopping the process.
    Io,
}

impl HarnessError {
    /// The kind of this error.
    pub fn kind(&self) -> HarnessErrorKind {
        match self {
            Self::NotFound { .. } | Self::BadOverride { .. } => HarnessErrorKind::NotFound,
            Self::Spawn(_) => HarnessErrorKind::Spawn,
            Self::PortInUse { .. } => HarnessErrorKind::PortInUse,
            Self::Exited { .. } => HarnessErrorKind::Exited,
            Self::NotReady { .. } => HarnessErrorKind::NotReady,
            Self::NoFreePort(_) | Self::TempDir { .. } | Self::Stop { .. } => HarnessErrorKind::Io,
        }
    }
}

/// Formats a log tail for an error message (a leading newline, then the lines).
fn show_tail(tail: &str) -> String {
    if tail.trim().is_empty() {
        "\n(the server log is empty)".to_owned()
    } else {
        format!(
            "\n--- last lines of the server log ---\n{}",
            tail.trim_end()
        )
    }
}

/// A running `nats-server` on `127.0.0.1`, killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    process: ServerProcess,
}

impl NatsServer {
    /// Starts `nats-server` on a free loopback port and waits until it sends its
    /// `INFO` line.
    pub fn start() -> Result<NatsServer, HarnessError> {
        ServerProcess::start(Flavor::Nats, false).map(|process| NatsServer { process })
    }

    /// Client URL, e.g. `nats://127.0.0.1:4567`.
    pub fn url(&self) -> String {
        self.process.url()
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// Process id of the server (of the last one started, if a restart failed).
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// The file that collects the server's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.process.log_path()
    }

    /// Kills the server and starts a new one on the same port, waiting until it is
    /// ready. Connected clients see the connection drop and can reconnect to
    /// [`url`](Self::url).
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.process.restart()
    }

    /// Kills the server (an outage): clients see connections drop and
    /// reconnects refused until [`resume`](Self::resume).
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        self.process.stop()
    }

    /// Starts the server again on the same port after [`stop`](Self::stop).
    pub fn resume(&mut self) -> Result<(), HarnessError> {
        self.process.resume()
    }
}

/// Sends one command to the Redis on `127.0.0.1:port` over RESP and returns
/// the raw answer (for tests that look at or steer Redis directly).
pub fn redis_command(port: u16, args: &[&str]) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes())?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A running `redis-server` on `127.0.0.1` without persistence, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    process: ServerProcess,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it answers
    /// `PING` with `+PONG`.
    pub fn start() -> Result<RedisServer, HarnessError> {
        ServerProcess::start(Flavor::Redis, false).map(|process| RedisServer { process })
    }

    /// Starts `redis-server` with an append-only file synced on every write,
    /// so what was stored survives [`stop`](Self::stop) and
    /// [`resume`](Self::resume), as with a production Redis.
    pub fn start_durable() -> Result<RedisServer, HarnessError> {
        ServerProcess::start(Flavor::Redis, true).map(|process| RedisServer { process })
    }

    /// Kills the server (an outage): clients see connections drop and
    /// reconnects refused until [`resume`](Self::resume).
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        self.process.stop()
    }

    /// Starts the server again on the same port after [`stop`](Self::stop).
    pub fn resume(&mut self) -> Result<(), HarnessError> {
        self.process.resume()
    }

    /// Client URL, e.g. `redis://127.0.0.1:4567`.
    pub fn url(&self) -> String {
        self.process.url()
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// Process id of the server (of the last one started, if a restart failed).
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// The file that collects the server's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.process.log_path()
    }

    /// Kills the server and starts a new, empty one on the same port, waiting until
    /// it is ready. All data is lost, since nothing is persisted.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.process.restart()
    }
}

/// Which server a [`ServerProcess`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    Nats,
    Redis,
}

impl Flavor {
    fn binary(self) -> &'static str {
        match self {
            Flavor::Nats => "nats-server",
            Flavor::Redis => "redis-server",
        }
    }

    fn package(self) -> &'static str {
        // The Debian packages are named after the binaries.
        self.binary()
    }

    fn env_var(self) -> &'static str {
        match self {
            Flavor::Nats => "SB_NATS_SERVER_BIN",
            Flavor::Redis => "SB_REDIS_SERVER_BIN",
        }
    }

    fn scheme(self) -> &'static str {
        match self {
            Flavor::Nats => "nats",
            Flavor::Redis => "redis",
        }
    }
}

/// The shared machinery behind [`NatsServer`] and [`RedisServer`].
#[derive(Debug)]
struct ServerProcess {
    flavor: Flavor,
    /// Redis only: an append-only file synced on every write, so data
    /// survives [`RedisServer::stop`] and [`RedisServer::resume`].
    durable: bool,
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    pid: u32,
    /// `None` only after a failed `restart()`.
    child: Option<Child>,
}

impl ServerProcess {
    fn start(flavor: Flavor, durable: bool) -> Result<Self, HarnessError> {
        let binary = locate_binary(flavor)?;
        let dir = create_temp_dir(flavor)?;
        match start_on_free_port(flavor, durable, &binary, &dir) {
            Ok((child, port)) => {
                let pid = child.id();
                tracing::debug!(
                    server = flavor.binary(),
                    pid,
                    port,
                    dir = %dir.display(),
                    "test server started"
                );
                Ok(Self {
                    flavor,
                    durable,
                    binary,
                    dir,
                    port,
                    pid,
                    child: Some(child),
                })
            }
            Err(err) => {
                remove_dir(&dir);
                Err(err)
            }
        }
    }

    fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.flavor.scheme(), self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    fn what(&self) -> String {
        describe(self.flavor, self.pid, self.port)
    }

    fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop()?;
        self.resume()
    }

    /// Starts the server again on its port and directory after [`Self::stop`].
    fn resume(&mut self) -> Result<(), HarnessError> {
        if self.child.is_some() {
            return Ok(());
        }
        // The old listening socket is gone once the process has been reaped, but give
        // the kernel (and any racing process) a moment if the bind fails anyway.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match launch(
                self.flavor,
                self.durable,
                &self.binary,
                &self.dir,
                self.port,
            ) {
                Ok(child) => {
                    self.pid = child.id();
                    self.child = Some(child);
                    tracing::debug!(
                        server = self.flavor.binary(),
                        pid = self.pid,
                        port = self.port,
                        "test server restarted"
                    );
                    return Ok(());
                }
                Err(err)
                    if err.kind() == HarnessErrorKind::PortInUse && Instant::now() < deadline =>
                {
                    tracing::debug!(error = %err, "port not free yet, retrying restart");
                    thread::sleep(RESTART_RETRY_INTERVAL);
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Kills and reaps the current process, if any.
    fn stop(&mut self) -> Result<(), HarnessError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let result = child.kill().and_then(|()| child.wait());
        match result {
            Ok(_) => Ok(()),
            Err(source) => {
                let what = self.what();
                // Keep the handle so Drop gets another go at it.
                self.child = Some(child);
                Err(HarnessError::Stop { what, source })
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(err) = child.kill() {
                tracing::warn!(server = %self.what(), error = %err, "could not kill test server");
            }
            if let Err(err) = child.wait() {
                tracing::warn!(server = %self.what(), error = %err, "could not reap test server");
            }
        }
        remove_dir(&self.dir);
    }
}

fn describe(flavor: Flavor, pid: u32, port: u16) -> String {
    format!("{} (pid {pid}, port {port})", flavor.binary())
}

fn remove_dir(dir: &Path) {
    if let Err(err) = fs::remove_dir_all(dir)
        && err.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %err, "could not remove test server directory");
    }
}

/// Starts the server on a fresh free port, retrying on a port clash.
fn start_on_free_port(
    flavor: Flavor,
    durable: bool,
    binary: &Path,
    dir: &Path,
) -> Result<(Child, u16), HarnessError> {
    let mut attempt = 1;
    loop {
        let port = free_port()?;
        match launch(flavor, durable, binary, dir, port) {
            Ok(child) => return Ok((child, port)),
            Err(err) if err.kind() == HarnessErrorKind::PortInUse && attempt < START_ATTEMPTS => {
                tracing::debug!(attempt, error = %err, "port clash, retrying on another port");
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Asks the kernel for a free loopback port. The listener is dropped at once, so the
/// port is only very likely to be free when the server binds it; the caller retries.
fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(HarnessError::NoFreePort)?;
    let port = listener
        .local_addr()
        .map_err(HarnessError::NoFreePort)?
        .port();
    Ok(port)
}

/// Unique-enough suffix for directory and server names: pid, time, counter.
fn unique_suffix() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{}-{nanos:09}-{seq}", std::process::id())
}

fn create_temp_dir(flavor: Flavor) -> Result<PathBuf, HarnessError> {
    let base = std::env::temp_dir();
    loop {
        let dir = base.join(format!(
            "switchboard-{}-{}",
            flavor.binary(),
            unique_suffix()
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            // A leftover from an earlier run with a recycled pid: pick another name.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(HarnessError::TempDir { path: dir, source }),
        }
    }
}

/// Finds the server binary: the override variable first, then `PATH`, then the
/// usual system directories.
fn locate_binary(flavor: Flavor) -> Result<PathBuf, HarnessError> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    dirs.extend(FALLBACK_DIRS.iter().map(PathBuf::from));
    locate_binary_in(flavor, std::env::var_os(flavor.env_var()), &dirs)
}

fn locate_binary_in(
    flavor: Flavor,
    override_value: Option<OsString>,
    dirs: &[PathBuf],
) -> Result<PathBuf, HarnessError> {
    if let Some(value) = override_value.filter(|value| !value.is_empty()) {
        let path = PathBuf::from(&value);
        let is_bare_name = path.components().count() == 1 && path.parent() == Some(Path::new(""));
        let found = if is_bare_name {
            search_dirs(&value, dirs)
        } else {
            is_executable(&path).then_some(path.clone())
        };
        return found.ok_or(HarnessError::BadOverride {
            var: flavor.env_var(),
            binary: flavor.binary(),
            path,
        });
    }
    search_dirs(OsStr::new(flavor.binary()), dirs).ok_or(HarnessError::NotFound {
        binary: flavor.binary(),
        package: flavor.package(),
    })
}

fn search_dirs(name: &OsStr, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        // An empty PATH entry means "the current directory"; never run that by accident.
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                meta.permissions().mode() & 0o111 != 0
            }
            #[cfg(not(unix))]
            {
                true
            }
        }
        _ => false,
    }
}

/// Spawns one server process on `port` and waits until it is ready. On failure the
/// process is killed and reaped before the error is returned.
fn launch(
    flavor: Flavor,
    durable: bool,
    binary: &Path,
    dir: &Path,
    port: u16,
) -> Result<Child, HarnessError> {
    let name = format!("sb-harness-{}", unique_suffix());
    let log_path = dir.join(LOG_FILE);
    let log = File::create(&log_path).map_err(|source| HarnessError::TempDir {
        path: log_path.clone(),
        source,
    })?;
    let log_for_stderr = log.try_clone().map_err(|source| HarnessError::TempDir {
        path: log_path.clone(),
        source,
    })?;

    let port_arg = port.to_string();
    let mut command = Command::new(binary);
    match flavor {
        Flavor::Nats => {
            let config_path = dir.join(NATS_CONFIG_FILE);
            fs::write(&config_path, nats_config(&name)).map_err(|source| {
                HarnessError::TempDir {
                    path: config_path.clone(),
                    source,
                }
            })?;
            command
                .arg("-c")
                .arg(&config_path)
                .args(["-a", "127.0.0.1", "-p", &port_arg]);
        }
        Flavor::Redis => {
            command
                .args(["--port", &port_arg, "--bind", "127.0.0.1"])
                .args(["--save", "", "--daemonize", "no"])
                .args(if durable {
                    ["--appendonly", "yes", "--appendfsync", "always"]
                } else {
                    ["--appendonly", "no", "--appendfsync", "everysec"]
                })
                .arg("--dir")
                .arg(dir);
        }
    }
    command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr);

    let mut child = command.spawn().map_err(HarnessError::Spawn)?;
    match wait_ready(flavor, &mut child, port, &name, &log_path) {
        Ok(()) => Ok(child),
        Err(err) => {
            // Best effort: the process may already be gone.
            let _ = child.kill();
            let _ = child.wait();
            Err(err)
        }
    }
}

fn nats_config(server_name: &str) -> String {
    format!(
        "# Written by switchboard-test-harness: plain core NATS for tests.\n\
         # No monitoring port, no JetStream, no clustering, no leaf nodes.\n\
         # Address and port are given on the command line.\n\
         server_name: \"{server_name}\"\n"
    )
}

/// What a readiness probe found on the port.
enum Probe {
    /// Our process answered.
    Ours,
    /// Something else answered; the string says what.
    Foreign(String),
}

fn wait_ready(
    flavor: Flavor,
    child: &mut Child,
    port: u16,
    server_name: &str,
    log_path: &Path,
) -> Result<(), HarnessError> {
    let pid = child.id();
    let what = || describe(flavor, pid, port);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let log_tail = read_log_tail(log_path);
                return Err(
                    if log_tail
                        .to_ascii_lowercase()
                        .contains("address already in use")
                    {
                        HarnessError::PortInUse {
                            what: what(),
                            port,
                            detail: format!("the server exited ({status})"),
                            log_tail,
                        }
                    } else {
                        HarnessError::Exited {
                            what: what(),
                            status,
                            log_tail,
                        }
                    },
                );
            }
            Ok(None) => {}
            // Rare and not fatal by itself: the connection attempt below decides.
            Err(err) => {
                tracing::debug!(server = %what(), error = %err, "could not poll test server")
            }
        }

        let last_failure = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => match probe(flavor, stream, server_name, pid) {
                Ok(Probe::Ours) => return Ok(()),
                Ok(Probe::Foreign(detail)) => {
                    return Err(HarnessError::PortInUse {
                        what: what(),
                        port,
                        detail,
                        log_tail: read_log_tail(log_path),
                    });
                }
                Err(err) => format!("protocol probe on {addr} failed: {err}"),
            },
            Err(err) => format!("connecting to {addr} failed: {err}"),
        };

        if Instant::now() >= deadline {
            return Err(HarnessError::NotReady {
                what: what(),
                reason: format!(
                    "no answer within {}s; last attempt: {last_failure}",
                    READY_TIMEOUT.as_secs()
                ),
                log_tail: read_log_tail(log_path),
            });
        }
        thread::sleep(POLL_INTERVAL);
    }
}

fn probe(flavor: Flavor, stream: TcpStream, server_name: &str, pid: u32) -> io::Result<Probe> {
    stream.set_read_timeout(Some(PROBE_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream);
    match flavor {
        Flavor::Nats => probe_nats(&mut reader, server_name),
        Flavor::Redis => probe_redis(&mut reader, pid),
    }
}

/// A NATS server greets every client with `INFO {json}\r\n`; ours carries our name.
fn probe_nats(reader: &mut BufReader<TcpStream>, server_name: &str) -> io::Result<Probe> {
    let line = read_line(reader)?;
    if !line.starts_with("INFO {") {
        return Ok(Probe::Foreign(format!(
            "expected a NATS INFO line, got {:?}",
            shorten(&line)
        )));
    }
    if !line.contains(&format!("\"server_name\":\"{server_name}\"")) {
        return Ok(Probe::Foreign(format!(
            "a different NATS server answers: {}",
            shorten(&line)
        )));
    }
    Ok(Probe::Ours)
}

/// `PING` must give `+PONG`, and `INFO server` must report our process id.
fn probe_redis(reader: &mut BufReader<TcpStream>, pid: u32) -> io::Result<Probe> {
    reader.get_mut().write_all(b"PING\r\n")?;
    let line = read_line(reader)?;
    if line.starts_with("-LOADING") {
        return Err(io::Error::other("redis is still loading"));
    }
    if line != "+PONG" {
        return Ok(Probe::Foreign(format!(
            "expected +PONG, got {:?}",
            shorten(&line)
        )));
    }

    reader.get_mut().write_all(b"INFO server\r\n")?;
    let header = read_line(reader)?;
    let Some(len) = header
        .strip_prefix('$')
        .and_then(|len| len.parse::<usize>().ok())
    else {
        return Ok(Probe::Foreign(format!(
            "expected a bulk reply to INFO, got {:?}",
            shorten(&header)
        )));
    };
    if len > MAX_BULK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("INFO reply of {len} bytes is implausibly large"),
        ));
    }
    let mut body = vec![0; len + 2];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body);
    let reported = body
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .map(str::trim);
    if reported == Some(pid.to_string().as_str()) {
        Ok(Probe::Ours)
    } else {
        Ok(Probe::Foreign(format!(
            "a different Redis answers (process_id {}, expected {pid})",
            reported.unwrap_or("missing")
        )))
    }
}

/// Reads one CRLF- or LF-terminated line (without the terminator), bounded in size.
fn read_line(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut buf = Vec::new();
    reader.by_ref().take(MAX_LINE).read_until(b'\n', &mut buf)?;
    if buf.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed or line too long before a full line arrived",
        ));
    }
    let line = String::from_utf8_lossy(&buf);
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 200;
    if text.chars().count() <= MAX_CHARS {
        text.to_owned()
    } else {
        let head: String = text.chars().take(MAX_CHARS).collect();
        format!("{head}…")
    }
}

/// The last [`LOG_TAIL_LINES`] lines of the log, or a note saying why there are none.
fn read_log_tail(log_path: &Path) -> String {
    match read_end_of_file(log_path, LOG_TAIL_BYTES) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            lines[start..].join("\n")
        }
        Err(err) => format!("(could not read {}: {err})", log_path.display()),
    }
}

fn read_end_of_file(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const STOP_TIMEOUT: Duration = Duration::from_secs(5);

    fn connect(port: u16) -> io::Result<BufReader<TcpStream>> {
        let stream = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(2),
        )?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(BufReader::new(stream))
    }

    /// The first line a NATS server sends.
    fn nats_greeting(port: u16) -> io::Result<String> {
        read_line(&mut connect(port)?)
    }

    /// The reply to an inline `PING`.
    fn redis_ping(port: u16) -> io::Result<String> {
        let mut reader = connect(port)?;
        reader.get_mut().write_all(b"PING\r\n")?;
        read_line(&mut reader)
    }

    /// Polls until connecting to `port` is refused; false if it still accepts after
    /// [`STOP_TIMEOUT`].
    fn refused_eventually(port: u16) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => return true,
                _ => thread::sleep(Duration::from_millis(20)),
            }
        }
        false
    }

    #[test]
    fn nats_server_sends_info() -> TestResult {
        let server = NatsServer::start()?;
        assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
        assert_ne!(server.pid(), 0);
        let info = nats_greeting(server.port())?;
        assert!(info.starts_with("INFO {"), "unexpected greeting: {info}");
        assert!(
            info.contains(&format!("\"port\":{}", server.port())),
            "unexpected greeting: {info}"
        );
        assert!(server.log_path().is_file());
        Ok(())
    }

    #[test]
    fn redis_server_answers_pong() -> TestResult {
        let server = RedisServer::start()?;
        assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
        assert_ne!(server.pid(), 0);
        assert_eq!(redis_ping(server.port())?, "+PONG");
        Ok(())
    }

    #[test]
    fn servers_started_together_get_different_ports() -> TestResult {
        let nats_a = NatsServer::start()?;
        let nats_b = NatsServer::start()?;
        let redis_a = RedisServer::start()?;
        let redis_b = RedisServer::start()?;
        let mut ports = vec![nats_a.port(), nats_b.port(), redis_a.port(), redis_b.port()];
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 4, "ports clash: {ports:?}");
        assert!(nats_greeting(nats_a.port())?.starts_with("INFO {"));
        assert!(nats_greeting(nats_b.port())?.starts_with("INFO {"));
        assert_eq!(redis_ping(redis_a.port())?, "+PONG");
        assert_eq!(redis_ping(redis_b.port())?, "+PONG");
        Ok(())
    }

    #[test]
    fn nats_port_closes_and_dir_is_removed_on_drop() -> TestResult {
        let server = NatsServer::start()?;
        let port = server.port();
        let dir = server.process.dir.clone();
        assert!(dir.is_dir());
        drop(server);
        assert!(
            refused_eventually(port),
            "port {port} still accepts after drop"
        );
        assert!(!dir.exists(), "{} was not removed", dir.display());
        Ok(())
    }

    #[test]
    fn redis_port_closes_and_dir_is_removed_on_drop() -> TestResult {
        let server = RedisServer::start()?;
        let port = server.port();
        let dir = server.process.dir.clone();
        assert!(dir.is_dir());
        drop(server);
        assert!(
            refused_eventually(port),
            "port {port} still accepts after drop"
        );
        assert!(!dir.exists(), "{} was not removed", dir.display());
        Ok(())
    }

    #[test]
    fn nats_restart_keeps_port_and_serves_again() -> TestResult {
        let mut server = NatsServer::start()?;
        let (port, url, old_pid) = (server.port(), server.url(), server.pid());
        let mut old_conn = connect(port)?;
        assert!(read_line(&mut old_conn)?.starts_with("INFO {"));

        server.restart()?;
        assert_eq!(server.port(), port);
        assert_eq!(server.url(), url);
        assert_ne!(server.pid(), old_pid);
        // The old connection died with the old process...
        let mut rest = Vec::new();
        if let Err(err) = old_conn.read_to_end(&mut rest) {
            assert!(
                !matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "the old connection is still open: {err}"
            );
        }
        // ...and the new process serves on the same port.
        assert!(nats_greeting(port)?.starts_with("INFO {"));
        Ok(())
    }

    #[test]
    fn redis_restart_keeps_port_and_serves_again() -> TestResult {
        let mut server = RedisServer::start()?;
        let (port, old_pid) = (server.port(), server.pid());
        assert_eq!(redis_ping(port)?, "+PONG");

        server.restart()?;
        assert_eq!(server.port(), port);
        assert_ne!(server.pid(), old_pid);
        assert_eq!(redis_ping(port)?, "+PONG");

        // A second restart works just as well.
        server.restart()?;
        assert_eq!(server.port(), port);
        assert_eq!(redis_ping(port)?, "+PONG");
        Ok(())
    }

    #[test]
    fn launch_on_a_taken_port_reports_port_in_use() -> TestResult {
        let holder = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = holder.local_addr()?.port();
        for flavor in [Flavor::Nats, Flavor::Redis] {
            let binary = locate_binary(flavor)?;
            let dir = create_temp_dir(flavor)?;
            let result = launch(flavor, false, &binary, &dir, port);
            remove_dir(&dir);
            let err = match result {
                Ok(_) => return Err(format!("{flavor:?} started on a taken port").into()),
                Err(err) => err,
            };
            assert_eq!(err.kind(), HarnessErrorKind::PortInUse, "{err}");
        }
        drop(holder);
        Ok(())
    }

    #[test]
    fn missing_binary_says_how_to_install_it() {
        let empty: [PathBuf; 0] = [];
        for (flavor, message) in [
            (
                Flavor::Nats,
                "nats-server not found on PATH: install it with `apt-get install nats-server`",
            ),
            (
                Flavor::Redis,
                "redis-server not found on PATH: install it with `apt-get install redis-server`",
            ),
        ] {
            match locate_binary_in(flavor, None, &empty) {
                Err(err) => {
                    assert_eq!(err.kind(), HarnessErrorKind::NotFound);
                    assert_eq!(err.to_string(), message);
                }
                Ok(path) => panic!("found {} in no directories", path.display()),
            }
        }
    }

    #[test]
    fn override_variable_is_honoured() -> TestResult {
        let dirs = [PathBuf::from("/no/such/dir")];
        let real = locate_binary(Flavor::Redis)?;
        assert_eq!(
            locate_binary_in(Flavor::Redis, Some(real.clone().into_os_string()), &dirs)?,
            real
        );
        let bogus = OsString::from("/no/such/redis-server");
        match locate_binary_in(Flavor::Redis, Some(bogus), &dirs) {
            Err(err @ HarnessError::BadOverride { .. }) => {
                assert_eq!(err.kind(), HarnessErrorKind::NotFound);
                assert!(err.to_string().contains("SB_REDIS_SERVER_BIN"), "{err}");
            }
            other => panic!("expected BadOverride, got {other:?}"),
        }
        // A bare name is searched for like the default binary.
        let parent = real.parent().ok_or("binary has no parent directory")?;
        let name = real.file_name().ok_or("binary has no file name")?;
        assert_eq!(
            locate_binary_in(
                Flavor::Redis,
                Some(name.to_os_string()),
                &[parent.to_path_buf()]
            )?,
            real
        );
        Ok(())
    }

    #[test]
    fn not_ready_error_shows_the_log_tail() {
        let err = HarnessError::NotReady {
            what: describe(Flavor::Nats, 42, 4222),
            reason: "no answer".to_owned(),
            log_tail: "line one\nline two".to_owned(),
        };
        let text = err.to_string();
        assert!(text.starts_with("nats-server (pid 42, port 4222) was not ready: no answer"));
        assert!(text.ends_with("line one\nline two"), "{text}");
        assert_eq!(err.kind(), HarnessErrorKind::NotReady);
    }
}
