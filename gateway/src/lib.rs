//! The Switchboard edge gateway: terminates WebSockets (hyper 1 +
//! fastwebsockets), authenticates them, turns client requests into bus
//! envelopes on `sb.svc.<service>.<op>`, and writes replies and pushes back.
//!
//! It keeps only per-socket state in memory; losing a gateway loses sockets,
//! never data. Codemap:
//! - [`server`]: accept loop, HTTP routes, upgrade;
//! - [`handshake`]: origin, subprotocol and token checks;
//! - [`health`]: readiness: NATS connected and Redis answering;
//! - [`limits`]: rate limits per user and op, per-IP connection limits;
//! - [`state`]: the gateway-wide state every task shares;
//! - [`control`]: control requests to this gateway (connection pages,
//!   reset after being declared dead, the admin API's stats, kicks and
//!   drain);
//! - [`conn`]: one connection: its reader, and cleanup once it ends;
//! - [`writer`]: a connection's writer: queue, pings, drain turn, close;
//! - [`wire`]: server frames written so a cut-short one can be finished;
//! - [`drain`]: when each connection closes in a drain;
//! - [`protocol`]: the client JSON frames;
//! - [`registry`]: per-connection state and the table of live connections;
//! - [`outbox`]: a connection's bounded outbound queue;
//! - [`requests`]: a request's life: in-flight table, envelope, reply,
//!   timeouts;
//! - [`router`]: the gateway's NATS wildcard subscription, routed to
//!   connections;
//! - [`feeds`]: who follows which feed: rooms (pushes addressed to this
//!   gateway, seq ordering and gap recovery), presence and app-wide
//!   subscriptions.
#![forbid(unsafe_code)]

pub mod conn;
pub mod control;
pub mod drain;
pub mod feeds;
pub mod handshake;
pub mod health;
pub mod limits;
pub mod outbox;
pub mod protocol;
pub mod registry;
pub mod requests;
pub mod router;
pub mod server;
pub mod state;
pub mod wire;
pub mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use switchboard_shared::auth::{AuthConfigError, Authenticator};
use switchboard_shared::config::Config;
use switchboard_shared::conn_events::ConnLifecycle;
use switchboard_shared::ids::GatewayId;
use switchboard_shared::{Shutdown, bus, subjects};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::feeds::{FeedConfig, Feeds};
use crate::registry::Registry;
use crate::requests::Timeouts;
pub use crate::state::State;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error("NATS subscription failed: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error(transparent)]
    Redis(#[from] switchboard_shared::redis::RedisError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Time kept from the drain grace (at most a quarter of it) for the last
/// steps of a stop after the connections: bus tasks, NATS flush.
const FINISH: Duration = Duration::from_millis(500);

/// Binds the configured listen address.
pub async fn bind(cfg: &Config) -> Result<TcpListener, GatewayError> {
    let addr = cfg.gateway.listen;
    TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { addr, source })
}

/// Runs a gateway on `listener` until `shutdown` fires; then drains: closes
/// every client with 1012, spread over `gateway.drain_window_ms`, and
/// returns once every task it started has ended, within
/// `gateway.drain_grace_ms` of the signal.
pub async fn serve(
    cfg: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), GatewayError> {
    let auth = Authenticator::from_config(&cfg.auth)?;
    let gw = GatewayId::for_boot(cfg.gateway.id.as_deref().unwrap_or("gw"));
    if cfg.auth.hs256_secret.as_deref() == Some(switchboard_shared::config::DEV_SECRET)
        && cfg.auth.algorithms.iter().any(|a| a == "HS256")
    {
        tracing::warn!(
            "using the built-in development secret: set auth.hs256_secret (SB_AUTH__HS256_SECRET) in production"
        );
    }
    let nats = bus::connect(&cfg.nats, &format!("switchboard-gateway[{gw}]")).await?;
    let sub = nats.subscribe(subjects::gateway_wildcard(&gw)).await?;
    let ctl = nats
        .subscribe(subjects::gateway_control_wildcard(&gw))
        .await?;
    let ctl_all = nats
        .subscribe(subjects::gateway_control_all_wildcard())
        .await?;
    let redis = switchboard_shared::redis::pool(&cfg.redis)?;
    let redis_up = switchboard_shared::redis::ping(&redis).await.is_ok();
    if !redis_up {
        tracing::warn!("redis is unreachable: not ready until it answers");
    }
    bus::sync(&nats).await?;
    let tasks = TaskTracker::new();
    let feeds = Feeds::new(
        nats.clone(),
        FeedConfig {
            reorder_window: Duration::from_millis(cfg.gateway.reorder_window_ms),
            reorder_buffer: cfg.gateway.reorder_buffer,
            request_timeout: Duration::from_millis(cfg.gateway.request_timeout_ms),
            gateway: gw.to_string(),
        },
        tasks.clone(),
    );
    let cfg_limits = cfg.limits.clone();
    let state = Arc::new(State {
        conn_limit: Arc::new(Semaphore::new(cfg.gateway.max_connections)),
        cfg,
        gw,
        auth,
        nats,
        redis,
        redis_up: AtomicBool::new(redis_up),
        registry: Registry::default(),
        feeds,
        timeouts: Timeouts::default(),
        limits: Arc::new(limits::Limits::new(cfg_limits)),
        app_conns: server::AppConns::default(),
        draining: AtomicBool::new(false),
        started: Instant::now(),
        shutdown: shutdown.clone(),
        tasks,
    });
    let addr = listener.local_addr().ok();
    tracing::info!(gateway = %state.gw, ?addr, "gateway listening");

    // The bus side outlives the connections: replies to their in-flight
    // requests must still arrive while they drain.
    let stop = Shutdown::new();
    let background = TaskTracker::new();
    background.spawn(router::route(state.clone(), sub, stop.clone()));
    background.spawn(requests::sweep_timeouts(state.clone(), stop.clone()));
    background.spawn(control::serve(
        state.clone(),
        ctl,
        ctl_all,
        addr,
        stop.clone(),
    ));
    background.spawn(heartbeat(state.clone(), stop.clone()));
    background.spawn(health::watch_redis(state.clone(), stop.clone()));
    server::accept_loop(&state, &listener).await;

    // Drain (see `drain`): not ready any more, no new connections, then every
    // connection task within the grace; writers close their clients with
    // 1012 at their turn in the window, after their in-flight replies.
    state.draining.store(true, Ordering::Relaxed);
    drop(listener);
    let grace = Duration::from_millis(state.cfg.gateway.drain_grace_ms);
    let end = tokio::time::Instant::now() + grace;
    let reserve = FINISH.min(grace / 4);
    state.tasks.close();
    if tokio::time::timeout_at(end - reserve, state.tasks.wait())
        .await
        .is_err()
    {
        let left = state.registry.all();
        tracing::warn!(
            gateway = %state.gw,
            left = left.len(),
            "drain grace over with connections left"
        );
        for h in left {
            h.kill(registry::CloseReason::new(1012, "server restarting"));
        }
    }
    stop.cancel();
    background.close();
    let _ = tokio::time::timeout_at(end, background.wait()).await;
    // Bounded: NATS may be gone already.
    let _ = tokio::time::timeout_at(end, state.nats.flush()).await;
    tracing::info!(gateway = %state.gw, "gateway stopped");
    Ok(())
}

/// Announces this gateway on `sb.evt.conn` so workers can tell it is alive,
/// until `stop` fires.
async fn heartbeat(state: Arc<State>, stop: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_millis(
        state.cfg.gateway.heartbeat_interval_ms,
    ));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ev = ConnLifecycle::Heartbeat {
            gw: state.gw.clone(),
            digest: state.registry.digest(),
        };
        if let Err(e) = state.nats.publish(subjects::CONN_EVENTS, ev.encode()).await {
            tracing::warn!(error = %e, "could not publish the heartbeat");
        }
        // Buckets of users and IPs that went quiet are forgotten.
        state.limits.housekeeping();
    }
}
