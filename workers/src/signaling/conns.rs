//! A closed connection and its call (`keys::conn_call` says which): a
//! caller whose connection drops while it rings cancels the call; a party
//! of an active call gets `reconnect_grace_ms` to `resume` (its entry in
//! `CALLS_GRACE`), and the other party is told. A connection that no longer
//! speaks for its party (it resumed elsewhere) changes nothing.

use deadpool_redis::redis;
use serde_json::json;
use switchboard_shared::ids::{CallId, TenantId};
use switchboard_shared::keys;
use switchboard_shared::members::{CallPartyEntry, CallRole, ConnMember};
use switchboard_shared::now_ms;

use super::Signaling;
use super::scripts::{self, CallState, EndReason, Transition};
use crate::error::{LogFailure, ServiceError};

impl Signaling {
    pub(super) async fn disconnected(
        &self,
        tenant: &TenantId,
        me: &ConnMember,
    ) -> Result<(), ServiceError> {
        let mut r = self.conn().await?;
        let id: Option<String> = redis::cmd("GET")
            .arg(keys::conn_call(&me.gw, me.conn))
            .query_async(&mut r)
            .await?;
        let Some(id) = id else { return Ok(()) };
        let Ok(id) = CallId::parse(&id) else {
            tracing::warn!(value = %id, conn = %me, "ignoring a malformed call binding");
            return Ok(());
        };
        let key = keys::call(tenant, &id);
        let (state, caller, caller_conn, callee_conn): (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        ) = redis::cmd("HMGET")
            .arg(&key)
            .arg(&["state", "caller", "caller_conn", "callee_conn"])
            .query_async(&mut r)
            .await?;
        let member = me.to_string();
        let role = if caller_conn.as_deref() == Some(member.as_str()) {
            CallRole::Caller
        } else if callee_conn.as_deref() == Some(member.as_str()) {
            CallRole::Callee
        } else {
            return Ok(());
        };
        match state.as_deref().and_then(CallState::parse) {
            Some(CallState::Ringing) if role == CallRole::Caller => {
                drop(r);
                let Some(caller) = caller else { return Ok(()) };
                self.end_ringing(tenant, &id, &caller, EndReason::Cancelled)
                    .await?;
            }
            Some(CallState::Active) => {
                let deadline = now_ms() + self.cfg.reconnect_grace_ms;
                let Transition::Done(call) =
                    scripts::drop_party(&mut r, &key, role, me, deadline).await?
                else {
                    return Ok(());
                };
                let grace = CallPartyEntry {
                    tenant: tenant.clone(),
                    call: id.clone(),
                    role,
                };
                redis::cmd("ZADD")
                    .arg(keys::CALLS_GRACE)
                    .arg(deadline)
                    .arg(grace.to_string())
                    .query_async::<i64>(&mut r)
                    .await
                    .log_failure("starting a dropped party's grace period");
                drop(r);
                if let Some(other) = call.conn(role.other()) {
                    self.push(
                        other,
                        "peer_disconnected",
                        &json!({"call": id.as_str(), "user": call.user(role).as_str(), "grace_ms": self.cfg.reconnect_grace_ms}),
                    )
                    .await;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
