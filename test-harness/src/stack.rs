//! A whole Switchboard stack for tests: NATS and Redis processes, plus
//! gateways and workers run in-process with their own shutdown signals.

use std::net::SocketAddr;
use std::time::Duration;

use switchboard_shared::Shutdown;
use switchboard_shared::auth::{Authenticator, TokenClaims};
use switchboard_shared::config::Config;
use tokio::task::JoinHandle;

use crate::servers::{NatsServer, RedisServer};

/// NATS and Redis servers for one test.
pub struct Stack {
    pub nats: NatsServer,
    pub redis: RedisServer,
}

impl Stack {
    /// Starts both servers; panics with the reason (e.g. a missing package).
    pub fn start() -> Self {
        init_logs();
        let nats = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        Self { nats, redis }
    }

    /// Like [`Stack::start`], with a Redis that keeps its data across
    /// [`RedisServer::stop`](crate::RedisServer::stop) and `resume` (for
    /// outage tests).
    pub fn start_durable() -> Self {
        init_logs();
        let nats = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
        let redis = RedisServer::start_durable().unwrap_or_else(|e| panic!("{e}"));
        Self { nats, redis }
    }

    /// A config pointing at this stack, with test-friendly timings.
    pub fn config(&self) -> Config {
        let mut cfg = Config::default();
        cfg.nats.url = self.nats.url();
        cfg.redis.url = self.redis.url();
        cfg.gateway.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.gateway.request_timeout_ms = 3_000;
        cfg.gateway.write_timeout_ms = 3_000;
        // Tests drive clients far faster than a person would; the abuse
        // limits are switched on by the tests that exercise them.
        cfg.limits.enabled = false;
        cfg
    }

    /// A NATS client for poking at the bus directly.
    pub async fn nats_client(&self) -> async_nats::Client {
        async_nats::connect(self.nats.url())
            .await
            .unwrap_or_else(|e| panic!("connect to test NATS: {e}"))
    }
}

fn init_logs() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// Mints a token valid for an hour with `cfg`'s HS256 secret.
pub fn token(cfg: &Config, app: &str, user: &str) -> String {
    token_with_rooms(cfg, app, user, &[])
}

/// Mints a token with room grants.
pub fn token_with_rooms(cfg: &Config, app: &str, user: &str, rooms: &[&str]) -> String {
    let auth = Authenticator::from_config(&cfg.auth).unwrap_or_else(|e| panic!("{e}"));
    let mut claims = TokenClaims::new(app, user, 3600);
    claims.rooms = rooms.iter().map(|r| (*r).to_owned()).collect();
    auth.mint(&claims).unwrap_or_else(|e| panic!("{e}"))
}

/// A gateway running in this process.
pub struct Gateway {
    pub addr: SocketAddr,
    shutdown: Shutdown,
    task: Option<JoinHandle<()>>,
}

impl Gateway {
    /// Starts a gateway on a free loopback port.
    pub async fn start(cfg: Config) -> Self {
        let listener = tokio::net::TcpListener::bind(cfg.gateway.listen)
            .await
            .unwrap_or_else(|e| panic!("bind gateway: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = switchboard_gateway::serve(cfg, listener, s).await {
                panic!("gateway failed: {e}");
            }
        });
        Self {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Graceful stop: clients get 1012; waits for the gateway to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Worker services running in this process.
pub struct Workers {
    shutdown: Shutdown,
    task: Option<JoinHandle<()>>,
}

impl Workers {
    /// Starts `services`; returns once their subscriptions are in place.
    pub async fn start(cfg: Config, services: &[&str]) -> Self {
        let shutdown = Shutdown::new();
        let services: Vec<String> = services.iter().map(|s| (*s).to_owned()).collect();
        let running = switchboard_workers::start(cfg, &services, shutdown.clone())
            .await
            .unwrap_or_else(|e| panic!("workers failed to start: {e}"));
        let task = tokio::spawn(async move {
            if let Err(e) = running.wait().await {
                panic!("workers failed: {e}");
            }
        });
        Self {
            shutdown,
            task: Some(task),
        }
    }

    /// Stops the services, letting in-flight requests finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A gateway running as its own process (the real binary), so a test can
/// kill it without a goodbye.
pub struct GatewayProcess {
    pub addr: SocketAddr,
    child: std::process::Child,
}

impl GatewayProcess {
    /// Starts the gateway binary at `bin` with `cfg` passed as `SB_`
    /// variables, on a free port; returns once `/readyz` answers 200.
    pub async fn start(bin: &str, cfg: &Config) -> Self {
        Self::start_with_env(bin, cfg, &[]).await
    }

    /// Like [`GatewayProcess::start`], with more `SB_` variables for
    /// settings `start` does not pass (e.g. per-app limits).
    pub async fn start_with_env(bin: &str, cfg: &Config, env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let g = &cfg.gateway;
        let child = std::process::Command::new(bin)
            .env("SB_NATS__URL", &cfg.nats.url)
            .env("SB_REDIS__URL", &cfg.redis.url)
            .env("SB_GATEWAY__LISTEN", addr.to_string())
            .env(
                "SB_GATEWAY__HEARTBEAT_INTERVAL_MS",
                g.heartbeat_interval_ms.to_string(),
            )
            .env(
                "SB_GATEWAY__REQUEST_TIMEOUT_MS",
                g.request_timeout_ms.to_string(),
            )
            .env("SB_LOG__FILTER", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if ready(addr).await {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway process did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { addr, child }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the gateway vanishes without closing anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `GET /readyz` answers 200.
pub(crate) async fn ready(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    buf.starts_with(b"HTTP/1.1 200")
}
