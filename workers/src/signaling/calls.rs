//! The call state: placing a call (busy markers for both users, ringing
//! every device of the callee), accepting it from one device, ending it
//! (reject, cancel, hang-up), and what follows every end whoever caused it:
//! both users freed, the call filed in their histories, everyone told.
//!
//! A connection that speaks for a party is bound to the call
//! (`keys::conn_call`) so that its disconnect is noticed (`conns.rs`).

use deadpool_redis::redis;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard_shared::error::ErrorCode;
use switchboard_shared::ids::{CallId, TenantId, UserId};
use switchboard_shared::keys::{self, UserKeys};
use switchboard_shared::members::{CallEntry, CallRole, ConnMember};
use switchboard_shared::now_ms;

use super::Signaling;
use super::scripts::{self, Call, CallState, EndReason, Finish, Transition};
use crate::error::{LogFailure, ServiceError};
use crate::service::conns::hash_members;
use crate::service::{Caller, Outcome};

/// How long a busy marker or a connection's binding to a call lasts at most
/// (a call is not expected to run longer).
pub(super) const HOLD_SECS: u64 = 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CallReq {
    to: String,
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CallIdReq {
    pub(super) call: String,
}

/// The ops that end a call: who may use them, and when.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ending {
    /// The callee, while it rings.
    Reject,
    /// The caller, while it rings.
    Cancel,
    /// Either party, while it is active.
    Hangup,
}

impl Ending {
    fn finish(self, by: &UserId) -> Finish<'_> {
        let (party, from, reason) = match self {
            Self::Reject => (
                Some(CallRole::Callee),
                CallState::Ringing,
                EndReason::Rejected,
            ),
            Self::Cancel => (
                Some(CallRole::Caller),
                CallState::Ringing,
                EndReason::Cancelled,
            ),
            Self::Hangup => (None, CallState::Active, EndReason::Hangup),
        };
        Finish {
            by,
            party,
            from,
            reason,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Cancel => "cancel",
            Self::Hangup => "end",
        }
    }
}

/// A call id from a client: it must look like one we generate.
pub(super) fn call_id(s: &str) -> Result<CallId, ServiceError> {
    CallId::parse_generated(s)
        .ok_or_else(|| ServiceError::client(ErrorCode::InvalidId, "malformed call id"))
}

/// Marks a user as in call `id` unless they already are in one.
async fn claim_busy(
    r: &mut deadpool_redis::Connection,
    tenant: &TenantId,
    user: &UserId,
    id: &CallId,
    secs: u64,
) -> Result<bool, ServiceError> {
    let set: Option<String> = redis::cmd("SET")
        .arg(keys::user_call(tenant, user))
        .arg(id.as_str())
        .arg("NX")
        .arg("EX")
        .arg(secs)
        .query_async(r)
        .await?;
    Ok(set.is_some())
}

/// Records that `conn` now speaks for its party in call `id` (so its
/// disconnect is noticed) and takes `entry` off the deadline set
/// `deadlines` (ringing on accept, grace on resume).
pub(super) async fn bind_conn(
    r: &mut deadpool_redis::Connection,
    deadlines: &str,
    entry: String,
    conn: &ConnMember,
    id: &CallId,
) -> Result<(), ServiceError> {
    Ok(redis::pipe()
        .zrem(deadlines, entry)
        .ignore()
        .set_ex(keys::conn_call(&conn.gw, conn.conn), id.as_str(), HOLD_SECS)
        .ignore()
        .query_async(r)
        .await?)
}

impl Signaling {
    /// A user's connected devices, as the presence service knows them.
    pub(super) async fn devices(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<Vec<ConnMember>, ServiceError> {
        let key = UserKeys::new(tenant, user).presence_conns;
        hash_members(&mut self.conn().await?, &key).await
    }

    pub(super) async fn call(&self, c: &Caller, req: CallReq) -> Result<Outcome, ServiceError> {
        let callee = UserId::parse(&req.to)?;
        if callee == c.user {
            return Err(ServiceError::bad_request("you cannot call yourself"));
        }
        if let Some(d) = &req.data {
            self.check_size(d)?;
        }
        let devices = self.devices(&c.tenant, &callee).await?;
        if devices.is_empty() {
            return Err(ServiceError::client(
                ErrorCode::NotFound,
                format!("{callee} has no connected device"),
            ));
        }
        let id = CallId::generate();
        let hold_secs = (self.cfg.ring_timeout_ms / 1000 + HOLD_SECS).max(1);
        let mut r = self.conn().await?;
        if !claim_busy(&mut r, &c.tenant, &c.user, &id, hold_secs).await? {
            return Err(ServiceError::client(
                ErrorCode::Conflict,
                "you are already in a call",
            ));
        }
        if !claim_busy(&mut r, &c.tenant, &callee, &id, hold_secs).await? {
            scripts::release(&mut r, &keys::user_call(&c.tenant, &c.user), &id)
                .await
                .log_failure("freeing a caller whose callee is busy");
            return Err(ServiceError::client(
                ErrorCode::Busy,
                format!("{callee} is in another call"),
            ));
        }
        let now = now_ms();
        let key = keys::call(&c.tenant, &id);
        let me = c.conn_member();
        let () = redis::pipe()
            .hset_multiple(
                &key,
                &[
                    ("caller", c.user.as_str()),
                    ("callee", callee.as_str()),
                    ("caller_conn", me.to_string().as_str()),
                    ("callee_conn", ""),
                    ("state", CallState::Ringing.as_str()),
                    ("created_at", now.to_string().as_str()),
                ],
            )
            .ignore()
            .expire(&key, hold_secs as i64)
            .ignore()
            .zadd(
                keys::CALLS_RINGING,
                CallEntry {
                    tenant: c.tenant.clone(),
                    call: id.clone(),
                }
                .to_string(),
                now + self.cfg.ring_timeout_ms,
            )
            .ignore()
            .set_ex(keys::conn_call(&me.gw, me.conn), id.as_str(), hold_secs)
            .ignore()
            .query_async(&mut r)
            .await?;
        drop(r);
        let data: Value = match &req.data {
            Some(d) => serde_json::from_str(d.get())?,
            None => Value::Null,
        };
        let incoming = json!({"call": id.as_str(), "from": c.user.as_str(), "data": data, "ring_timeout_ms": self.cfg.ring_timeout_ms});
        for device in &devices {
            self.push(device, "call_incoming", &incoming).await;
        }
        Ok(Outcome::json(
            &json!({"call": id.as_str(), "state": "ringing", "devices": devices.len()}),
        ))
    }

    pub(super) async fn accept(&self, c: &Caller, req: CallIdReq) -> Result<Outcome, ServiceError> {
        let id = call_id(&req.call)?;
        let me = c.conn_member();
        let mut r = self.conn().await?;
        let call = scripts::accept(&mut r, &keys::call(&c.tenant, &id), &c.user, &me, now_ms())
            .await?
            .check("accept")?;
        let ringing = CallEntry {
            tenant: c.tenant.clone(),
            call: id.clone(),
        };
        bind_conn(&mut r, keys::CALLS_RINGING, ringing.to_string(), &me, &id).await?;
        drop(r);
        if let Some(caller_conn) = &call.caller_conn {
            self.push(
                caller_conn,
                "call_accepted",
                &json!({"call": id.as_str(), "by": c.user.as_str()}),
            )
            .await;
        }
        for device in self.devices(&c.tenant, &c.user).await? {
            if device != me {
                self.push(
                    &device,
                    "call_answered_elsewhere",
                    &json!({"call": id.as_str()}),
                )
                .await;
            }
        }
        Ok(Outcome::json(
            &json!({"call": id.as_str(), "state": "active", "peer": call.caller.as_str()}),
        ))
    }

    pub(super) async fn end_op(
        &self,
        c: &Caller,
        req: CallIdReq,
        ending: Ending,
    ) -> Result<Outcome, ServiceError> {
        let id = call_id(&req.call)?;
        let f = ending.finish(&c.user);
        self.finish(&c.tenant, &id, f).await?.check(ending.verb())?;
        Ok(Outcome::json(
            &json!({"call": id.as_str(), "state": "ended", "reason": f.reason.as_str()}),
        ))
    }

    /// Ends a call that is still ringing on its caller's side (the caller
    /// left, or nobody answered in time). Refused quietly when it was
    /// answered or ended meanwhile.
    pub(super) async fn end_ringing(
        &self,
        tenant: &TenantId,
        id: &CallId,
        caller: &str,
        reason: EndReason,
    ) -> Result<(), ServiceError> {
        let caller = UserId::parse(caller)?;
        let f = Finish {
            by: &caller,
            party: Some(CallRole::Caller),
            from: CallState::Ringing,
            reason,
        };
        self.finish(tenant, id, f).await?;
        Ok(())
    }

    /// Ends a call through the FINISH script and, if it ended now, tells
    /// whoever must know.
    pub(super) async fn finish(
        &self,
        tenant: &TenantId,
        id: &CallId,
        f: Finish<'_>,
    ) -> Result<Transition, ServiceError> {
        let mut r = self.conn().await?;
        let t = scripts::finish(&mut r, &keys::call(tenant, id), f, now_ms()).await?;
        drop(r);
        if let Transition::Done(call) = &t {
            self.ended(tenant, id, call, f.reason, f.by).await;
        }
        Ok(t)
    }

    /// After a call ended: free both users, file it in their histories,
    /// tell the parties (and a ringing callee's devices). Nobody waits on
    /// this, so each failure is logged and the rest carries on.
    pub(super) async fn ended(
        &self,
        tenant: &TenantId,
        id: &CallId,
        call: &Call,
        reason: EndReason,
        by: &UserId,
    ) {
        match self.conn().await {
            Ok(mut r) => {
                for u in [&call.caller, &call.callee] {
                    scripts::release(&mut r, &keys::user_call(tenant, u), id)
                        .await
                        .log_failure("freeing a user after their call ended");
                    let history = keys::user_calls(tenant, u);
                    redis::pipe()
                        .lpush(&history, id.as_str())
                        .ignore()
                        .ltrim(&history, 0, self.cfg.history_max.max(1) as isize - 1)
                        .ignore()
                        .expire(&history, self.cfg.history_ttl_secs as i64)
                        .ignore()
                        .query_async::<()>(&mut r)
                        .await
                        .log_failure("filing a call in a user's history");
                }
                redis::pipe()
                    .expire(keys::call(tenant, id), self.cfg.history_ttl_secs as i64)
                    .ignore()
                    .zrem(
                        keys::CALLS_RINGING,
                        CallEntry {
                            tenant: tenant.clone(),
                            call: id.clone(),
                        }
                        .to_string(),
                    )
                    .ignore()
                    .query_async::<()>(&mut r)
                    .await
                    .log_failure("keeping an ended call for its history");
            }
            Err(e) => tracing::warn!(error = %e, call = %id, "could not file an ended call"),
        }
        let mut told: Vec<ConnMember> = call
            .caller_conn
            .iter()
            .chain(&call.callee_conn)
            .cloned()
            .collect();
        if call.callee_conn.is_none() {
            match self.devices(tenant, &call.callee).await {
                Ok(devices) => told.extend(devices),
                Err(e) => {
                    tracing::warn!(error = %e, call = %id, "could not find the callee's devices")
                }
            }
        }
        let data = json!({"call": id.as_str(), "reason": reason.as_str(), "by": by.as_str()});
        let mut seen: Vec<&ConnMember> = Vec::new();
        for member in &told {
            if !seen.contains(&member) {
                seen.push(member);
                self.push(member, "call_ended", &data).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_validate() {
        let id = CallId::generate();
        assert!(call_id(id.as_str()).is_ok(), "{id}");
        assert!(call_id("c123").is_err());
        assert!(call_id(&format!("x{}", &id.as_str()[1..])).is_err());
        assert_eq!(
            ConnMember::parse("gw-abc:12").map(|m| (m.gw.to_string(), m.conn)),
            Some(("gw-abc".into(), 12))
        );
        assert!(ConnMember::parse("nope").is_none());
    }
}
