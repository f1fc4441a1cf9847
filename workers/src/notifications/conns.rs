//! Connection events: a user's live connections as this service knows them
//! (`UserKeys::notif_conns`), for live delivery.
//!
//! Registering races with the disconnect of the same connection (events
//! may be handled out of order, by different replicas). The shared gone
//! marker (`service::conns`) settles it: `DISCONNECTED` sets the marker,
//! then unregisters; `CONNECTED` registers, then checks the marker and
//! unregisters itself when set. Each writes before it reads, so one of the
//! two always sees the other and no closed connection stays registered.

use deadpool_redis::redis;
use switchboard_shared::conn_events::ConnInfo;
use switchboard_shared::keys::{self, UserKeys};
use switchboard_shared::members::ConnMember;
use switchboard_shared::now_ms;

use super::Notifications;
use crate::error::{LogFailure, ServiceError};
use crate::service::conns::{is_gone, mark_gone};

/// What registering a connection found.
enum Registered {
    New,
    /// It was registered already: this is a repeated announcement.
    Again,
    /// Its disconnect was processed first.
    Gone,
}

impl Notifications {
    /// A connection opened: register it, then send it what is pending. A
    /// connection announced again (a repair after an outage) that was
    /// registered already has had its pending list.
    pub(super) async fn connected(&self, c: &ConnInfo) {
        match self.register(c).await {
            Ok(Registered::New) => {}
            Ok(Registered::Again) => return,
            Ok(Registered::Gone) => {
                // The disconnect was processed first: undo.
                self.disconnected(c)
                    .await
                    .log_failure("notifications: unregistering a closed connection");
                return;
            }
            // Still try to deliver what is pending: the device is there.
            Err(e) => {
                tracing::warn!(error = %e, kind = ?e.kind(), "notifications: registering a connection failed")
            }
        }
        self.deliver_pending(c)
            .await
            .log_failure("notifications: delivering pending notifications");
    }

    /// Registers the connection (and the user as one of the app's).
    async fn register(&self, c: &ConnInfo) -> Result<Registered, ServiceError> {
        let k = UserKeys::new(&c.tenant, &c.user);
        let member = ConnMember::new(&c.gw, c.conn).to_string();
        let mut r = self.conn().await?;
        let (added,): (i64,) = redis::pipe()
            .hset(&k.notif_conns, &member, now_ms())
            .sadd(keys::tenant_users(&c.tenant), c.user.as_str())
            .ignore()
            .query_async(&mut r)
            .await?;
        Ok(if is_gone(&mut r, &c.gw, c.conn).await? {
            Registered::Gone
        } else if added == 1 {
            Registered::New
        } else {
            Registered::Again
        })
    }

    /// A connection closed: mark it gone, then unregister it.
    pub(super) async fn disconnected(&self, c: &ConnInfo) -> Result<(), ServiceError> {
        let mut r = self.conn().await?;
        let () = mark_gone(&mut redis::pipe(), &c.gw, c.conn)
            .hdel(
                UserKeys::new(&c.tenant, &c.user).notif_conns,
                ConnMember::new(&c.gw, c.conn).to_string(),
            )
            .ignore()
            .query_async(&mut r)
            .await?;
        Ok(())
    }
}
