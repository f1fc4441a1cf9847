//! The `matchmaking` service: a per-app queue of tickets (properties plus a
//! query of required / optional terms and numeric ranges, and a group
//! size), matched continuously into private rooms made by the rooms service.
//!
//! Files: `queue` (join, leave), `status` (the status op, `queue_status`
//! pushes and their lease, wait estimates), `pass` (the matching tick and
//! claims), `room` (a claimed group's room, or its requeue), `expiry`
//! (expired tickets), `conns` (disconnects), `ticket` (what a ticket is),
//! `matcher` (proposing groups in memory), `scripts` (Lua, typed results).
//!
//! Invariants:
//! - One ticket per user per app; joining again replaces it. A new ticket
//!   joins only while fewer than `quotas.waiting_tickets_per_app` wait. A
//!   ticket leaves the queue exactly once: matched (claimed), left, its
//!   connection gone, or expired after `matchmaking.ticket_ttl_secs`.
//! - All of an app's queue lives under one hash tag (`keys::MatchmakingKeys`),
//!   and every change is one Lua script, so replicas run concurrently without
//!   locks. A matching pass loads a bounded window in one round trip,
//!   proposes groups in memory (see `matcher`), then claims each group with
//!   one script that removes all its tickets only if all are still waiting:
//!   no ticket is ever matched twice, whatever the number of replicas.
//! - A ticket never outlives its connection: the one shared gone marker
//!   (`service::conns`) is set before a disconnect removes the connection's
//!   ticket, and whatever (re)enqueues a ticket checks it afterwards and
//!   undoes itself (see `conns.rs`).
//! - Tickets of different apps never meet: queues are per app.
//! - A claimed group gets a room through `sb.svc.rooms._create_for`, then
//!   each member a `match_found` push on the connection that joined. When
//!   the room cannot be made, the tickets go back to the queue.
//! - Waiting tickets get `queue_status` every `matchmaking.status_interval_ms`
//!   from one replica per app (a short Redis lease).

mod conns;
mod expiry;
mod matcher;
mod pass;
mod queue;
mod room;
mod scripts;
mod status;
mod ticket;

use std::sync::atomic::{AtomicBool, AtomicU64};

use serde::Deserialize;
use switchboard_proto::bus::Request;
use switchboard_shared::config::MatchmakingConfig;
use switchboard_shared::conn_events::ConnLifecycle;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::quotas::QuotasConfig;
use switchboard_shared::redis::Pool;

use crate::error::{LogFailure, ServiceError};
use crate::service::{Caller, Outcome, Service, parse};

/// The matchmaking service.
pub struct Matchmaking {
    nats: async_nats::Client,
    pool: Pool,
    cfg: MatchmakingConfig,
    quotas: QuotasConfig,
    /// A status round is running in the background.
    status_running: AtomicBool,
    /// When this replica last started a status round (ms).
    last_status_ms: AtomicU64,
}

/// Data of ops that take none.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

impl Matchmaking {
    /// The service, with the default quotas.
    pub fn new(nats: async_nats::Client, pool: Pool, cfg: MatchmakingConfig) -> Self {
        Self {
            nats,
            pool,
            cfg,
            quotas: QuotasConfig::default(),
            status_running: AtomicBool::new(false),
            last_status_ms: AtomicU64::new(0),
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

impl Service for Matchmaking {
    fn name(&self) -> &'static str {
        "matchmaking"
    }

    async fn handle(&self, op: &str, req: Request) -> Result<Outcome, ServiceError> {
        let c = Caller::from_request(&req)?;
        match op {
            "join" => self.join(&c, parse(&req)?).await,
            "leave" => {
                parse::<Empty>(&req)?;
                self.leave(&c).await
            }
            "status" => {
                parse::<Empty>(&req)?;
                self.status(&c).await
            }
            other => Err(ServiceError::client(
                ErrorCode::UnknownOp,
                format!("matchmaking has no op {other:?}"),
            )),
        }
    }

    async fn on_conn_event(&self, ev: ConnLifecycle) {
        if let ConnLifecycle::Disconnected(c) = ev {
            self.disconnected(&c)
                .await
                .log_failure("matchmaking: removing a closed connection's ticket");
        }
    }
}

#[cfg(test)]
mod tests {
    use switchboard_shared::ids::{GatewayId, TenantId, UserId};
    use switchboard_shared::keys::{self, MatchmakingKeys};
    use switchboard_shared::members::TicketOwner;

    #[test]
    fn keys_share_one_hash_tag_per_app() {
        let t = TenantId::parse("demo").unwrap_or_else(|e| panic!("{e}"));
        let k = MatchmakingKeys::new(&t);
        for key in k.all() {
            assert!(key.starts_with("sb:{mm:demo}:"), "{key}");
        }
        assert!(k.status_lease.starts_with("sb:{mm:demo}:"));
        // A closed connection is marked with the one shared marker, in the
        // connection's own slot (see conns.rs for why that is safe).
        let gw = GatewayId::parse("gw-1").unwrap_or_else(|e| panic!("{e}"));
        assert!(keys::conn_gone(&gw, 7).starts_with("sb:{conn:gw-1:7}:"));
    }

    #[test]
    fn owners_round_trip_even_with_pipes_in_user_ids() {
        let o = TicketOwner {
            gw: GatewayId::parse("gw-abc").unwrap_or_else(|e| panic!("{e}")),
            conn: 42,
            user: UserId::parse("we|ird").unwrap_or_else(|e| panic!("{e}")),
        };
        let back = TicketOwner::parse(&o.to_string()).unwrap_or_else(|| panic!("unparsed"));
        assert_eq!((back.gw.as_str(), back.conn), ("gw-abc", 42));
        assert_eq!(back.user.as_str(), "we|ird");
        assert!(TicketOwner::parse("nope").is_none());
    }
}
