//! The expiry sweep, run on every matching tick: tickets older than
//! `matchmaking.ticket_ttl_secs` leave the queue, and their owners get
//! `ticket_expired` (from exactly one replica: the script that removes a
//! ticket is the one that reports it).

use serde_json::json;
use switchboard_shared::ids::TenantId;
use switchboard_shared::keys::MatchmakingKeys;
use switchboard_shared::members::ConnMember;
use switchboard_shared::now_ms;

use super::Matchmaking;
use super::scripts::{self, Expired};
use crate::error::ServiceError;
use crate::service::push::event_to_conn;

/// Tickets expired per app per tick (the rest go on the next tick).
const EXPIRE_BATCH: u64 = 500;

impl Matchmaking {
    /// Removes one app's expired tickets and tells their owners.
    pub(super) async fn expire(&self, tenant: &TenantId) -> Result<(), ServiceError> {
        let k = MatchmakingKeys::new(tenant);
        let mut r = self.conn().await?;
        let now = now_ms();
        let expired = Expired::from_reply(
            scripts::EXPIRE
                .key(k.all().as_slice())
                .arg(now)
                .arg(EXPIRE_BATCH)
                .invoke_async(&mut r)
                .await?,
        )?;
        drop(r);
        for e in expired {
            let Some(owner) = e.owner else {
                tracing::warn!(ticket = %e.id, "matchmaking: expired ticket without a valid owner");
                continue;
            };
            let data = json!({"ticket": e.id, "waited_ms": now.saturating_sub(e.enqueued_at)});
            let to = ConnMember::new(&owner.gw, owner.conn);
            event_to_conn(&self.nats, &to, "ticket_expired", &data).await;
        }
        Ok(())
    }
}
