//! The `notifications` service: a per-user notification store with live
//! delivery. Trusted backends send on `sb.api.notifications.send` (JSON, see
//! docs/protocol.md); clients list, count, mark read and clear over
//! `notifications.*`.
//!
//! Files: `send` (the backend API: validate, store, push live), `inbox`
//! (list, unread, mark read, clear), `delivery` (live pushes, the pending
//! list on connect), `conns` (connection events), `quota` (the app's count
//! of stored notifications), `scripts` (Lua, typed results).
//!
//! Invariants:
//! - A notification is stored for every recipient before any live push, so a
//!   gateway or worker crash never loses one; Redis is the only state.
//! - Live pushes go to the recipient's connections as this service knows
//!   them (from connection events) on their per-connection subjects; app-wide
//!   notifications go once to `sb.tenant.<app>`.
//! - A user's notifications keep the order they were stored in, even within
//!   one millisecond (see `scripts.rs`): lists are newest first, the pending
//!   list oldest first, and the cap drops the oldest.
//! - On connect, a device gets the pending (unread) notifications oldest
//!   first, with the unread count. Delivery is at least once: clients dedupe
//!   by `id`.
//! - Per user: at most `notifications.per_user_cap`, oldest dropped first;
//!   each expires after its `ttl_secs` (default `notifications.ttl_secs`).
//!   Per app: at most `quotas.notifications_per_app` stored (`quota`); a
//!   send that would pass it is refused whole, before anything is stored.

mod conns;
mod delivery;
mod inbox;
mod quota;
mod scripts;
mod send;

use bytes::Bytes;
use serde_json::json;
use switchboard_proto::bus::Request;
use switchboard_shared::config::NotificationsConfig;
use switchboard_shared::conn_events::ConnLifecycle;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::quotas::QuotasConfig;
use switchboard_shared::redis::Pool;
use switchboard_shared::subjects;

use crate::error::{ErrorKind, LogFailure, ServiceError};
use crate::service::{Caller, Outcome, Service, parse};

pub use send::{SendReq, Target};

pub struct Notifications {
    nats: async_nats::Client,
    pool: Pool,
    cfg: NotificationsConfig,
    quotas: QuotasConfig,
}

impl Notifications {
    /// The service, with the default quotas.
    pub fn new(nats: async_nats::Client, pool: Pool, cfg: NotificationsConfig) -> Self {
        Self {
            nats,
            pool,
            cfg,
            quotas: QuotasConfig::default(),
        }
    }

    /// The same service with these quotas.
    pub fn with_quotas(self, quotas: QuotasConfig) -> Self {
        Self { quotas, ..self }
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, ServiceError> {
        Ok(self.pool.get().await?)
    }
}

impl Service for Notifications {
    fn name(&self) -> &'static str {
        "notifications"
    }

    async fn handle(&self, op: &str, req: Request) -> Result<Outcome, ServiceError> {
        let c = Caller::from_request(&req)?;
        match op {
            "list" => self.list(&c, parse(&req)?).await,
            "unread" => {
                if !matches!(req.payload.as_ref(), b"" | b"null" | b"{}") {
                    return Err(ServiceError::bad_request(
                        "`notifications.unread` takes no data",
                    ));
                }
                self.unread(&c).await
            }
            "mark_read" => self.change(&c, parse(&req)?, false).await,
            "clear" => self.change(&c, parse(&req)?, true).await,
            other => Err(ServiceError::client(
                ErrorCode::UnknownOp,
                format!("notifications has no op {other:?}"),
            )),
        }
    }

    async fn on_conn_event(&self, ev: ConnLifecycle) {
        match ev {
            ConnLifecycle::Connected(c) => self.connected(&c).await,
            ConnLifecycle::Disconnected(c) => self
                .disconnected(&c)
                .await
                .log_failure("notifications: unregistering a closed connection"),
            ConnLifecycle::Heartbeat { .. } => {}
        }
    }

    fn api_subjects(&self) -> &'static [&'static str] {
        &[subjects::NOTIFICATIONS_SEND]
    }

    /// The backend API (`sb.api.notifications.send`). Replies are JSON:
    /// `{"ok": true, "id": .., "recipients": n}` or `{"ok": false, "error": {..}}`.
    async fn handle_api(&self, _subject: &str, payload: Bytes) -> Bytes {
        let result = match serde_json::from_slice::<SendReq>(&payload) {
            Ok(req) => self.send(req).await,
            Err(e) => Err(ServiceError::bad_request(format!(
                "invalid send request: {e}"
            ))),
        };
        let body = match result {
            Ok(mut v) => {
                v["ok"] = json!(true);
                v
            }
            Err(e) => {
                if !matches!(e.kind(), ErrorKind::Client(_)) {
                    tracing::error!(error = %e, kind = ?e.kind(), "notifications: send failed");
                }
                json!({"ok": false, "error": e.to_client().to_json()})
            }
        };
        Bytes::from(body.to_string())
    }
}
