//! The `signaling` service: one-to-one calls between users (ring all of the
//! callee's devices, first accept wins), WebRTC offer/answer/candidate relay
//! between the two parties' connections only, a reconnect grace period, call
//! history with ratings, and mesh signaling among a room's members.
//!
//! Invariants:
//! - Call state lives in one Redis hash per call; every transition is one Lua
//!   script (`scripts.rs`): two devices accepting at once get one winner, and
//!   a call ends exactly once whoever ends it (hang-up, ring timeout, grace
//!   expiry), so the end is announced once.
//! - A user is in at most one call: `sb:{user:<t>:<u>}:call` names it while it
//!   rings or runs (set with NX, freed by compare-and-delete).
//! - Signals are relayed only from a party's current connection to the other
//!   party's current connection; anything else is refused.
//! - The callee's devices are the connections the presence service knows of,
//!   so signaling needs `presence` running.

mod scripts;

use deadpool_redis::redis;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard_proto::bus::Request;
use switchboard_shared::config::SignalingConfig;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::ids::{RoomId, TenantId, UserId};
use switchboard_shared::keys::{RoomKeys, UserKeys};
use switchboard_shared::now_ms;
use switchboard_shared::redis::Pool;

use crate::error::ServiceError;
use crate::service::push::event_to_conn;
use crate::service::{Caller, Outcome, Service, parse};
use switchboard_shared::conn_events::ConnLifecycle;
use switchboard_shared::members::ConnMember;

/// Calls still ringing, `<tenant>|<call>` by ring deadline (ms).
const RINGING: &str = "sb:calls:ringing";
/// Dropped parties, `<tenant>|<call>|<role>` by grace deadline (ms).
const GRACE: &str = "sb:calls:grace";

const SIGNAL_KINDS: [&str; 4] = ["offer", "answer", "candidate", "renegotiate"];

pub struct Signaling {
    nats: async_nats::Client,
    pool: Pool,
    cfg: SignalingConfig,
}

/// The outcome of a transition script.
struct Transition {
    status: i64,
    caller: String,
    callee: String,
    caller_conn: String,
    callee_conn: String,
    state: String,
}

impl From<(i64, String, String, String, String, String)> for Transition {
    fn from(v: (i64, String, String, String, String, String)) -> Self {
        Self {
            status: v.0,
            caller: v.1,
            callee: v.2,
            caller_conn: v.3,
            callee_conn: v.4,
            state: v.5,
        }
    }
}

impl Transition {
    /// Maps a refused transition to the client's error.
    fn check(&self, what: &str) -> Result<(), ServiceError> {
        match self.status {
            1 => Ok(()),
            -1 | -2 => Err(ServiceError::client(ErrorCode::NotFound, "no such call")),
            _ => Err(ServiceError::client(
                ErrorCode::Conflict,
                format!("cannot {what} a call that is {}", self.state),
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallReq {
    to: String,
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallIdReq {
    call: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalReq {
    call: String,
    kind: String,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateReq {
    call: String,
    rating: u8,
    feedback: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryReq {
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomSignalReq {
    room: String,
    to: String,
    /// One connection of `to` (the `conn` of its `welcome`); all of `to`'s
    /// connections in the room when absent.
    to_conn: Option<String>,
    kind: String,
    data: Box<RawValue>,
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Script {
        script: "signaling",
        detail: e.to_string(),
    }
}

fn bad(msg: impl Into<String>) -> ServiceError {
    ServiceError::bad_request(msg)
}

fn call_key(tenant: &TenantId, call: &str) -> String {
    format!("sb:{{call:{tenant}:{call}}}")
}

fn busy_key(tenant: &TenantId, user: &UserId) -> String {
    format!("sb:{{user:{tenant}:{}}}:call", user.encoded())
}

fn history_key(tenant: &TenantId, user: &UserId) -> String {
    format!("sb:{{user:{tenant}:{}}}:calls", user.encoded())
}

fn conn_call_key(member: &str) -> String {
    format!("sb:{{conn:{member}}}:call")
}

/// Records that `member` now speaks for its party in call `id` (so its
/// disconnect is noticed) and takes the call off a deadline set (`RINGING`
/// on accept, `GRACE` on resume).
async fn bind_conn(
    r: &mut deadpool_redis::Connection,
    deadlines: &str,
    entry: &str,
    member: &str,
    id: &str,
) -> Result<(), ServiceError> {
    redis::pipe()
        .zrem(deadlines, entry)
        .ignore()
        .set_ex(conn_call_key(member), id, 24 * 3600)
        .ignore()
        .query_async(r)
        .await
        .map_err(internal)
}

/// Marks a user as in call `id` unless they already are in one.
async fn claim_busy(
    r: &mut deadpool_redis::Connection,
    key: &str,
    id: &str,
    secs: u64,
) -> Result<bool, ServiceError> {
    let set: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(id)
        .arg("NX")
        .arg("EX")
        .arg(secs)
        .query_async(r)
        .await
        .map_err(internal)?;
    Ok(set.is_some())
}

fn new_call_id() -> String {
    let r: u64 = rand::random();
    format!("c{:013}{r:016x}", now_ms())
}

fn valid_call_id(id: &str) -> bool {
    id.len() == 30 && id.starts_with('c') && id[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_kind(kind: &str) -> Result<(), ServiceError> {
    if SIGNAL_KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(bad(format!("`kind` must be one of {SIGNAL_KINDS:?}")))
    }
}

impl Signaling {
    pub fn new(nats: async_nats::Client, pool: Pool, cfg: SignalingConfig) -> Self {
        Self { nats, pool, cfg }
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, ServiceError> {
        self.pool.get().await.map_err(internal)
    }

    async fn push(&self, member: &str, event: &str, data: Value) {
        if let Some(to) = ConnMember::parse(member) {
            event_to_conn(&self.nats, &to, event, &data).await;
        }
    }

    /// A user's connected devices, as the presence service knows them.
    async fn devices(&self, tenant: &TenantId, user: &UserId) -> Result<Vec<String>, ServiceError> {
        let mut r = self.conn().await?;
        redis::cmd("HKEYS")
            .arg(UserKeys::new(tenant, user).presence_conns)
            .query_async(&mut r)
            .await
            .map_err(internal)
    }

    async fn call(&self, c: &Caller, req: CallReq) -> Result<Outcome, ServiceError> {
        let callee = UserId::parse(&req.to)?;
        if callee == c.user {
            return Err(bad("you cannot call yourself"));
        }
        if let Some(d) = &req.data
            && d.get().len() > self.cfg.max_signal_bytes
        {
            return Err(bad(format!(
                "`data` is larger than {} bytes",
                self.cfg.max_signal_bytes
            )));
        }
        let devices = self.devices(&c.tenant, &callee).await?;
        if devices.is_empty() {
            return Err(ServiceError::client(
                ErrorCode::NotFound,
                format!("{callee} has no connected device"),
            ));
        }
        let id = new_call_id();
        let hold_secs = (self.cfg.ring_timeout_ms / 1000 + 24 * 3600).max(1);
        let mut r = self.conn().await?;
        let me = claim_busy(&mut r, &busy_key(&c.tenant, &c.user), &id, hold_secs).await?;
        if !me {
            return Err(ServiceError::client(
                ErrorCode::Conflict,
                "you are already in a call",
            ));
        }
        let them = claim_busy(&mut r, &busy_key(&c.tenant, &callee), &id, hold_secs).await?;
        if !them {
            let _: Result<i64, _> = scripts::RELEASE
                .key(busy_key(&c.tenant, &c.user))
                .arg(&id)
                .invoke_async(&mut r)
                .await;
            return Err(ServiceError::client(
                ErrorCode::Busy,
                format!("{callee} is in another call"),
            ));
        }
        let now = now_ms();
        let key = call_key(&c.tenant, &id);
        let _: () = redis::pipe()
            .hset_multiple(
                &key,
                &[
                    ("caller", c.user.as_str()),
                    ("callee", callee.as_str()),
                    ("caller_conn", c.member().as_str()),
                    ("callee_conn", ""),
                    ("state", "ringing"),
                    ("created_at", now.to_string().as_str()),
                ],
            )
            .ignore()
            .expire(&key, hold_secs as i64)
            .ignore()
            .zadd(
                RINGING,
                format!("{}|{id}", c.tenant),
                now + self.cfg.ring_timeout_ms,
            )
            .ignore()
            .set_ex(conn_call_key(&c.member()), &id, hold_secs)
            .ignore()
            .query_async(&mut r)
            .await
            .map_err(internal)?;
        drop(r);
        let data: Value = match &req.data {
            Some(d) => serde_json::from_str(d.get()).map_err(internal)?,
            None => Value::Null,
        };
        for device in &devices {
            self.push(
                device,
                "call_incoming",
                json!({"call": id, "from": c.user.as_str(), "data": data, "ring_timeout_ms": self.cfg.ring_timeout_ms}),
            )
            .await;
        }
        Ok(Outcome::json(
            &json!({"call": id, "state": "ringing", "devices": devices.len()}),
        ))
    }

    fn call_id(req: &CallIdReq) -> Result<&str, ServiceError> {
        if valid_call_id(&req.call) {
            Ok(&req.call)
        } else {
            Err(ServiceError::client(
                ErrorCode::InvalidId,
                "malformed call id",
            ))
        }
    }

    async fn accept(&self, c: &Caller, req: CallIdReq) -> Result<Outcome, ServiceError> {
        let id = Self::call_id(&req)?.to_owned();
        let mut r = self.conn().await?;
        let t: Transition = scripts::ACCEPT
            .key(call_key(&c.tenant, &id))
            .arg(c.user.as_str())
            .arg(c.member())
            .arg(now_ms())
            .invoke_async::<(i64, String, String, String, String, String)>(&mut r)
            .await
            .map_err(internal)?
            .into();
        t.check("accept")?;
        bind_conn(
            &mut r,
            RINGING,
            &format!("{}|{id}", c.tenant),
            &c.member(),
            &id,
        )
        .await?;
        drop(r);
        self.push(
            &t.caller_conn,
            "call_accepted",
            json!({"call": id, "by": c.user.as_str()}),
        )
        .await;
        for device in self.devices(&c.tenant, &c.user).await? {
            if device != c.member() {
                self.push(&device, "call_answered_elsewhere", json!({"call": id}))
                    .await;
            }
        }
        Ok(Outcome::json(
            &json!({"call": id, "state": "active", "peer": t.caller}),
        ))
    }

    /// Ends a call through FINISH and tells whoever must know.
    async fn finish(
        &self,
        tenant: &TenantId,
        id: &str,
        user: &str,
        role: &str,
        require_state: &str,
        reason: &str,
    ) -> Result<Transition, ServiceError> {
        let mut r = self.conn().await?;
        let t: Transition = scripts::FINISH
            .key(call_key(tenant, id))
            .arg(user)
            .arg(role)
            .arg(require_state)
            .arg(reason)
            .arg(now_ms())
            .invoke_async::<(i64, String, String, String, String, String)>(&mut r)
            .await
            .map_err(internal)?
            .into();
        drop(r);
        if t.status == 1 {
            self.ended(tenant, id, &t, reason, user).await;
        }
        Ok(t)
    }

    /// After a call ended: free both users, file it in their histories,
    /// tell the parties (and a ringing callee's devices).
    async fn ended(&self, tenant: &TenantId, id: &str, t: &Transition, reason: &str, by: &str) {
        let (Ok(caller), Ok(callee)) = (UserId::parse(&t.caller), UserId::parse(&t.callee)) else {
            return;
        };
        if let Ok(mut r) = self.conn().await {
            for u in [&caller, &callee] {
                let _: Result<i64, _> = scripts::RELEASE
                    .key(busy_key(tenant, u))
                    .arg(id)
                    .invoke_async(&mut r)
                    .await;
                let _: Result<(), _> = redis::pipe()
                    .lpush(history_key(tenant, u), id)
                    .ignore()
                    .ltrim(
                        history_key(tenant, u),
                        0,
                        self.cfg.history_max.max(1) as isize - 1,
                    )
                    .ignore()
                    .expire(history_key(tenant, u), self.cfg.history_ttl_secs as i64)
                    .ignore()
                    .query_async(&mut r)
                    .await;
            }
            let _: Result<(), _> = redis::pipe()
                .expire(call_key(tenant, id), self.cfg.history_ttl_secs as i64)
                .ignore()
                .zrem(RINGING, format!("{tenant}|{id}"))
                .ignore()
                .query_async(&mut r)
                .await;
        }
        let data = json!({"call": id, "reason": reason, "by": by});
        let mut told: Vec<String> = Vec::new();
        for member in [&t.caller_conn, &t.callee_conn] {
            if !member.is_empty() {
                told.push(member.clone());
            }
        }
        if t.callee_conn.is_empty()
            && let Ok(devices) = self.devices(tenant, &callee).await
        {
            told.extend(devices);
        }
        told.sort();
        told.dedup();
        for member in told {
            self.push(&member, "call_ended", data.clone()).await;
        }
    }

    async fn end_op(
        &self,
        c: &Caller,
        req: CallIdReq,
        role: &str,
        state: &str,
        reason: &str,
    ) -> Result<Outcome, ServiceError> {
        let id = Self::call_id(&req)?.to_owned();
        let t = self
            .finish(&c.tenant, &id, c.user.as_str(), role, state, reason)
            .await?;
        t.check(match reason {
            "rejected" => "reject",
            "cancelled" => "cancel",
            _ => "end",
        })?;
        Ok(Outcome::json(
            &json!({"call": id, "state": "ended", "reason": reason}),
        ))
    }

    async fn signal(&self, c: &Caller, req: SignalReq) -> Result<Outcome, ServiceError> {
        let id = Self::call_id(&CallIdReq {
            call: req.call.clone(),
        })?
        .to_owned();
        check_kind(&req.kind)?;
        if req.data.get().len() > self.cfg.max_signal_bytes {
            return Err(bad(format!(
                "`data` is larger than {} bytes",
                self.cfg.max_signal_bytes
            )));
        }
        let mut r = self.conn().await?;
        let f: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(call_key(&c.tenant, &id))
            .arg(&["state", "caller_conn", "callee_conn", "caller", "callee"])
            .query_async(&mut r)
            .await
            .map_err(internal)?;
        drop(r);
        let [state, caller_conn, callee_conn, ..] = f.as_slice() else {
            return Err(internal("HMGET shape"));
        };
        let me = c.member();
        // Only the parties' current connections may signal; everyone else
        // is told the call does not exist.
        let to = if caller_conn.as_deref() == Some(me.as_str()) {
            callee_conn.clone()
        } else if callee_conn.as_deref() == Some(me.as_str()) {
            caller_conn.clone()
        } else {
            return Err(ServiceError::client(ErrorCode::NotFound, "no such call"));
        };
        if state.as_deref() != Some("active") {
            return Err(ServiceError::client(
                ErrorCode::Conflict,
                "signals flow only in an active call",
            ));
        }
        let Some(to) = to.filter(|t| !t.is_empty()) else {
            return Err(ServiceError::client(
                ErrorCode::Conflict,
                "the other party is reconnecting",
            ));
        };
        let data: Value = serde_json::from_str(req.data.get()).map_err(internal)?;
        self.push(
            &to,
            "call_signal",
            json!({"call": id, "from": c.user.as_str(), "kind": req.kind, "data": data}),
        )
        .await;
        Ok(Outcome::json(&json!({"call": id, "relayed": true})))
    }

    async fn resume(&self, c: &Caller, req: CallIdReq) -> Result<Outcome, ServiceError> {
        let id = Self::call_id(&req)?.to_owned();
        let mut r = self.conn().await?;
        let t: Transition = scripts::RESUME
            .key(call_key(&c.tenant, &id))
            .arg(c.user.as_str())
            .arg(c.member())
            .invoke_async::<(i64, String, String, String, String, String)>(&mut r)
            .await
            .map_err(internal)?
            .into();
        t.check("resume")?;
        let role = if t.caller == c.user.as_str() {
            "caller"
        } else {
            "callee"
        };
        bind_conn(
            &mut r,
            GRACE,
            &format!("{}|{id}|{role}", c.tenant),
            &c.member(),
            &id,
        )
        .await?;
        drop(r);
        let other = if role == "caller" {
            &t.callee_conn
        } else {
            &t.caller_conn
        };
        self.push(
            other,
            "peer_reconnected",
            json!({"call": id, "user": c.user.as_str()}),
        )
        .await;
        let peer = if role == "caller" {
            &t.callee
        } else {
            &t.caller
        };
        Ok(Outcome::json(
            &json!({"call": id, "state": "active", "peer": peer}),
        ))
    }

    async fn history(&self, c: &Caller, req: HistoryReq) -> Result<Outcome, ServiceError> {
        let limit = req.limit.unwrap_or(20).clamp(1, 100);
        let mut r = self.conn().await?;
        let ids: Vec<String> = redis::cmd("LRANGE")
            .arg(history_key(&c.tenant, &c.user))
            .arg(0)
            .arg(limit as isize - 1)
            .query_async(&mut r)
            .await
            .map_err(internal)?;
        let mut out = Vec::new();
        for id in ids {
            let f: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                .arg(call_key(&c.tenant, &id))
                .query_async(&mut r)
                .await
                .map_err(internal)?;
            if f.is_empty() {
                continue;
            }
            let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
            let outgoing = f.get("caller").map(String::as_str) == Some(c.user.as_str());
            let with = if outgoing {
                f.get("callee")
            } else {
                f.get("caller")
            };
            let answered = num("answered_at");
            let duration = match (answered, num("ended_at")) {
                (Some(a), Some(e)) => e.saturating_sub(a),
                _ => 0,
            };
            let mine = |k: &str| f.get(&format!("{k}:{}", c.user)).cloned();
            out.push(json!({
                "call": id,
                "with": with,
                "direction": if outgoing { "outgoing" } else { "incoming" },
                "started_at": num("created_at"),
                "answered": answered.is_some(),
                "duration_ms": duration,
                "end_reason": f.get("end_reason"),
                "rating": mine("rating").and_then(|v| v.parse::<u8>().ok()),
                "feedback": mine("feedback"),
            }));
        }
        Ok(Outcome::json(&json!({"calls": out})))
    }

    async fn rate(&self, c: &Caller, req: RateReq) -> Result<Outcome, ServiceError> {
        let id = Self::call_id(&CallIdReq {
            call: req.call.clone(),
        })?
        .to_owned();
        if !(1..=5).contains(&req.rating) {
            return Err(bad("`rating` is 1 to 5"));
        }
        if req
            .feedback
            .as_ref()
            .is_some_and(|f| f.chars().count() > 1000)
        {
            return Err(bad("`feedback` is at most 1000 characters"));
        }
        let key = call_key(&c.tenant, &id);
        let mut r = self.conn().await?;
        let f: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&key)
            .arg(&["state", "caller", "callee"])
            .query_async(&mut r)
            .await
            .map_err(internal)?;
        let [state, caller, callee] = f.as_slice() else {
            return Err(internal("HMGET shape"));
        };
        let me = Some(c.user.to_string());
        if state.is_none() || (*caller != me && *callee != me) {
            return Err(ServiceError::client(ErrorCode::NotFound, "no such call"));
        }
        if state.as_deref() != Some("ended") {
            return Err(ServiceError::client(
                ErrorCode::Conflict,
                "rate a call after it ends",
            ));
        }
        let mut pipe = redis::pipe();
        pipe.hset(&key, format!("rating:{}", c.user), req.rating)
            .ignore();
        if let Some(fb) = &req.feedback {
            pipe.hset(&key, format!("feedback:{}", c.user), fb).ignore();
        }
        let _: () = pipe.query_async(&mut r).await.map_err(internal)?;
        Ok(Outcome::json(&json!({"call": id, "rating": req.rating})))
    }

    /// Mesh signaling in a room: relay to a member's connections in it.
    async fn room_signal(&self, c: &Caller, req: RoomSignalReq) -> Result<Outcome, ServiceError> {
        let room = RoomId::parse(&req.room)?;
        let to = UserId::parse(&req.to)?;
        check_kind(&req.kind)?;
        if req.data.get().len() > self.cfg.max_signal_bytes {
            return Err(bad(format!(
                "`data` is larger than {} bytes",
                self.cfg.max_signal_bytes
            )));
        }
        let k = RoomKeys::new(&c.tenant, &room);
        let mut r = self.conn().await?;
        let conns: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&k.conns)
            .query_async(&mut r)
            .await
            .map_err(internal)?;
        drop(r);
        let me = c.member();
        if !conns.iter().any(|(m, _)| *m == me) {
            return Err(ServiceError::client(
                ErrorCode::NotMember,
                format!("join room {room} first"),
            ));
        }
        let targets: Vec<&String> = conns
            .iter()
            .filter(|(m, u)| *u == to.as_str() && req.to_conn.as_ref().is_none_or(|tc| tc == m))
            .map(|(m, _)| m)
            .collect();
        if targets.is_empty() {
            return Err(ServiceError::client(
                ErrorCode::NotMember,
                format!("{to} is not in room {room}"),
            ));
        }
        let data: Value = serde_json::from_str(req.data.get()).map_err(internal)?;
        let body = json!({"room": room.as_str(), "from": c.user.as_str(), "from_conn": me, "kind": req.kind, "data": data});
        for t in &targets {
            self.push(t, "room_signal", body.clone()).await;
        }
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "delivered": targets.len()}),
        ))
    }

    /// A connection went away: a ringing caller cancels; a party of an
    /// active call gets `reconnect_grace_ms` to come back.
    async fn disconnected(&self, tenant: &TenantId, member: &str) {
        let Ok(mut r) = self.conn().await else { return };
        let id: Option<String> = redis::cmd("GET")
            .arg(conn_call_key(member))
            .query_async(&mut r)
            .await
            .unwrap_or(None);
        let Some(id) = id else { return };
        let f: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(call_key(tenant, &id))
            .arg(&["state", "caller", "caller_conn", "callee_conn"])
            .query_async(&mut r)
            .await
            .unwrap_or_default();
        let [state, caller, caller_conn, callee_conn] = f.as_slice() else {
            return;
        };
        let role = if caller_conn.as_deref() == Some(member) {
            "caller"
        } else if callee_conn.as_deref() == Some(member) {
            "callee"
        } else {
            return;
        };
        match state.as_deref() {
            Some("ringing") if role == "caller" => {
                drop(r);
                let caller = caller.clone().unwrap_or_default();
                let _ = self
                    .finish(tenant, &id, &caller, "caller", "ringing", "cancelled")
                    .await;
            }
            Some("active") => {
                let deadline = now_ms() + self.cfg.reconnect_grace_ms;
                let t: Result<(i64, String, String, String, String, String), _> =
                    scripts::DROP_PARTY
                        .key(call_key(tenant, &id))
                        .arg(role)
                        .arg(member)
                        .arg(deadline)
                        .invoke_async(&mut r)
                        .await;
                let Ok(t) = t.map(Transition::from) else {
                    return;
                };
                if t.status != 1 {
                    return;
                }
                let _: Result<(), _> = redis::cmd("ZADD")
                    .arg(GRACE)
                    .arg(deadline)
                    .arg(format!("{tenant}|{id}|{role}"))
                    .query_async(&mut r)
                    .await;
                drop(r);
                let (other, user) = if role == "caller" {
                    (&t.callee_conn, &t.caller)
                } else {
                    (&t.caller_conn, &t.callee)
                };
                self.push(
                    other,
                    "peer_disconnected",
                    json!({"call": id, "user": user, "grace_ms": self.cfg.reconnect_grace_ms}),
                )
                .await;
            }
            _ => {}
        }
    }

    /// Ends calls that rang too long or whose dropped party did not return.
    /// Entries are claimed with ZREM, so one replica handles each.
    pub async fn sweep(&self) {
        let Ok(mut r) = self.conn().await else { return };
        let now = now_ms();
        for set in [RINGING, GRACE] {
            let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(set)
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(200)
                .query_async(&mut r)
                .await
                .unwrap_or_default();
            for entry in due {
                let claimed: i64 = redis::cmd("ZREM")
                    .arg(set)
                    .arg(&entry)
                    .query_async(&mut r)
                    .await
                    .unwrap_or(0);
                if claimed != 1 {
                    continue;
                }
                let mut parts = entry.split('|');
                let (Some(t), Some(id)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let Ok(tenant) = TenantId::parse(t) else {
                    continue;
                };
                if set == RINGING {
                    let caller: Option<String> = redis::cmd("HGET")
                        .arg(call_key(&tenant, id))
                        .arg("caller")
                        .query_async(&mut r)
                        .await
                        .unwrap_or(None);
                    if let Some(caller) = caller {
                        let _ = self
                            .finish(&tenant, id, &caller, "caller", "ringing", "timeout")
                            .await;
                    }
                } else if let Some(role) = parts.next() {
                    let t: Result<(i64, String, String, String, String, String), _> =
                        scripts::GRACE_OVER
                            .key(call_key(&tenant, id))
                            .arg(role)
                            .arg(now_ms())
                            .invoke_async(&mut r)
                            .await;
                    if let Ok(t) = t.map(Transition::from)
                        && t.status == 1
                    {
                        let who = if role == "caller" {
                            t.caller.clone()
                        } else {
                            t.callee.clone()
                        };
                        self.ended(&tenant, id, &t, "disconnected", &who).await;
                    }
                }
            }
        }
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
            "reject" => {
                self.end_op(&c, parse(&req)?, "callee", "ringing", "rejected")
                    .await
            }
            "cancel" => {
                self.end_op(&c, parse(&req)?, "caller", "ringing", "cancelled")
                    .await
            }
            "end" => {
                self.end_op(&c, parse(&req)?, "any", "active", "hangup")
                    .await
            }
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
            self.disconnected(&c.tenant, &ConnMember::new(&c.gw, c.conn).to_string())
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_validate() {
        let id = new_call_id();
        assert!(valid_call_id(&id), "{id}");
        assert!(!valid_call_id("c123"));
        assert!(!valid_call_id(&format!("x{}", &id[1..])));
        assert_eq!(
            ConnMember::parse("gw-abc:12").map(|m| (m.gw.to_string(), m.conn)),
            Some(("gw-abc".into(), 12))
        );
        assert!(ConnMember::parse("nope").is_none());
    }
}
