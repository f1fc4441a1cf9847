//! Connection events: a connection registers with its user's presence (and
//! under its gateway, `keys::gateway_conns` with its digest, for the reaper
//! and the repair in `gateways`) and leaves it.
//!
//! A `CONNECTED` processed after its `DISCONNECTED` finds the gone marker
//! (`service::conns`) and undoes itself, so a closed connection never keeps
//! a user online.

use deadpool_redis::redis;
use switchboard_proto::bus::Push;
use switchboard_shared::conn_events::ConnInfo;
use switchboard_shared::keys::{self, AppKeys, UserKeys};
use switchboard_shared::limits::OverflowPolicy;
use switchboard_shared::members::{ConnMember, TenantUser};
use switchboard_shared::{bus, now_ms, subjects};

use super::Presence;
use super::scripts;
use crate::error::{LogFailure, ServiceError};
use crate::service::conns::{is_gone, mark_gone};
use crate::service::push::event_to_conn;

impl Presence {
    pub(super) async fn connected(&self, c: &ConnInfo) -> Result<(), ServiceError> {
        let me = ConnMember::new(&c.gw, c.conn);
        let k = UserKeys::new(&c.tenant, &c.user);
        let owner = TenantUser {
            tenant: c.tenant.clone(),
            user: c.user.clone(),
        };
        let mut r = self.conn().await?;
        // Listed under its gateway (with the gateway's digest) first: if
        // this fails, the heartbeat's digest shows the difference and the
        // connection is announced again.
        let new = scripts::gateway_add(&mut r, &c.gw, c.conn, &owner).await?;
        redis::pipe()
            // The `connections_per_app` count: a set, so a repeated or
            // undone event never counts a connection twice.
            .sadd(AppKeys::new(&c.tenant).conns, me.to_string())
            .ignore()
            .cmd("ZADD")
            .arg(keys::GATEWAYS)
            .arg("NX")
            .arg(now_ms())
            .arg(c.gw.as_str())
            .query_async::<()>(&mut r)
            .await
            .log_failure("recording a gateway");
        let update = scripts::connect(&mut r, &k, &me, now_ms()).await;
        let gone = is_gone(&mut r, &c.gw, c.conn).await?;
        drop(r);
        match update {
            Ok(u) => {
                if u.changed {
                    self.announce(&c.tenant, &c.user, &u.state).await;
                }
                // A connection announced again (a repair) has been told.
                if !gone && new {
                    self.enforce_connection_cap(c, &me)
                        .await
                        .log_failure("enforcing the per-user connection cap");
                    // The new device learns the user's own presence (status
                    // and text may have been set from another device). It
                    // also tells the device it is now reachable as this user.
                    let mut data = u.state.to_own_json(&c.user);
                    data["self"] = serde_json::Value::Bool(true);
                    event_to_conn(&self.nats, &me, "presence", &data).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, kind = ?e.kind(), "registering a connection's presence failed")
            }
        }
        if gone {
            // The disconnect was processed first: undo.
            self.disconnected(c).await?;
        }
        Ok(())
    }

    pub(super) async fn disconnected(&self, c: &ConnInfo) -> Result<(), ServiceError> {
        let k = UserKeys::new(&c.tenant, &c.user);
        let mut r = self.conn().await?;
        mark_gone(&mut redis::pipe(), &c.gw, c.conn)
            .srem(
                AppKeys::new(&c.tenant).conns,
                ConnMember::new(&c.gw, c.conn).to_string(),
            )
            .ignore()
            .query_async::<()>(&mut r)
            .await
            .log_failure("marking a connection gone");
        scripts::gateway_remove(&mut r, &c.gw, c.conn).await?;
        let u = scripts::disconnect(&mut r, &k, &ConnMember::new(&c.gw, c.conn), now_ms()).await?;
        drop(r);
        if u.changed {
            self.announce(&c.tenant, &c.user, &u.state).await;
        }
        Ok(())
    }

    /// One user may hold `limits.user_connections` connections across the
    /// cluster (presence sees them all). Past it, the oldest connection
    /// (`close_oldest`) or the new one (`refuse`) is closed with 1008.
    async fn enforce_connection_cap(
        &self,
        c: &ConnInfo,
        me: &ConnMember,
    ) -> Result<(), ServiceError> {
        let cap = self.limits.user_connections(c.tenant.as_str());
        if cap == 0 {
            return Ok(());
        }
        let k = UserKeys::new(&c.tenant, &c.user);
        let mut r = self.conn().await?;
        // Every connect pays one HLEN; only a user over the cap pays for
        // reading the list.
        let held: usize = redis::cmd("HLEN")
            .arg(&k.presence_conns)
            .query_async(&mut r)
            .await?;
        if held <= cap {
            return Ok(());
        }
        let conns: Vec<(String, u64)> = redis::cmd("HGETALL")
            .arg(&k.presence_conns)
            .query_async(&mut r)
            .await?;
        drop(r);
        if conns.len() <= cap {
            return Ok(());
        }
        let excess = conns.len() - cap;
        let victims: Vec<ConnMember> = match self.limits.user_connections_policy {
            OverflowPolicy::Refuse => vec![me.clone()],
            OverflowPolicy::CloseOldest => {
                let mut by_age: Vec<(u64, ConnMember)> = conns
                    .iter()
                    .filter_map(|(m, at)| Some((*at, ConnMember::parse(m)?)))
                    .collect();
                by_age.sort_by_key(|(at, m)| (*at, m.to_string()));
                by_age.into_iter().take(excess).map(|(_, m)| m).collect()
            }
        };
        for v in victims {
            tracing::info!(user = %c.user, conn = %v, cap, "closing a connection over the user's cap");
            let push = Push {
                close_code: 1008,
                ..Push::default()
            };
            self.nats
                .publish(subjects::conn(&v.gw, v.conn), bus::encode(&push))
                .await?;
        }
        Ok(())
    }
}
