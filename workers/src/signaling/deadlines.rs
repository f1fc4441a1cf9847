//! Deadlines of calls: a call that rings longer than `ring_timeout_ms` ends
//! (`timeout`); a party that dropped out of an active call has
//! `reconnect_grace_ms` to `resume` from a new connection, or the call ends
//! (`disconnected`).
//!
//! The sweeper runs on every replica; each due entry is claimed with ZREM,
//! so exactly one replica acts on it. The end itself is a script that only
//! ends a call still in the state the deadline was for, so a deadline that
//! races an accept or a resume does nothing.

use deadpool_redis::redis;
use serde_json::json;
use switchboard_shared::keys;
use switchboard_shared::members::{CallEntry, CallPartyEntry, CallRole};
use switchboard_shared::now_ms;

use super::Signaling;
use super::calls::{CallIdReq, bind_conn, call_id};
use super::scripts::{self, EndReason, Transition};
use crate::error::{LogFailure, ServiceError};
use crate::service::{Caller, Outcome};

/// How many due entries of one set a sweep handles at most.
const SWEEP_BATCH: usize = 200;

/// Entries of the deadline set `set` due at `now`.
async fn due(
    r: &mut deadpool_redis::Connection,
    set: &str,
    now: u64,
) -> Result<Vec<String>, ServiceError> {
    Ok(redis::cmd("ZRANGEBYSCORE")
        .arg(set)
        .arg("-inf")
        .arg(now)
        .arg("LIMIT")
        .arg(0)
        .arg(SWEEP_BATCH)
        .query_async(r)
        .await?)
}

/// Takes `entry` off `set`; whether this replica got it.
async fn claim(
    r: &mut deadpool_redis::Connection,
    set: &str,
    entry: &str,
) -> Result<bool, ServiceError> {
    let removed: i64 = redis::cmd("ZREM")
        .arg(set)
        .arg(entry)
        .query_async(r)
        .await?;
    Ok(removed == 1)
}

impl Signaling {
    /// Ends calls that rang too long or whose dropped party did not return.
    pub async fn sweep(&self) {
        let now = now_ms();
        self.sweep_ringing(now)
            .await
            .log_failure("looking for calls that rang too long");
        self.sweep_grace(now)
            .await
            .log_failure("looking for parties whose grace is over");
    }

    async fn sweep_ringing(&self, now: u64) -> Result<(), ServiceError> {
        let mut r = self.conn().await?;
        for entry in due(&mut r, keys::CALLS_RINGING, now).await? {
            if !claim(&mut r, keys::CALLS_RINGING, &entry).await? {
                continue;
            }
            let Some(e) = CallEntry::parse(&entry) else {
                tracing::warn!(value = %entry, "dropping a malformed ringing entry");
                continue;
            };
            self.ring_timeout(&mut r, &e)
                .await
                .log_failure("ending a call that rang too long");
        }
        Ok(())
    }

    async fn ring_timeout(
        &self,
        r: &mut deadpool_redis::Connection,
        e: &CallEntry,
    ) -> Result<(), ServiceError> {
        let caller: Option<String> = redis::cmd("HGET")
            .arg(keys::call(&e.tenant, &e.call))
            .arg("caller")
            .query_async(r)
            .await?;
        // The call's hash is gone: nothing left to end.
        let Some(caller) = caller else { return Ok(()) };
        self.end_ringing(&e.tenant, &e.call, &caller, EndReason::Timeout)
            .await
    }

    async fn sweep_grace(&self, now: u64) -> Result<(), ServiceError> {
        let mut r = self.conn().await?;
        for entry in due(&mut r, keys::CALLS_GRACE, now).await? {
            if !claim(&mut r, keys::CALLS_GRACE, &entry).await? {
                continue;
            }
            let Some(e) = CallPartyEntry::parse(&entry) else {
                tracing::warn!(value = %entry, "dropping a malformed grace entry");
                continue;
            };
            self.grace_over(&mut r, &e)
                .await
                .log_failure("ending a call whose party did not come back");
        }
        Ok(())
    }

    async fn grace_over(
        &self,
        r: &mut deadpool_redis::Connection,
        e: &CallPartyEntry,
    ) -> Result<(), ServiceError> {
        let key = keys::call(&e.tenant, &e.call);
        // Refused: they came back, or the call ended otherwise.
        if let Transition::Done(call) = scripts::grace_over(r, &key, e.role, now_ms()).await? {
            let who = call.user(e.role).clone();
            self.ended(&e.tenant, &e.call, &call, EndReason::Disconnected, &who)
                .await;
        }
        Ok(())
    }

    /// A party whose connection dropped speaks for their side again, from
    /// the connection asking.
    pub(super) async fn resume(&self, c: &Caller, req: CallIdReq) -> Result<Outcome, ServiceError> {
        let id = call_id(&req.call)?;
        let me = c.conn_member();
        let mut r = self.conn().await?;
        let call = scripts::resume(&mut r, &keys::call(&c.tenant, &id), &c.user, &me)
            .await?
            .check("resume")?;
        let role = call.role_of(&c.user).unwrap_or(CallRole::Callee);
        let grace = CallPartyEntry {
            tenant: c.tenant.clone(),
            call: id.clone(),
            role,
        };
        bind_conn(&mut r, keys::CALLS_GRACE, grace.to_string(), &me, &id).await?;
        drop(r);
        if let Some(other) = call.conn(role.other()) {
            self.push(
                other,
                "peer_reconnected",
                &json!({"call": id.as_str(), "user": c.user.as_str()}),
            )
            .await;
        }
        Ok(Outcome::json(&json!({
            "call": id.as_str(),
            "state": "active",
            "peer": call.user(role.other()).as_str(),
        })))
    }
}
