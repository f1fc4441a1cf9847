//! The dead-gateway reaper. Gateways heartbeat on `sb.evt.conn`
//! (`conns.rs` records them in `keys::GATEWAYS`). One that stays silent for
//! `presence.gateway_dead_after_ms` is claimed with ZREM by exactly one
//! presence replica, which publishes a `DISCONNECTED` for each connection
//! it held (`keys::gateway_conns`): every service then cleans up as if the
//! sockets had closed. It leaves a tombstone, so that a gateway that was only
//! paused learns it was declared dead at its next heartbeat (`gateways`).
//!
//! Heartbeats cannot be recorded while this worker has lost NATS or Redis,
//! so silence then says nothing about the gateways: the reaper claims
//! nothing until both have been back for `presence.gateway_dead_after_ms`.

use deadpool_redis::redis;
use switchboard_shared::conn_events::{ConnInfo, ConnLifecycle};
use switchboard_shared::ids::GatewayId;
use switchboard_shared::members::TenantUser;
use switchboard_shared::{keys, now_ms, subjects};

use super::Presence;
use crate::error::{LogFailure, ServiceError};

/// How many dead gateways one pass reaps at most.
const REAP_BATCH: usize = 20;

impl Presence {
    /// Claims gateways that stopped heartbeating and disconnects their
    /// connections on the bus. Returns how many gateways were reaped.
    pub async fn reap_dead_gateways(&self) -> usize {
        let bus_up = self.nats.connection_state() == async_nats::connection::State::Connected;
        let mut r = match self.conn().await {
            Ok(r) if bus_up => r,
            Ok(_) => {
                self.healthy(false);
                return 0;
            }
            Err(e) => {
                self.healthy(false);
                tracing::warn!(error = %e, "looking for dead gateways failed");
                return 0;
            }
        };
        if !self.healthy(true) {
            return 0;
        }
        let cutoff = now_ms().saturating_sub(self.cfg.gateway_dead_after_ms);
        let dead: Vec<String> = match redis::cmd("ZRANGEBYSCORE")
            .arg(keys::GATEWAYS)
            .arg("-inf")
            .arg(cutoff)
            .arg("LIMIT")
            .arg(0)
            .arg(REAP_BATCH)
            .query_async(&mut r)
            .await
        {
            Ok(dead) => dead,
            Err(e) => {
                tracing::warn!(error = %e, "looking for dead gateways failed");
                return 0;
            }
        };
        let mut reaped = 0;
        for gw in dead {
            match self.reap(&mut r, &gw).await {
                Ok(true) => reaped += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(gateway = %gw, error = %e, "reaping a dead gateway failed")
                }
            }
        }
        if let Err(e) = self.nats.flush().await {
            tracing::warn!(error = %e, "flushing a dead gateway's disconnects failed");
        }
        reaped
    }

    /// Records whether NATS and Redis answer now; whether they have answered
    /// for at least `gateway_dead_after_ms` without a break.
    fn healthy(&self, up: bool) -> bool {
        let Ok(mut since) = self.healthy_since.lock() else {
            return false;
        };
        if !up {
            *since = None;
            return false;
        }
        let since = since.get_or_insert_with(std::time::Instant::now);
        since.elapsed() >= std::time::Duration::from_millis(self.cfg.gateway_dead_after_ms)
    }

    /// Claims gateway `gw` and announces its connections' disconnects;
    /// whether this replica got it.
    async fn reap(
        &self,
        r: &mut deadpool_redis::Connection,
        gw: &str,
    ) -> Result<bool, ServiceError> {
        let claimed: i64 = redis::cmd("ZREM")
            .arg(keys::GATEWAYS)
            .arg(gw)
            .query_async(r)
            .await?;
        if claimed != 1 {
            return Ok(false);
        }
        let Ok(gw) = GatewayId::parse(gw) else {
            tracing::warn!(value = %gw, "dropped a malformed gateway entry");
            return Ok(false);
        };
        self.bury(&gw).await?;
        let conns: Vec<(u64, String)> = redis::cmd("HGETALL")
            .arg(keys::gateway_conns(&gw))
            .query_async(r)
            .await?;
        tracing::warn!(gateway = %gw, connections = conns.len(), "gateway stopped heartbeating: disconnecting its connections");
        for (conn, who) in conns {
            let Some(TenantUser { tenant, user }) = TenantUser::parse(&who) else {
                tracing::warn!(gateway = %gw, conn, value = %who, "skipping a malformed connection entry");
                continue;
            };
            let ev = ConnLifecycle::Disconnected(ConnInfo {
                gw: gw.clone(),
                conn,
                tenant,
                user,
            });
            self.nats
                .publish(subjects::CONN_EVENTS, ev.encode())
                .await
                .log_failure("announcing a dead gateway's disconnect");
        }
        Ok(true)
    }
}
