//! The `presence` service: per-user status (online / away / busy / offline),
//! custom status text and last-seen time across all of a user's devices,
//! watch lists and room presence, and noticing dead gateways.
//!
//! - [`status`]: set and get a status, what others see, announcing changes;
//! - [`watch`]: watch lists (`LATEST` feeds per user; `replay` is here);
//! - [`room`]: presence of a room's members;
//! - [`conns`]: connections arriving and leaving;
//! - [`gateways`]: heartbeats, the connection digest check, repairs and
//!   resets of gateways;
//! - [`reaper`]: the dead-gateway reaper;
//! - [`scripts`]: the Lua and its typed results.
//!
//! Invariants:
//! - A user is online while any of their connections is registered here; the
//!   status they chose applies to all their devices.
//! - Every change bumps the user's `ver` and is pushed with `seq = ver` on
//!   `sb.presence.<t>.<u>` (a `LATEST` feed: watchers keep the newest) and,
//!   unsequenced, on each room the user is in.
//! - Gateways heartbeat on `sb.evt.conn`. One that stays silent for
//!   `presence.gateway_dead_after_ms` is claimed by exactly one presence
//!   replica (ZREM), which publishes a disconnect for each of its connections:
//!   every service then cleans up as if the sockets had closed.
//! - Each gateway's connections as recorded here converge to the gateway's
//!   own list after any outage (`gateways`): within two heartbeats of a
//!   steady difference (or `gateways::PATIENCE` under churn) and one repair.

mod conns;
mod gateways;
mod reaper;
mod room;
mod scripts;
mod status;
mod watch;

use switchboard_proto::bus::{ReplayBatch, ReplayItem, ReplayRequest, Request};
use switchboard_shared::config::PresenceConfig;
use switchboard_shared::conn_events::ConnLifecycle;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::ids::{TenantId, UserId};
use switchboard_shared::redis::Pool;

use crate::error::{LogFailure, ServiceError};
use crate::service::{Caller, Outcome, Service, parse};

pub struct Presence {
    nats: async_nats::Client,
    pool: Pool,
    cfg: PresenceConfig,
    /// For the cluster-wide cap on one user's connections.
    limits: switchboard_shared::limits::LimitsConfig,
    /// Since when NATS and Redis have answered without a break (the reaper).
    healthy_since: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Presence {
    pub fn new(
        nats: async_nats::Client,
        pool: Pool,
        cfg: PresenceConfig,
        limits: switchboard_shared::limits::LimitsConfig,
    ) -> Self {
        Self {
            nats,
            pool,
            cfg,
            limits,
            healthy_since: std::sync::Mutex::new(None),
        }
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, ServiceError> {
        Ok(self.pool.get().await?)
    }
}

impl Service for Presence {
    fn name(&self) -> &'static str {
        "presence"
    }

    async fn handle(&self, op: &str, req: Request) -> Result<Outcome, ServiceError> {
        let c = Caller::from_request(&req)?;
        match op {
            "set" => self.set(&c, parse(&req)?).await,
            "get" => self.get(&c, parse(&req)?).await,
            "subscribe" => self.subscribe(&c, parse(&req)?).await,
            "unsubscribe" => self.unsubscribe(&c, parse(&req)?).await,
            "room" => self.room(&c, parse(&req)?).await,
            other => Err(ServiceError::client(
                ErrorCode::UnknownOp,
                format!("presence has no op {other:?}"),
            )),
        }
    }

    /// A user's feed is `LATEST`: the current state, if newer than asked.
    async fn replay(&self, req: ReplayRequest) -> Result<ReplayBatch, ServiceError> {
        let tenant = TenantId::parse(&req.tenant)?;
        let user = UserId::parse(&req.key)?;
        let st = self.state(&tenant, &user).await?;
        let items = if st.ver > req.after_seq {
            vec![ReplayItem {
                seq: st.ver,
                frame: st.frame(&user),
                no_echo_to: None,
            }]
        } else {
            Vec::new()
        };
        Ok(ReplayBatch {
            items,
            head_seq: st.ver,
            first_seq: st.ver,
            gone: false,
        })
    }

    async fn on_conn_event(&self, ev: ConnLifecycle) {
        match ev {
            ConnLifecycle::Heartbeat { gw, digest } => self
                .heartbeat(&gw, digest)
                .await
                .log_failure("recording a gateway heartbeat"),
            ConnLifecycle::Connected(c) => self
                .connected(&c)
                .await
                .log_failure("registering a connection's presence"),
            ConnLifecycle::Disconnected(c) => self
                .disconnected(&c)
                .await
                .log_failure("taking a closed connection out of presence"),
        }
    }
}
