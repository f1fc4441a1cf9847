//! Switchboard's own binaries run as child processes that a soak or a
//! benchmark can kill (SIGKILL), pause (SIGSTOP / SIGCONT) and start again
//! with the same command, and whose unexpected exits can be noticed.
//!
//! - [`ChildProcess`]: any command, its output appended to a log file.
//! - [`GatewayChild`]: the gateway binary on a fixed loopback port (kept
//!   across restarts, so clients keep their URL list); ready once `/readyz`
//!   answers 200.
//! - [`WorkersChild`]: the workers binary with a list of services.
//!
//! Configuration goes to the child as `SB_SECTION__KEY` variables given by
//! the caller. Unlike [`GatewayProcess`](crate::GatewayProcess), nothing here
//! panics: every failure is a [`ProcessError`].

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// How long a gateway gets to answer `/readyz` with 200.
const GATEWAY_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors from starting or signalling a child process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the log {}: {source}", .path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot send {signal} to {what}: {detail}")]
    Signal {
        what: String,
        signal: &'static str,
        detail: String,
    },
    #[error("{what} exited while starting ({status}); see {}", .log.display())]
    Exited {
        what: String,
        status: ExitStatus,
        log: PathBuf,
    },
    #[error("{what} was not ready within {secs} s; see {}", .log.display())]
    NotReady {
        what: String,
        secs: u64,
        log: PathBuf,
    },
    #[error("no free loopback port: {0}")]
    NoPort(#[source] std::io::Error),
}

/// A child process started from a fixed command line.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    pid: u32,
    starts: u32,
}

impl ChildProcess {
    /// Starts `program args` with `env` added to this process's environment;
    /// stdout and stderr are appended to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
    ) -> Result<Self, ProcessError> {
        let mut p = Self {
            name: name.to_owned(),
            program: program.to_owned(),
            args: args.to_vec(),
            env: env.to_vec(),
            log: log.to_owned(),
            child: None,
            pid: 0,
            starts: 0,
        };
        p.start()?;
        Ok(p)
    }

    fn start(&mut self) -> Result<(), ProcessError> {
        let open = || -> std::io::Result<(File, File)> {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)?;
            let g = f.try_clone()?;
            Ok((f, g))
        };
        let (out, err) = open().map_err(|source| ProcessError::Log {
            path: self.log.clone(),
            source,
        })?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            what: self.what(),
            source,
        })?;
        self.pid = child.id();
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// `name (pid N)`.
    pub fn what(&self) -> String {
        format!("{} (pid {})", self.name, self.pid)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Pid of the current (or last) process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How many times the command was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// SIGKILL, then reap. Does nothing when the process is not running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the same command again (after [`kill`](Self::kill), or after
    /// the process ended); kills a running one first.
    pub fn restart(&mut self) -> Result<(), ProcessError> {
        self.kill();
        self.start()
    }

    /// SIGSTOP: the process freezes with its sockets open.
    pub fn pause(&self) -> Result<(), ProcessError> {
        self.signal("STOP")
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn cont(&self) -> Result<(), ProcessError> {
        self.signal("CONT")
    }

    fn signal(&self, signal: &'static str) -> Result<(), ProcessError> {
        let err = |detail: String| ProcessError::Signal {
            what: self.what(),
            signal,
            detail,
        };
        if self.child.is_none() {
            return Err(err("not running".into()));
        }
        let out = Command::new("kill")
            .args(["-s", signal, &self.pid.to_string()])
            .output()
            .map_err(|e| err(format!("running kill: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(err(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
        }
    }

    /// Whether a process was started and has not been killed (it may have
    /// exited by itself: see [`exited`](Self::exited)).
    pub fn started(&self) -> bool {
        self.child.is_some()
    }

    /// The exit status if the process ended by itself (not through
    /// [`kill`](Self::kill)); it is reaped then, and [`started`](Self::started)
    /// turns false.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A paused process must be able to die.
            let _ = self.signal("CONT");
        }
        self.kill();
    }
}

/// A free loopback port (bound and released at once).
pub fn free_port() -> Result<u16, ProcessError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(ProcessError::NoPort)
}

/// The gateway binary on a loopback port that stays the same across restarts.
#[derive(Debug)]
pub struct GatewayChild {
    pub addr: SocketAddr,
    pub process: ChildProcess,
}

impl GatewayChild {
    /// Starts `bin` listening on `127.0.0.1:<port>` (a free port when
    /// `None`), with `env` (NATS and Redis URLs, timings); returns once
    /// `/readyz` answers 200.
    pub async fn start(
        name: &str,
        bin: &Path,
        port: Option<u16>,
        env: &[(String, String)],
        log: &Path,
    ) -> Result<Self, ProcessError> {
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut env = env.to_vec();
        env.push(("SB_GATEWAY__LISTEN".into(), addr.to_string()));
        let process = ChildProcess::spawn(name, bin, &[], &env, log)?;
        let mut g = Self { addr, process };
        g.wait_ready().await?;
        Ok(g)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Waits until `/readyz` answers 200 (or the process exits).
    pub async fn wait_ready(&mut self) -> Result<(), ProcessError> {
        let deadline = tokio::time::Instant::now() + GATEWAY_READY_TIMEOUT;
        loop {
            if crate::stack::ready(self.addr).await {
                return Ok(());
            }
            if let Some(status) = self.process.exited() {
                return Err(ProcessError::Exited {
                    what: self.process.what(),
                    status,
                    log: self.process.log_path().to_owned(),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProcessError::NotReady {
                    what: self.process.what(),
                    secs: GATEWAY_READY_TIMEOUT.as_secs(),
                    log: self.process.log_path().to_owned(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the gateway again on the same port and waits until it is ready.
    pub async fn restart(&mut self) -> Result<(), ProcessError> {
        self.process.restart()?;
        self.wait_ready().await
    }
}

/// The workers binary running `services`.
#[derive(Debug)]
pub struct WorkersChild {
    pub process: ChildProcess,
}

impl WorkersChild {
    /// Starts `bin <services…>` with `env`. Workers have no readiness
    /// endpoint: the caller finds out from requests being served.
    pub fn start(
        name: &str,
        bin: &Path,
        services: &[&str],
        env: &[(String, String)],
        log: &Path,
    ) -> Result<Self, ProcessError> {
        let args: Vec<String> = services.iter().map(|s| (*s).to_owned()).collect();
        Ok(Self {
            process: ChildProcess::spawn(name, bin, &args, env, log)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("sb-process-{tag}-{}.log", std::process::id()))
    }

    #[test]
    fn a_child_can_be_paused_resumed_killed_and_restarted() -> Result<(), ProcessError> {
        let log = log("sleeper");
        let mut p = ChildProcess::spawn("sleeper", Path::new("sleep"), &["30".into()], &[], &log)?;
        let first = p.pid();
        p.pause()?;
        let state = std::fs::read_to_string(format!("/proc/{first}/stat")).unwrap_or_default();
        assert!(state.contains(") T "), "not stopped: {state}");
        p.cont()?;
        assert!(p.exited().is_none());
        p.restart()?;
        assert_ne!(p.pid(), first);
        assert_eq!(p.starts(), 2);
        p.kill();
        assert!(!p.started());
        assert!(p.pause().is_err(), "a killed process cannot be paused");
        let _ = std::fs::remove_file(&log);
        Ok(())
    }

    #[test]
    fn an_exit_on_its_own_is_reported_once() -> Result<(), ProcessError> {
        let log = log("false");
        let mut p = ChildProcess::spawn("false", Path::new("false"), &[], &[], &log)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = p.exited() {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "`false` did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(!status.success());
        assert!(p.exited().is_none(), "reported twice");
        let _ = std::fs::remove_file(&log);
        Ok(())
    }
}
