//! Gateway-wide state shared by every task: configuration, identity, the bus
//! connection, the live connections, the room feeds and the request
//! deadlines, plus the readiness and drain flags and the dependencies'
//! health.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use switchboard_shared::Shutdown;
use switchboard_shared::auth::Authenticator;
use switchboard_shared::config::Config;
use switchboard_shared::ids::GatewayId;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::feeds::Feeds;
use crate::registry::Registry;
use crate::requests::Timeouts;

/// Gateway-wide state shared by every task.
pub struct State {
    pub cfg: Config,
    pub gw: GatewayId,
    pub auth: Authenticator,
    pub nats: async_nats::Client,
    /// Probed for readiness (`health`); the gateway stores nothing itself.
    pub redis: switchboard_shared::redis::Pool,
    /// Whether the last Redis probe answered.
    pub redis_up: AtomicBool,
    pub registry: Registry,
    pub feeds: Feeds,
    pub timeouts: Timeouts,
    /// Request rate limits (per user and op).
    pub limits: Arc<crate::limits::Limits>,
    /// Each app's connection count, for the `connections_per_app` quota.
    pub app_conns: crate::server::AppConns,
    pub conn_limit: Arc<Semaphore>,
    pub draining: AtomicBool,
    pub started: Instant,
    pub shutdown: Shutdown,
    /// Every per-connection task (HTTP connections, sockets, readers), feed
    /// task and feed replay, so a drain can wait for all of them.
    pub tasks: TaskTracker,
}

impl State {
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
            && self.bus_up()
            && self.redis_up.load(Ordering::Relaxed)
    }

    /// Whether the gateway is connected to NATS. While it is not, requests
    /// are answered `unavailable` at once and new connections are refused.
    pub fn bus_up(&self) -> bool {
        self.nats.connection_state() == async_nats::connection::State::Connected
    }
}
