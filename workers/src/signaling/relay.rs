//! Relaying WebRTC signals: within a call, from one party's current
//! connection to the other's (`signal`); and mesh signaling in a room, from
//! a member to another member's connections there (`room_signal`), under
//! the rooms access rule (`rooms::access`).

use deadpool_redis::redis;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard_shared::error::ErrorCode;
use switchboard_shared::ids::{RoomId, UserId};
use switchboard_shared::keys::{self, RoomKeys};
use switchboard_shared::members::ConnMember;

use super::Signaling;
use super::calls::call_id;
use super::scripts::CallState;
use crate::error::ServiceError;
use crate::rooms::access::RoomView;
use crate::service::{Caller, Outcome};

const SIGNAL_KINDS: [&str; 4] = ["offer", "answer", "candidate", "renegotiate"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SignalReq {
    call: String,
    kind: String,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoomSignalReq {
    room: String,
    to: String,
    /// One connection of `to` (the `conn` of its `welcome`); all of `to`'s
    /// connections in the room when absent.
    to_conn: Option<String>,
    kind: String,
    data: Box<RawValue>,
}

fn check_kind(kind: &str) -> Result<(), ServiceError> {
    if SIGNAL_KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(ServiceError::bad_request(format!(
            "`kind` must be one of {SIGNAL_KINDS:?}"
        )))
    }
}

impl Signaling {
    /// Refuses client `data` larger than `max_signal_bytes`.
    pub(super) fn check_size(&self, data: &RawValue) -> Result<(), ServiceError> {
        if data.get().len() > self.cfg.max_signal_bytes {
            return Err(ServiceError::bad_request(format!(
                "`data` is larger than {} bytes",
                self.cfg.max_signal_bytes
            )));
        }
        Ok(())
    }

    pub(super) async fn signal(&self, c: &Caller, req: SignalReq) -> Result<Outcome, ServiceError> {
        let id = call_id(&req.call)?;
        check_kind(&req.kind)?;
        self.check_size(&req.data)?;
        let mut r = self.conn().await?;
        let (state, caller_conn, callee_conn): (Option<String>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(keys::call(&c.tenant, &id))
                .arg(&["state", "caller_conn", "callee_conn"])
                .query_async(&mut r)
                .await?;
        drop(r);
        let me = c.member();
        // Only the parties' current connections may signal; everyone else
        // is told the call does not exist.
        let to = if caller_conn.as_deref() == Some(me.as_str()) {
            callee_conn
        } else if callee_conn.as_deref() == Some(me.as_str()) {
            caller_conn
        } else {
            return Err(ServiceError::client(ErrorCode::NotFound, "no such call"));
        };
        if state.as_deref().and_then(CallState::parse) != Some(CallState::Active) {
            return Err(ServiceError::client(
                ErrorCode::Conflict,
                "signals flow only in an active call",
            ));
        }
        // An empty connection field: that party dropped and may resume.
        let Some(to) = to.as_deref().and_then(ConnMember::parse) else {
            return Err(ServiceError::client(
                ErrorCode::Conflict,
                "the other party is reconnecting",
            ));
        };
        let data: Value = serde_json::from_str(req.data.get())?;
        self.push(
            &to,
            "call_signal",
            &json!({"call": id.as_str(), "from": c.user.as_str(), "kind": req.kind, "data": data}),
        )
        .await;
        Ok(Outcome::json(
            &json!({"call": id.as_str(), "relayed": true}),
        ))
    }

    /// Mesh signaling in a room: relay to a member's connections in it. The
    /// sender's connection must be a member (`RoomView::check_member`).
    pub(super) async fn room_signal(
        &self,
        c: &Caller,
        req: RoomSignalReq,
    ) -> Result<Outcome, ServiceError> {
        let room = RoomId::parse(&req.room)?;
        let to = UserId::parse(&req.to)?;
        check_kind(&req.kind)?;
        self.check_size(&req.data)?;
        let k = RoomKeys::new(&c.tenant, &room);
        let mut r = self.conn().await?;
        let (private, member, conns): (Option<String>, bool, Vec<(String, String)>) =
            RoomView::query(&mut redis::pipe(), &k, c)
                .hgetall(&k.conns)
                .query_async(&mut r)
                .await?;
        drop(r);
        RoomView::from_reply(private, member).check_member(&room)?;
        let targets: Vec<ConnMember> = conns
            .iter()
            .filter(|(m, u)| *u == to.as_str() && req.to_conn.as_ref().is_none_or(|tc| tc == m))
            .filter_map(|(m, _)| ConnMember::parse(m))
            .collect();
        if targets.is_empty() {
            return Err(ServiceError::client(
                ErrorCode::NotMember,
                format!("{to} is not in room {room}"),
            ));
        }
        let data: Value = serde_json::from_str(req.data.get())?;
        let body = json!({"room": room.as_str(), "from": c.user.as_str(), "from_conn": c.member(), "kind": req.kind, "data": data});
        for t in &targets {
            self.push(t, "room_signal", &body).await;
        }
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "delivered": targets.len()}),
        ))
    }
}
