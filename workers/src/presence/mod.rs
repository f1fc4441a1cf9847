//! The `presence` service: per-user status (online / away / busy / offline),
//! custom status text and last-seen time across all of a user's devices,
//! watch lists and room presence, and noticing dead gateways.
//!
//! Invariants:
//! - A user is online while any of their connections is registered here; the
//!   status they chose applies to all their devices.
//! - Every change bumps the user's `ver` and is pushed with `seq = ver` on
//!   `sb.presence.<t>.<u>` (a `LATEST` feed: watchers keep the newest) and,
//!   unsequenced, on each room the user is in.
//! - Gateways heartbeat on `sb.evt.conn`. One that stays silent for
//!   `presence.gateway_dead_after_ms` is claimed by exactly one presence
//!   replica (ZREM), which publishes a disconnect for each of its connections:
//!   every service then cleans up as if the sockets had closed.

mod scripts;

use deadpool_redis::redis;
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_proto::bus::{
    FeedMode, Interest, Push, ReplayBatch, ReplayItem, ReplayRequest, Request,
};
use switchboard_shared::auth::Identity;
use switchboard_shared::config::PresenceConfig;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::ids::{GatewayId, RoomId, TenantId, UserId};
use switchboard_shared::keys::{self, RoomKeys, UserKeys};
use switchboard_shared::redis::Pool;
use switchboard_shared::{bus, now_ms, subjects};

use crate::error::{LogFailure, ServiceError};
use crate::service::conns::mark_gone;
use crate::service::push::event_to_conn;
use crate::service::{Caller, Outcome, Service, parse};
use switchboard_shared::conn_events::{ConnInfo, ConnLifecycle};
use switchboard_shared::members::ConnMember;
use switchboard_shared::members::TenantUser;

/// Statuses a user may choose.
const STATUSES: [&str; 4] = ["online", "away", "busy", "offline"];

pub struct Presence {
    nats: async_nats::Client,
    pool: Pool,
    cfg: PresenceConfig,
}

/// A user's presence as stored.
#[derive(Debug, Clone, PartialEq)]
struct State {
    status: String,
    text: String,
    last_seen: u64,
    ver: u64,
    online: bool,
}

impl State {
    /// What others see: offline when no device is connected or the user
    /// chose to appear offline.
    fn to_json(&self, user: &UserId) -> Value {
        let status = if self.online {
            self.status.as_str()
        } else {
            "offline"
        };
        json!({
            "user": user.as_str(),
            "status": status,
            "text": if self.text.is_empty() { Value::Null } else { Value::from(self.text.clone()) },
            "last_seen": if self.online && status != "offline" { Value::Null } else { Value::from(self.last_seen) },
            "ver": self.ver,
        })
    }

    fn frame(&self, user: &UserId) -> Vec<u8> {
        serde_json::to_vec(&json!({"event": "presence", "data": self.to_json(user)}))
            .unwrap_or_default()
    }
}

/// Parses a script's `{changed, status, text, last_seen, ver, online}`.
fn parse_state(v: (i64, String, String, u64, u64, i64)) -> (bool, State) {
    let (changed, status, text, last_seen, ver, online) = v;
    (
        changed == 1,
        State {
            status,
            text,
            last_seen,
            ver,
            online: online == 1,
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetReq {
    status: Option<String>,
    /// A string sets the text, `null` clears it, absent keeps it.
    #[serde(default, deserialize_with = "some_value")]
    text: Option<Value>,
}

fn some_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersReq {
    users: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomReq {
    room: String,
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Script {
        script: "presence",
        detail: e.to_string(),
    }
}

impl Presence {
    pub fn new(nats: async_nats::Client, pool: Pool, cfg: PresenceConfig) -> Self {
        Self { nats, pool, cfg }
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, ServiceError> {
        self.pool.get().await.map_err(internal)
    }

    async fn state(&self, tenant: &TenantId, user: &UserId) -> Result<State, ServiceError> {
        let k = UserKeys::new(tenant, user);
        let mut r = self.conn().await?;
        let v = scripts::GET
            .key(&k.presence_conns)
            .key(&k.presence)
            .invoke_async(&mut r)
            .await
            .map_err(internal)?;
        Ok(parse_state(v).1)
    }

    /// Tells watchers and the user's rooms about a change.
    async fn announce(&self, tenant: &TenantId, user: &UserId, st: &State) {
        let frame = bytes::Bytes::from(st.frame(user));
        let push = Push {
            frame: frame.clone(),
            seq: st.ver,
            ..Push::default()
        };
        if let Err(e) = self
            .nats
            .publish(subjects::presence(tenant, user), bus::encode(&push))
            .await
        {
            tracing::warn!(error = %e, "could not publish presence");
        }
        let rooms: Vec<String> = match self.conn().await {
            Ok(mut r) => redis::cmd("SMEMBERS")
                .arg(UserKeys::new(tenant, user).rooms)
                .query_async(&mut r)
                .await
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let room_push = bus::encode(&Push {
            frame,
            ..Push::default()
        });
        for room in rooms {
            if let Ok(room) = RoomId::parse(&room) {
                let _ = self
                    .nats
                    .publish(subjects::room(tenant, &room), room_push.clone())
                    .await;
            }
        }
    }

    fn users(&self, req: &UsersReq) -> Result<Vec<UserId>, ServiceError> {
        if req.users.len() > self.cfg.max_users_per_request {
            return Err(ServiceError::client(
                ErrorCode::BadRequest,
                format!(
                    "at most {} users per request",
                    self.cfg.max_users_per_request
                ),
            ));
        }
        req.users.iter().map(|u| Ok(UserId::parse(u)?)).collect()
    }

    async fn set(&self, c: &Caller, req: SetReq) -> Result<Outcome, ServiceError> {
        let status = match req.status.as_deref() {
            None => "",
            Some(s) if STATUSES.contains(&s) => s,
            Some(s) => {
                return Err(ServiceError::client(
                    ErrorCode::BadRequest,
                    format!("unknown status {s:?}: use one of {STATUSES:?}"),
                ));
            }
        };
        let text = match &req.text {
            None => String::new(),
            Some(Value::Null) => "\0".to_owned(),
            Some(Value::String(t)) if t.is_empty() => "\0".to_owned(),
            Some(Value::String(t))
                if t.chars().count() <= self.cfg.max_text_chars && !t.contains('\0') =>
            {
                t.clone()
            }
            Some(_) => {
                return Err(ServiceError::client(
                    ErrorCode::BadRequest,
                    format!(
                        "`text` must be a string of at most {} characters, or null",
                        self.cfg.max_text_chars
                    ),
                ));
            }
        };
        let k = UserKeys::new(&c.tenant, &c.user);
        let mut r = self.conn().await?;
        let v = scripts::SET
            .key(&k.presence_conns)
            .key(&k.presence)
            .arg(status)
            .arg(text)
            .invoke_async(&mut r)
            .await
            .map_err(internal)?;
        drop(r);
        let (_, st) = parse_state(v);
        self.announce(&c.tenant, &c.user, &st).await;
        let mut data = st.to_json(&c.user);
        // The user sees their own choice, even when appearing offline.
        data["status"] = Value::from(st.status.clone());
        Ok(Outcome::json(&data))
    }

    async fn get(&self, c: &Caller, req: UsersReq) -> Result<Outcome, ServiceError> {
        let mut out = Vec::new();
        for u in self.users(&req)? {
            out.push(self.state(&c.tenant, &u).await?.to_json(&u));
        }
        Ok(Outcome::json(&json!({"users": out})))
    }

    async fn subscribe(&self, c: &Caller, req: UsersReq) -> Result<Outcome, ServiceError> {
        let mut out = Outcome::default();
        let mut list = Vec::new();
        for u in self.users(&req)? {
            let st = self.state(&c.tenant, &u).await?;
            list.push(st.to_json(&u));
            out.attach.push(Interest {
                subject: subjects::presence(&c.tenant, &u),
                after_seq: st.ver,
                recover_subject: subjects::service_op("presence", subjects::REPLAY_OP),
                key: u.to_string(),
                mode: FeedMode::Latest as i32,
            });
        }
        out.data = serde_json::to_vec(&json!({"users": list})).map_err(internal)?;
        Ok(out)
    }

    async fn unsubscribe(&self, c: &Caller, req: UsersReq) -> Result<Outcome, ServiceError> {
        let users = self.users(&req)?;
        let mut out = Outcome::json(&json!({"users": users.len()}));
        out.detach = users
            .iter()
            .map(|u| subjects::presence(&c.tenant, u))
            .collect();
        Ok(out)
    }

    /// Presence of a room's members. Members also receive `presence` pushes
    /// on the room feed whenever one of them changes.
    async fn room(&self, c: &Caller, req: RoomReq) -> Result<Outcome, ServiceError> {
        let room = RoomId::parse(&req.room)?;
        let k = RoomKeys::new(&c.tenant, &room);
        let mut r = self.conn().await?;
        let (private, member, users): (Option<String>, bool, Vec<String>) = redis::pipe()
            .hget(&k.meta, "private")
            .hexists(&k.conns, ConnMember::new(&c.gw, c.conn).to_string())
            .hkeys(&k.users)
            .query_async(&mut r)
            .await
            .map_err(internal)?;
        drop(r);
        match private.as_deref() {
            None => {
                return Err(ServiceError::client(
                    ErrorCode::NotFound,
                    format!("no room {room}"),
                ));
            }
            Some("1") if !member && !Identity::may_access(&c.grants, room.as_str()) => {
                return Err(ServiceError::client(ErrorCode::Forbidden, "private room"));
            }
            _ => {}
        }
        let mut list = Vec::new();
        for u in users {
            if let Ok(u) = UserId::parse(&u) {
                list.push(self.state(&c.tenant, &u).await?.to_json(&u));
            }
        }
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "members": list}),
        ))
    }

    async fn connected(&self, gw: &GatewayId, conn: u64, tenant: &TenantId, user: &UserId) {
        let member = ConnMember::new(gw, conn).to_string();
        let k = UserKeys::new(tenant, user);
        let Ok(mut r) = self.conn().await else { return };
        let _: Result<(), _> = redis::pipe()
            .hset(keys::gateway_conns(gw), conn, format!("{tenant}|{user}"))
            .ignore()
            .cmd("ZADD")
            .arg(keys::GATEWAYS)
            .arg("NX")
            .arg(now_ms())
            .arg(gw.as_str())
            .ignore()
            .query_async(&mut r)
            .await;
        let res = scripts::CONNECT
            .key(&k.presence_conns)
            .key(&k.presence)
            .arg(&member)
            .arg(now_ms())
            .invoke_async(&mut r)
            .await;
        let gone: bool = redis::cmd("EXISTS")
            .arg(keys::conn_gone(gw, conn))
            .query_async(&mut r)
            .await
            .unwrap_or(false);
        drop(r);
        match res {
            Ok(v) => {
                let (changed, st) = parse_state(v);
                if changed {
                    self.announce(tenant, user, &st).await;
                }
                if !gone {
                    // The new device learns the user's own presence (status
                    // and text may have been set from another device). It
                    // also tells the device it is now reachable as this user.
                    let mut data = st.to_json(user);
                    data["status"] = Value::from(st.status.clone());
                    data["self"] = Value::Bool(true);
                    event_to_conn(&self.nats, &ConnMember::new(gw, conn), "presence", &data).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence connect failed"),
        }
        if gone {
            // The disconnect was processed first: undo.
            self.disconnected(gw, conn, tenant, user).await;
        }
    }

    async fn disconnected(&self, gw: &GatewayId, conn: u64, tenant: &TenantId, user: &UserId) {
        let k = UserKeys::new(tenant, user);
        let Ok(mut r) = self.conn().await else { return };
        let _: Result<(), _> = mark_gone(&mut redis::pipe(), gw, conn)
            .hdel(keys::gateway_conns(gw), conn)
            .ignore()
            .query_async(&mut r)
            .await;
        let res = scripts::DISCONNECT
            .key(&k.presence_conns)
            .key(&k.presence)
            .arg(ConnMember::new(gw, conn).to_string())
            .arg(now_ms())
            .invoke_async(&mut r)
            .await;
        drop(r);
        match res {
            Ok(v) => {
                let (changed, st) = parse_state(v);
                if changed {
                    self.announce(tenant, user, &st).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence disconnect failed"),
        }
    }

    /// Claims gateways that stopped heartbeating and disconnects their
    /// connections on the bus. Returns how many gateways were reaped.
    pub async fn reap_dead_gateways(&self) -> usize {
        let Ok(mut r) = self.conn().await else {
            return 0;
        };
        let cutoff = now_ms().saturating_sub(self.cfg.gateway_dead_after_ms);
        let dead: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(keys::GATEWAYS)
            .arg("-inf")
            .arg(cutoff)
            .arg("LIMIT")
            .arg(0)
            .arg(20)
            .query_async(&mut r)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "looking for dead gateways failed");
                Vec::new()
            });
        let mut reaped = 0;
        for gw in dead {
            let claimed: i64 = redis::cmd("ZREM")
                .arg(keys::GATEWAYS)
                .arg(&gw)
                .query_async(&mut r)
                .await
                .unwrap_or(0);
            let Ok(gw) = GatewayId::parse(&gw) else {
                continue;
            };
            if claimed != 1 {
                continue;
            }
            let conns: Vec<(u64, String)> = redis::cmd("HGETALL")
                .arg(keys::gateway_conns(&gw))
                .query_async(&mut r)
                .await
                .unwrap_or_default();
            tracing::warn!(gateway = %gw, connections = conns.len(), "gateway stopped heartbeating: disconnecting its connections");
            for (conn, who) in conns {
                let Some(TenantUser { tenant, user }) = TenantUser::parse(&who) else {
                    tracing::warn!(gateway = %gw, conn, value = %who, "skipping a malformed connection entry");
                    continue;
                };
                let ev = ConnLifecycle::Disconnected(ConnInfo {
                    gw: gw.clone(),
                    conn,
                    tenant,
                    user,
                });
                self.nats
                    .publish(subjects::CONN_EVENTS, ev.encode())
                    .await
                    .log_failure("announcing a dead gateway's disconnect");
            }
            reaped += 1;
        }
        let _ = self.nats.flush().await;
        reaped
    }

    /// Records when a gateway was last heard of, by this worker's clock.
    async fn heartbeat(&self, gw: &GatewayId) {
        let Ok(mut r) = self.conn().await else { return };
        let _: Result<(), _> = redis::cmd("ZADD")
            .arg(keys::GATEWAYS)
            .arg(now_ms())
            .arg(gw.as_str())
            .query_async(&mut r)
            .await;
    }
}

impl Service for Presence {
    fn name(&self) -> &'static str {
        "presence"
    }

    async fn handle(&self, op: &str, req: Request) -> Result<Outcome, ServiceError> {
        let c = Caller::from_request(&req)?;
        match op {
            "set" => self.set(&c, parse(&req)?).await,
            "get" => self.get(&c, parse(&req)?).await,
            "subscribe" => self.subscribe(&c, parse(&req)?).await,
            "unsubscribe" => self.unsubscribe(&c, parse(&req)?).await,
            "room" => self.room(&c, parse(&req)?).await,
            other => Err(ServiceError::client(
                ErrorCode::UnknownOp,
                format!("presence has no op {other:?}"),
            )),
        }
    }

    async fn replay(&self, req: ReplayRequest) -> Result<ReplayBatch, ServiceError> {
        let tenant = TenantId::parse(&req.tenant)?;
        let user = UserId::parse(&req.key)?;
        let st = self.state(&tenant, &user).await?;
        let items = if st.ver > req.after_seq {
            vec![ReplayItem {
                seq: st.ver,
                frame: st.frame(&user).into(),
            }]
        } else {
            Vec::new()
        };
        Ok(ReplayBatch {
            items,
            head_seq: st.ver,
            first_seq: st.ver,
            gone: false,
        })
    }

    async fn on_conn_event(&self, ev: ConnLifecycle) {
        match ev {
            ConnLifecycle::Heartbeat { gw, .. } => self.heartbeat(&gw).await,
            ConnLifecycle::Connected(c) => self.connected(&c.gw, c.conn, &c.tenant, &c.user).await,
            ConnLifecycle::Disconnected(c) => {
                self.disconnected(&c.gw, c.conn, &c.tenant, &c.user).await
            }
        }
    }
}
