//! Getting notifications to devices: live pushes to every connection of a
//! user this service knows of, and the pending (unread) list a device gets
//! once when it connects.

use bytes::Bytes;
use serde_json::json;
use switchboard_shared::conn_events::ConnInfo;
use switchboard_shared::frames;
use switchboard_shared::ids::{TenantId, UserId};
use switchboard_shared::keys::UserKeys;
use switchboard_shared::members::ConnMember;

use super::Notifications;
use crate::error::ServiceError;
use crate::service::conns::hash_members;
use crate::service::push::frame_to_conn;

impl Notifications {
    /// Pushes `frame` to every connection of a user this service knows of.
    /// Nobody waits on a push: a failure is logged.
    pub(super) async fn push_to_user(&self, tenant: &TenantId, user: &UserId, frame: Bytes) {
        let conns = match self.user_conns(tenant, user).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, kind = ?e.kind(), "notifications: listing a user's connections failed");
                return;
            }
        };
        for to in conns {
            frame_to_conn(&self.nats, &to, frame.clone()).await;
        }
    }

    async fn user_conns(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<Vec<ConnMember>, ServiceError> {
        let key = UserKeys::new(tenant, user).notif_conns;
        hash_members(&mut self.conn().await?, &key).await
    }

    /// Sends a newly registered connection its pending (unread)
    /// notifications, oldest first, at most `notifications.pending_on_connect`.
    pub(super) async fn deliver_pending(&self, c: &ConnInfo) -> Result<(), ServiceError> {
        let listed = self.load(&c.tenant, &c.user).await?;
        let mut pending: Vec<(String, bool)> =
            listed.items.into_iter().filter(|(_, u)| *u).collect();
        pending.reverse();
        let max = self.cfg.pending_on_connect as usize;
        let more = pending.len() > max;
        pending.truncate(max);
        let bodies = self.bodies(&c.tenant, &c.user, &pending).await?;
        let data = json!({"unread": listed.unread, "items": bodies, "more": more});
        let to = ConnMember::new(&c.gw, c.conn);
        frame_to_conn(&self.nats, &to, frames::event("notifications", &data)).await;
        Ok(())
    }
}
