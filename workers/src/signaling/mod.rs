//! The `signaling` service: one-to-one calls between users (ring all of the
//! callee's devices, first accept wins), WebRTC offer/answer/candidate relay
//! between the two parties' connections only, a reconnect grace period, call
//! history with ratings, and mesh signaling among a room's members.
//!
//! - [`calls`]: the call state (call, accept, reject, cancel, end), busy
//!   markers, and what happens once a call ended;
//! - [`relay`]: signals within a call and mesh signaling in a room;
//! - [`deadlines`]: the ring-timeout and reconnect-grace sweeper, resume;
//! - [`history`]: a user's calls and their ratings;
//! - [`conns`]: a closed connection cancels or pauses its call;
//! - [`scripts`]: the Lua transitions and their typed results.
//!
//! Invariants:
//! - Call state lives in one Redis hash per call (`keys::call`); every
//!   transition is one Lua script: two devices accepting at once get one
//!   winner, and a call ends exactly once whoever ends it (hang-up, ring
//!   timeout, grace expiry), so the end is announced once.
//! - A user is in at most one call: `keys::user_call` names it while it
//!   rings or runs (set with NX, freed by compare-and-delete).
//! - Signals are relayed only from a party's current connection to the other
//!   party's current connection; anything else is refused.
//! - Deadlines are sorted sets (`CALLS_RINGING` of `CallEntry`, `CALLS_GRACE`
//!   of `CallPartyEntry`); an entry is claimed with ZREM, so one replica
//!   handles each.
//! - The callee's devices are the connections the presence service knows of,
//!   so signaling needs `presence` running.

mod calls;
mod conns;
mod deadlines;
mod history;
mod relay;
mod scripts;

use serde::Serialize;
use switchboard_proto::bus::Request;
use switchboard_shared::config::SignalingConfig;
use switchboard_shared::conn_events::ConnLifecycle;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::members::ConnMember;
use switchboard_shared::redis::Pool;

use crate::error::{LogFailure, ServiceError};
use crate::service::push::event_to_conn;
use crate::service::{Caller, Outcome, Service, parse};
use calls::Ending;

pub struct Signaling {
    nats: async_nats::Client,
    pool: Pool,
    cfg: SignalingConfig,
}

impl Signaling {
    pub fn new(nats: async_nats::Client, pool: Pool, cfg: SignalingConfig) -> Self {
        Self { nats, pool, cfg }
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, ServiceError> {
        Ok(self.pool.get().await?)
    }

    /// Pushes `{"event": event, "data": data}` to one connection.
    async fn push<T: Serialize + ?Sized>(&self, to: &ConnMember, event: &str, data: &T) {
        event_to_conn(&self.nats, to, event, data).await;
    }
}

impl Service for Signaling {
    fn name(&self) -> &'static str {
        "signaling"
    }

    async fn handle(&self, op: &str, req: Request) -> Result<Outcome, ServiceError> {
        let c = Caller::from_request(&req)?;
        match op {
            "call" => self.call(&c, parse(&req)?).await,
            "accept" => self.accept(&c, parse(&req)?).await,
            "reject" => self.end_op(&c, parse(&req)?, Ending::Reject).await,
            "cancel" => self.end_op(&c, parse(&req)?, Ending::Cancel).await,
            "end" => self.end_op(&c, parse(&req)?, Ending::Hangup).await,
            "signal" => self.signal(&c, parse(&req)?).await,
            "resume" => self.resume(&c, parse(&req)?).await,
            "history" => self.history(&c, parse(&req)?).await,
            "rate" => self.rate(&c, parse(&req)?).await,
            "room_signal" => self.room_signal(&c, parse(&req)?).await,
            other => Err(ServiceError::client(
                ErrorCode::UnknownOp,
                format!("signaling has no op {other:?}"),
            )),
        }
    }

    async fn on_conn_event(&self, ev: ConnLifecycle) {
        if let ConnLifecycle::Disconnected(c) = ev {
            self.disconnected(&c.tenant, &ConnMember::new(&c.gw, c.conn))
                .await
                .log_failure("settling the call of a closed connection");
        }
    }
}
