//! Keeping the cluster's view of each gateway's connections true: gateway
//! heartbeats, the digest check, the repair of connection events lost in an
//! outage, and the reset of a gateway that was declared dead but is alive.
//!
//! - Every heartbeat is recorded in `keys::GATEWAYS` (the reaper's clock).
//! - A heartbeat carries the [`Digest`] of the connections the gateway has
//!   announced; `keys::gateway_digest` holds the digest of those recorded
//!   here (kept by the scripts that list and unlist them). Events in flight
//!   make the two differ for a moment; a difference that stays the same on
//!   two heartbeats in a row starts a repair (at most once per a quarter of
//!   `presence.gateway_dead_after_ms`); one that keeps changing because
//!   connections keep coming and going starts one after [`PATIENCE`]
//!   heartbeats, at most once per four times `gateway_dead_after_ms`, since
//!   under churn most differences are events still in flight.
//! - A repair pages through the gateway's live connections
//!   (`sb.ctl.gw.<gw>.conns`) and compares them with `keys::gateway_conns`:
//!   a live connection not recorded gets its `CONNECTED` announced again; a
//!   recorded one the gateway no longer has (and whose id is at most the
//!   page's high-water mark, so not one opened since) its `DISCONNECTED`.
//!   Every service handles the repeat as it handles the original, and each
//!   of them tolerates a repeat: lists are sets, the gone marker undoes a
//!   `CONNECTED` that comes after its `DISCONNECTED`.
//! - A reaped gateway leaves a tombstone (`keys::gateway_tombstone`). Its
//!   next heartbeat means it was only paused or cut off: the replica that
//!   deletes the tombstone tells it to reset (`sb.ctl.gw.<gw>.reset`), and it
//!   closes its clients with 1012 so they reconnect and register anew.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_redis::redis;
use switchboard_proto::bus::{ConnPage, ConnPageRequest};
use switchboard_shared::conn_events::{ConnInfo, ConnLifecycle, Digest};
use switchboard_shared::ids::{GatewayId, TenantId, UserId};
use switchboard_shared::members::TenantUser;
use switchboard_shared::subjects::{self, GatewayCommand};
use switchboard_shared::{bus, keys, now_ms};

use super::Presence;
use crate::error::{LogFailure, ServiceError};

/// Heartbeats a difference may last, changing all along (connections
/// coming and going), before a repair runs anyway.
pub const PATIENCE: u64 = 5;
/// Connections asked for per page.
const PAGE: u32 = 1_000;
/// How long a gateway has to answer one control request.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// `n, sum, delta, mismatches, repaired_at` of `keys::gateway_digest`.
type DigestRecord = (
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<u64>,
    Option<u64>,
);

/// What the digest check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Agree,
    Wait,
    Repair,
}

impl Presence {
    /// Least time between two repairs of one gateway, for a steady
    /// difference and for one that keeps changing.
    fn repair_spacing(&self, steady: bool) -> u64 {
        if steady {
            self.cfg.gateway_dead_after_ms / 4
        } else {
            self.cfg.gateway_dead_after_ms.saturating_mul(4)
        }
    }

    /// A heartbeat from gateway `gw`, whose announced connections have
    /// `digest`.
    pub(super) async fn heartbeat(
        &self,
        gw: &GatewayId,
        digest: Digest,
    ) -> Result<(), ServiceError> {
        let mut r = self.conn().await?;
        let dead: i64 = redis::cmd("DEL")
            .arg(keys::gateway_tombstone(gw))
            .query_async(&mut r)
            .await?;
        let () = redis::cmd("ZADD")
            .arg(keys::GATEWAYS)
            .arg(now_ms())
            .arg(gw.as_str())
            .query_async(&mut r)
            .await?;
        if dead == 1 {
            drop(r);
            return self.reset(gw).await;
        }
        let check = self.check(&mut r, gw, digest).await?;
        drop(r);
        if check == Check::Repair {
            self.repair(gw).await?;
        }
        Ok(())
    }

    /// Compares the heartbeat's digest with the recorded one and keeps the
    /// bookkeeping of differences.
    async fn check(
        &self,
        r: &mut deadpool_redis::Connection,
        gw: &GatewayId,
        theirs: Digest,
    ) -> Result<Check, ServiceError> {
        let key = keys::gateway_digest(gw);
        let (n, sum, delta, mismatches, repaired_at): DigestRecord = redis::cmd("HMGET")
            .arg(&key)
            .arg(&["n", "sum", "delta", "mismatches", "repaired_at"])
            .query_async(r)
            .await?;
        let ours = (n.unwrap_or(0), sum.unwrap_or(0));
        let now = (
            i128::from(theirs.count) - i128::from(ours.0),
            i128::from(theirs.sum) - i128::from(ours.1),
        );
        if now == (0, 0) {
            if delta.is_some() {
                let () = redis::cmd("HDEL")
                    .arg(&key)
                    .arg(&["delta", "mismatches"])
                    .query_async(r)
                    .await?;
            }
            return Ok(Check::Agree);
        }
        let now_delta = format!("{}/{}", now.0, now.1);
        let mismatches = mismatches.unwrap_or(0) + 1;
        let steady = delta.as_deref() == Some(now_delta.as_str());
        let since = now_ms().saturating_sub(repaired_at.unwrap_or(0));
        if (steady || mismatches >= PATIENCE) && since >= self.repair_spacing(steady) {
            let () = redis::pipe()
                .hdel(&key, &["delta", "mismatches"])
                .ignore()
                .hset(&key, "repaired_at", now_ms())
                .ignore()
                .query_async(r)
                .await?;
            tracing::debug!(gateway = %gw, difference = %now_delta, steady, "a gateway's connections differ from the record: repairing");
            return Ok(Check::Repair);
        }
        let () = redis::pipe()
            .hset(&key, "delta", now_delta)
            .ignore()
            .hset(&key, "mismatches", mismatches)
            .ignore()
            .query_async(r)
            .await?;
        Ok(Check::Wait)
    }

    /// Reads gateway `gw`'s live connections and announces again whatever
    /// the record lacks or has too much.
    async fn repair(&self, gw: &GatewayId) -> Result<(), ServiceError> {
        let mut live: HashMap<u64, (TenantId, UserId)> = HashMap::new();
        let mut after = 0;
        let mut high_water = None;
        loop {
            let page: ConnPage = match self
                .control(
                    gw,
                    GatewayCommand::Conns,
                    bus::encode(&ConnPageRequest { after, limit: PAGE }),
                )
                .await?
            {
                Some(payload) => match bus::decode(&payload) {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(gateway = %gw, error = %e, "the gateway's connection page is unreadable");
                        return Ok(());
                    }
                },
                None => {
                    tracing::warn!(gateway = %gw, "the gateway did not list its connections: repair later");
                    return Ok(());
                }
            };
            high_water.get_or_insert(page.high_water);
            for e in &page.conns {
                match (TenantId::parse(&e.tenant), UserId::parse(&e.user)) {
                    (Ok(t), Ok(u)) => {
                        live.insert(e.conn, (t, u));
                    }
                    _ => {
                        tracing::warn!(gateway = %gw, conn = e.conn, "skipped a malformed connection entry")
                    }
                }
                after = after.max(e.conn);
            }
            if !page.more || page.conns.is_empty() {
                break;
            }
        }
        let high_water = high_water.unwrap_or(0);
        let mut r = self.conn().await?;
        let recorded: Vec<(u64, String)> = redis::cmd("HGETALL")
            .arg(keys::gateway_conns(gw))
            .query_async(&mut r)
            .await?;
        drop(r);
        let mut events = Vec::new();
        let mut known = std::collections::HashSet::new();
        for (conn, who) in recorded {
            known.insert(conn);
            if conn > high_water || live.contains_key(&conn) {
                continue;
            }
            let Some(TenantUser { tenant, user }) = TenantUser::parse(&who) else {
                tracing::warn!(gateway = %gw, conn, "skipping a malformed connection entry");
                continue;
            };
            events.push(ConnLifecycle::Disconnected(ConnInfo {
                gw: gw.clone(),
                conn,
                tenant,
                user,
            }));
        }
        let gone = events.len();
        for (conn, (tenant, user)) in live {
            if !known.contains(&conn) {
                events.push(ConnLifecycle::Connected(ConnInfo {
                    gw: gw.clone(),
                    conn,
                    tenant,
                    user,
                }));
            }
        }
        if !events.is_empty() {
            tracing::warn!(
                gateway = %gw,
                connected = events.len() - gone,
                disconnected = gone,
                "connection events were lost: announcing them again"
            );
        }
        for ev in events {
            self.nats
                .publish(subjects::CONN_EVENTS, ev.encode())
                .await
                .log_failure("announcing a repaired connection event");
        }
        Ok(())
    }

    /// Tells gateway `gw`, declared dead but alive, to close its clients. If
    /// it does not answer, the tombstone is put back for the next heartbeat.
    async fn reset(&self, gw: &GatewayId) -> Result<(), ServiceError> {
        tracing::warn!(gateway = %gw, "a gateway declared dead is alive: telling it to reset");
        if self
            .control(gw, GatewayCommand::Reset, bytes::Bytes::new())
            .await?
            .is_none()
        {
            self.bury(gw).await?;
        }
        Ok(())
    }

    /// Leaves the tombstone of gateway `gw`.
    pub(super) async fn bury(&self, gw: &GatewayId) -> Result<(), ServiceError> {
        let mut r = self.conn().await?;
        let () = redis::cmd("SET")
            .arg(keys::gateway_tombstone(gw))
            .arg(1)
            .arg("EX")
            .arg(keys::TOMBSTONE_TTL_SECS)
            .query_async(&mut r)
            .await?;
        Ok(())
    }

    /// A control request to gateway `gw`; `None` when it does not answer in
    /// time.
    async fn control(
        &self,
        gw: &GatewayId,
        cmd: GatewayCommand,
        payload: bytes::Bytes,
    ) -> Result<Option<bytes::Bytes>, ServiceError> {
        let subject = subjects::gateway_control(gw, cmd);
        match tokio::time::timeout(CONTROL_TIMEOUT, self.nats.request(subject, payload)).await {
            Ok(Ok(msg)) => Ok(Some(msg.payload)),
            Ok(Err(e)) => {
                tracing::warn!(gateway = %gw, command = cmd.as_str(), error = %e, "control request failed");
                Ok(None)
            }
            Err(_) => Ok(None),
        }
    }
}
