//! Connections and tickets: a ticket belongs to the connection that joined,
//! and goes when that connection closes.
//!
//! The connection-gone marker is the one every service shares
//! (`service::conns`, key `{conn:<gw>:<conn>}:gone`). It lives in the
//! connection's hash slot, not in the queue's (`{mm:<app>}`), so under Redis
//! Cluster no queue script can read it atomically. Instead:
//!
//! - `DISCONNECTED`: set the marker, *then* remove the connection's ticket.
//! - Whatever puts a ticket in the queue (a join, a requeue after a failed
//!   room): write the ticket, *then* check the marker, and remove the ticket
//!   again when it is set ([`Matchmaking::undo_if_gone`]).
//!
//! Each side writes before it reads, one command after the other on one
//! Redis connection. So if the disconnect's removal ran before the ticket
//! was written, the marker (set before that removal) is already there when
//! the writer checks it, and the writer undoes; otherwise the removal runs
//! after the write and takes the ticket. Either way no ticket of a closed
//! connection survives.

use deadpool_redis::redis;
use switchboard_shared::conn_events::ConnInfo;
use switchboard_shared::ids::TenantId;
use switchboard_shared::keys::MatchmakingKeys;
use switchboard_shared::members::TicketOwner;

use super::Matchmaking;
use super::scripts::{self, Left};
use crate::error::ServiceError;
use crate::service::conns::{is_gone, mark_gone};

impl Matchmaking {
    /// A connection closed: mark it gone, then remove its ticket (only its
    /// own: the user's ticket from another device stays).
    pub(super) async fn disconnected(&self, c: &ConnInfo) -> Result<(), ServiceError> {
        let mut r = self.conn().await?;
        let () = mark_gone(&mut redis::pipe(), &c.gw, c.conn)
            .query_async(&mut r)
            .await?;
        let owner = TicketOwner {
            gw: c.gw.clone(),
            conn: c.conn,
            user: c.user.clone(),
        };
        self.remove_owned(&mut r, &c.tenant, &owner).await?;
        Ok(())
    }

    /// Called right after a ticket of `owner` was written: when its
    /// connection is gone, removes the ticket again (if `owner` still owns
    /// it) and answers `true`.
    pub(super) async fn undo_if_gone(
        &self,
        r: &mut deadpool_redis::Connection,
        tenant: &TenantId,
        owner: &TicketOwner,
    ) -> Result<bool, ServiceError> {
        if !is_gone(r, &owner.gw, owner.conn).await? {
            return Ok(false);
        }
        self.remove_owned(r, tenant, owner).await?;
        Ok(true)
    }

    /// Removes the user's ticket if `owner`'s connection owns it.
    async fn remove_owned(
        &self,
        r: &mut deadpool_redis::Connection,
        tenant: &TenantId,
        owner: &TicketOwner,
    ) -> Result<Left, ServiceError> {
        let k = MatchmakingKeys::new(tenant);
        Ok(Left::from_reply(
            scripts::LEAVE
                .key(k.all().as_slice())
                .arg(owner.user.as_str())
                .arg(owner.to_string())
                .invoke_async(r)
                .await?,
        ))
    }
}
