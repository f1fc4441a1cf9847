//! The gateway's view of its dependencies, for `/readyz`. NATS is watched
//! through the client's connection state ([`State::bus_up`]); Redis, which
//! the gateway itself barely uses, is probed with a `PING` every
//! [`PROBE_INTERVAL`] so that a load balancer stops sending new clients to a
//! cluster whose workers cannot store anything.
//!
//! Policy while Redis is down: the gateway reports unready but still accepts
//! connections (authentication needs no Redis), and workers answer requests
//! that need storage with `unavailable`. While NATS is down it refuses new
//! connections (`server::upgrade`), since nothing could reach a worker.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchboard_shared::Shutdown;

use crate::state::State;

/// How often Redis is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Probes Redis until `stop` fires, keeping `State::redis_up` current and
/// logging each change once.
pub async fn watch_redis(state: Arc<State>, stop: Shutdown) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let up = tokio::select! {
            _ = stop.cancelled() => return,
            r = switchboard_shared::redis::ping(&state.redis) => r,
        };
        let was = state.redis_up.swap(up.is_ok(), Ordering::Relaxed);
        match up {
            Err(e) if was => tracing::warn!(error = %e, "redis is unreachable: not ready"),
            Ok(()) if !was => tracing::info!("redis answers again"),
            _ => {}
        }
    }
}
