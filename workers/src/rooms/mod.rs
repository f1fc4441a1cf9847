//! The `rooms` service: the struct and its dispatch. Features live beside it:
//! - [`lifecycle`]: create (also `_create_for` other services), join, leave,
//!   members, info; an empty room expires after `idle_ttl_secs`;
//! - [`messages`]: publish, history, and gap replay for gateways;
//! - [`access`]: the one rule for reading a room and acting in it;
//! - [`signals`]: typing and cursors (ephemeral), with [`typing_expiry`]
//!   ending typing indicators whose time is up;
//! - [`receipts`]: delivered/read markers and unread counts;
//! - [`reactions`]: reactions on messages;
//! - [`conns`]: leaving every room when a connection closes;
//! - [`quota`]: rooms per connection, rooms created per user, live rooms
//!   per app (with the sweep of counted rooms that expired);
//! - [`fanout`]: pushes to a room's members; [`scripts`]: the Lua.
//!
//! Invariants:
//! - All room state is in Redis under one hash tag per room; every mutation
//!   is one Lua script, so replicas can serve any room concurrently.
//! - `seq` is assigned by Redis inside the publish script and the message is
//!   appended to the history stream (entry id `<seq>-0`) in the same script:
//!   history order is seq order, with no holes except trimmed ones.
//! - Live fan-out is one NATS message per gateway holding members of the
//!   room (`sb.gw.<gateway>.r.<tenant>.<room>`, `service::fanout`); the
//!   room's `gateways` hash is kept by the join and leave scripts and read by
//!   the publish script with the seq. Gateways restore seq order and fill
//!   gaps through `_replay`.

pub mod access;
mod conns;
mod fanout;
mod lifecycle;
mod messages;
mod quota;
mod reactions;
mod receipts;
mod scripts;
mod signals;
mod typing_expiry;

use switchboard_proto::bus::{ReplayBatch, ReplayRequest, Request};
use switchboard_shared::config::RoomsConfig;
use switchboard_shared::conn_events::ConnLifecycle;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::quotas::QuotasConfig;
use switchboard_shared::redis::Pool;

use crate::error::ServiceError;
use crate::service::{Caller, Outcome, Service, parse};

pub use lifecycle::CreateForReq;

/// The rooms service.
pub struct Rooms {
    nats: async_nats::Client,
    pool: Pool,
    cfg: RoomsConfig,
    quotas: QuotasConfig,
}

impl Rooms {
    /// The service, with the default quotas.
    pub fn new(nats: async_nats::Client, pool: Pool, cfg: RoomsConfig) -> Self {
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

impl Service for Rooms {
    fn name(&self) -> &'static str {
        "rooms"
    }

    async fn handle(&self, op: &str, req: Request) -> Result<Outcome, ServiceError> {
        if op == "_create_for" {
            // Internal: clients can never name ops starting with `_`.
            return self.create_for(&req).await;
        }
        let c = Caller::from_request(&req)?;
        match op {
            "create" => self.create(&c, parse(&req)?).await,
            "join" => self.join(&c, parse(&req)?).await,
            "leave" => self.leave(&c, parse(&req)?).await,
            "publish" => self.publish(&c, parse(&req)?).await,
            "members" => self.members(&c, parse(&req)?).await,
            "info" => self.info(&c, parse(&req)?).await,
            "history" => self.history(&c, parse(&req)?).await,
            "typing" => self.typing(&c, parse(&req)?).await,
            "cursor" => self.cursor(&c, parse(&req)?).await,
            "mark" => self.mark(&c, parse(&req)?).await,
            "markers" => self.markers(&c, parse(&req)?).await,
            "unread" => self.unread(&c, parse(&req)?).await,
            "react" => self.react(&c, parse(&req)?).await,
            "reactions" => self.reactions(&c, parse(&req)?).await,
            other => Err(ServiceError::client(
                ErrorCode::UnknownOp,
                format!("rooms has no op {other:?}"),
            )),
        }
    }

    async fn replay(&self, req: ReplayRequest) -> Result<ReplayBatch, ServiceError> {
        self.replay_range(req).await
    }

    async fn on_conn_event(&self, ev: ConnLifecycle) {
        if let ConnLifecycle::Disconnected(c) = ev {
            self.disconnected(&c.gw, c.conn).await;
        }
    }
}
