//! The `rooms` service: create, join, leave, publish, members, info and
//! history, plus disconnect cleanup and gap replay for gateways.
//!
//! Invariants:
//! - All room state is in Redis under one hash tag per room; every mutation
//!   is one Lua script, so replicas can serve any room concurrently.
//! - `seq` is assigned by Redis inside the publish script and the message is
//!   appended to the history stream (entry id `<seq>-0`) in the same script:
//!   history order is seq order, with no holes except trimmed ones.
//! - Live fan-out is one NATS message per room on `sb.room.<tenant>.<room>`;
//!   gateways restore seq order and fill gaps through `_replay`.

pub mod access;
mod scripts;

use deadpool_redis::redis::{self, Value};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use switchboard_proto::bus::{
    ConnRef, FeedMode, Interest, Push, ReplayBatch, ReplayItem, ReplayRequest, Request,
};
use switchboard_shared::auth::Identity;
use switchboard_shared::config::RoomsConfig;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::ids::{GatewayId, RoomId, TenantId, UserId};
use switchboard_shared::keys::{self, RoomKeys, UserKeys};
use switchboard_shared::redis::Pool;
use switchboard_shared::{bus, now_ms, subjects};

use crate::error::{ErrorKind, ServiceError};
use crate::service::conns::mark_gone;
use crate::service::{Caller, Outcome, Service, parse};
use switchboard_shared::conn_events::ConnLifecycle;
use switchboard_shared::members::ConnMember;

/// The rooms service.
pub struct Rooms {
    nats: async_nats::Client,
    pool: Pool,
    cfg: RoomsConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateReq {
    room: Option<String>,
    max_members: Option<u32>,
    #[serde(default)]
    private: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomReq {
    room: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinReq {
    room: String,
    /// Resume: deliver every message after this seq (within the history).
    after: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishReq {
    room: String,
    data: Box<RawValue>,
    #[serde(default)]
    echo: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryReq {
    room: String,
    after: Option<u64>,
    before: Option<u64>,
    limit: Option<u64>,
}

/// Internal (`rooms._create_for`): another service makes a private room for
/// a set of users, e.g. a match.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateForReq {
    pub room: Option<String>,
    pub max_members: Option<u32>,
    pub members: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypingReq {
    room: String,
    typing: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CursorReq {
    room: String,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkReq {
    room: String,
    delivered: Option<u64>,
    read: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnreadReq {
    rooms: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReactReq {
    room: String,
    seq: u64,
    emoji: String,
    #[serde(default)]
    remove: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReactionsReq {
    room: String,
    seq: u64,
}

/// Most rooms one `unread` request may name.
const MAX_UNREAD_ROOMS: usize = 200;

/// Reactions are short: an emoji or a short code like `thumbs_up`.
fn check_emoji(e: &str) -> Result<(), ServiceError> {
    if e.is_empty()
        || e.len() > 32
        || e.contains('|')
        || e.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ServiceError::client(
            ErrorCode::BadRequest,
            "`emoji` must be 1 to 32 bytes without whitespace or `|`",
        ));
    }
    Ok(())
}

/// A page read from a room's history stream.
struct Read {
    head: u64,
    /// Oldest seq still held (head + 1 when the history is empty).
    first: u64,
    /// (seq, message JSON), in the order asked for.
    items: Vec<(u64, String)>,
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Script {
        script: "rooms",
        detail: e.to_string(),
    }
}

fn room_id(s: &str) -> Result<RoomId, ServiceError> {
    Ok(RoomId::parse(s)?)
}

impl Rooms {
    pub fn new(nats: async_nats::Client, pool: Pool, cfg: RoomsConfig) -> Self {
        Self { nats, pool, cfg }
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, ServiceError> {
        self.pool.get().await.map_err(internal)
    }

    async fn push(&self, tenant: &TenantId, room: &RoomId, push: Push) {
        if let Err(e) = self
            .nats
            .publish(subjects::room(tenant, room), bus::encode(&push))
            .await
        {
            tracing::warn!(error = %e, "could not publish to room");
        }
    }

    async fn member_event(
        &self,
        event: &str,
        tenant: &TenantId,
        room: &RoomId,
        user: &UserId,
        members: i64,
        origin: ConnRef,
    ) {
        let frame = json!({"event": event, "data": {"room": room.as_str(), "user": user.as_str(), "members": members}});
        let push = Push {
            frame: serde_json::to_vec(&frame).unwrap_or_default().into(),
            seq: 0,
            origin: Some(origin),
            echo: false,
        };
        self.push(tenant, room, push).await;
    }

    async fn create(&self, c: &Caller, req: CreateReq) -> Result<Outcome, ServiceError> {
        let room = match &req.room {
            Some(r) => room_id(r)?,
            None => RoomId::generate(),
        };
        if req.private && !Identity::may_access(&c.grants, room.as_str()) {
            return Err(ServiceError::client(
                ErrorCode::Forbidden,
                "creating a private room needs a `rooms` grant for its id in the token",
            ));
        }
        let max = req.max_members.unwrap_or(0);
        let cap = self.cfg.max_members_cap;
        if cap > 0 && max > cap {
            return Err(ServiceError::client(
                ErrorCode::BadRequest,
                format!("max_members is at most {cap}"),
            ));
        }
        self.create_room(&c.tenant, &room, max, req.private, &c.user)
            .await?;
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "max_members": max, "private": req.private}),
        ))
    }

    /// Creates a room (not yet joined; it expires if nobody joins).
    async fn create_room(
        &self,
        tenant: &TenantId,
        room: &RoomId,
        max: u32,
        private: bool,
        creator: &UserId,
    ) -> Result<(), ServiceError> {
        let k = RoomKeys::new(tenant, room);
        let mut r = self.conn().await?;
        let created: i64 = scripts::CREATE
            .key(k.all().as_slice())
            .arg(max)
            .arg(if private { "1" } else { "0" })
            .arg(creator.as_str())
            .arg(now_ms())
            .arg(self.cfg.idle_ttl_secs.max(1))
            .invoke_async(&mut r)
            .await
            .map_err(internal)?;
        if created == 0 {
            return Err(ServiceError::client(
                ErrorCode::AlreadyExists,
                format!("room {room} exists"),
            ));
        }
        Ok(())
    }

    /// A private room that admits exactly `members` (plus token grants).
    async fn create_for(&self, req: &Request) -> Result<Outcome, ServiceError> {
        let tenant = TenantId::parse(&req.tenant)?;
        let body: CreateForReq = parse(req)?;
        if body.members.is_empty() || body.members.len() > 100 {
            return Err(ServiceError::client(
                ErrorCode::BadRequest,
                "`members` takes 1 to 100 users",
            ));
        }
        let members: Vec<UserId> = body
            .members
            .iter()
            .map(|u| UserId::parse(u))
            .collect::<Result<_, _>>()?;
        let room = match &body.room {
            Some(r) => room_id(r)?,
            None => RoomId::generate(),
        };
        let max = body.max_members.unwrap_or(members.len() as u32);
        self.create_room(&tenant, &room, max, true, &members[0])
            .await?;
        let k = RoomKeys::new(&tenant, &room);
        let mut r = self.conn().await?;
        let mut pipe = redis::pipe();
        for u in &members {
            pipe.hset(&k.meta, format!("allow:{u}"), 1).ignore();
        }
        let _: () = pipe.query_async(&mut r).await.map_err(internal)?;
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "max_members": max, "private": true}),
        ))
    }

    async fn join(&self, c: &Caller, req: JoinReq) -> Result<Outcome, ServiceError> {
        let room = room_id(&req.room)?;
        let k = RoomKeys::new(&c.tenant, &room);
        let index = format!("{}:{}", c.tenant, room);
        let conn_rooms = keys::conn_rooms(&c.gw, c.conn);
        let granted = Identity::may_access(&c.grants, room.as_str());
        let mut r = self.conn().await?;
        let _: () = redis::cmd("SADD")
            .arg(&conn_rooms)
            .arg(&index)
            .query_async(&mut r)
            .await
            .map_err(internal)?;
        let res: Vec<i64> = scripts::JOIN
            .key(k.all().as_slice())
            .arg(c.member())
            .arg(c.user.as_str())
            .arg(if granted { "1" } else { "0" })
            .invoke_async(&mut r)
            .await
            .map_err(internal)?;
        let (status, seq, members, new_user) = match res.as_slice() {
            [a, b, c, d] => (*a, *b, *c, *d),
            _ => return Err(internal("JOIN returned an unexpected shape")),
        };
        match status {
            1 => {}
            -1 => {
                return Err(ServiceError::client(
                    ErrorCode::NotFound,
                    format!("no room {room}"),
                ));
            }
            -2 => {
                return Err(ServiceError::client(
                    ErrorCode::RoomFull,
                    format!("room {room} is full"),
                ));
            }
            -3 => {
                return Err(ServiceError::client(
                    ErrorCode::Forbidden,
                    "private room: the token has no grant for it",
                ));
            }
            other => return Err(internal(format!("JOIN status {other}"))),
        }
        // A disconnect processed meanwhile means this membership must not stay.
        let gone: bool = redis::cmd("EXISTS")
            .arg(keys::conn_gone(&c.gw, c.conn))
            .query_async(&mut r)
            .await
            .map_err(internal)?;
        if gone {
            self.leave_conn(&c.tenant, &room, &c.gw, c.conn).await;
            return Err(ServiceError::client(
                ErrorCode::NotFound,
                "connection is closed",
            ));
        }
        if new_user == 1 {
            let _: Result<(), _> = redis::cmd("SADD")
                .arg(UserKeys::new(&c.tenant, &c.user).rooms)
                .arg(room.as_str())
                .query_async(&mut r)
                .await;
        }
        drop(r);
        if new_user == 1 {
            self.member_event(
                "member_joined",
                &c.tenant,
                &room,
                &c.user,
                members,
                c.origin(),
            )
            .await;
        }
        let seq = seq.max(0) as u64;
        let after = req.after.map_or(seq, |a| a.min(seq));
        let mut out =
            Outcome::json(&json!({"room": room.as_str(), "members": members, "seq": seq}));
        out.attach.push(Interest {
            subject: subjects::room(&c.tenant, &room),
            after_seq: after,
            recover_subject: subjects::service_op("rooms", subjects::REPLAY_OP),
            key: room.to_string(),
            mode: FeedMode::Log as i32,
        });
        Ok(out)
    }

    /// Removes one connection from one room, announcing the user's departure
    /// when it was their last connection there. Returns the member count.
    async fn leave_conn(
        &self,
        tenant: &TenantId,
        room: &RoomId,
        gw: &GatewayId,
        conn: u64,
    ) -> Option<i64> {
        let k = RoomKeys::new(tenant, room);
        let mut r = self.conn().await.ok()?;
        let res: Result<(i64, i64, i64, String), _> = scripts::LEAVE
            .key(k.all().as_slice())
            .arg(ConnMember::new(gw, conn).to_string())
            .arg(self.cfg.idle_ttl_secs.max(1))
            .invoke_async(&mut r)
            .await;
        let _: Result<(), _> = redis::cmd("SREM")
            .arg(keys::conn_rooms(gw, conn))
            .arg(format!("{tenant}:{room}"))
            .query_async(&mut r)
            .await;
        drop(r);
        match res {
            Ok((1, members, gone, user)) => {
                if gone == 1
                    && let Ok(user) = UserId::parse(&user)
                {
                    if let Ok(mut r) = self.conn().await {
                        let _: Result<(), _> = redis::cmd("SREM")
                            .arg(UserKeys::new(tenant, &user).rooms)
                            .arg(room.as_str())
                            .query_async(&mut r)
                            .await;
                    }
                    self.stop_typing(tenant, room, &user).await;
                    let origin = ConnRef {
                        gateway: gw.to_string(),
                        conn,
                    };
                    self.member_event("member_left", tenant, room, &user, members, origin)
                        .await;
                }
                Some(members)
            }
            Ok((_, members, _, _)) => Some(members),
            Err(e) => {
                tracing::warn!(error = %e, "leave failed");
                None
            }
        }
    }

    async fn leave(&self, c: &Caller, req: RoomReq) -> Result<Outcome, ServiceError> {
        let room = room_id(&req.room)?;
        let members = self
            .leave_conn(&c.tenant, &room, &c.gw, c.conn)
            .await
            .ok_or_else(|| internal("leave failed"))?;
        let mut out = Outcome::json(&json!({"room": room.as_str(), "members": members}));
        out.detach.push(subjects::room(&c.tenant, &room));
        Ok(out)
    }

    async fn publish(&self, c: &Caller, req: PublishReq) -> Result<Outcome, ServiceError> {
        let room = room_id(&req.room)?;
        let k = RoomKeys::new(&c.tenant, &room);
        let ts = now_ms();
        // The stored message is head + seq + tail; both halves are JSON built
        // by serde, so the result is valid JSON whatever the ids contain.
        let head = format!(
            "{{\"room\":{},\"from\":{},\"ts\":{ts},\"seq\":",
            serde_json::to_string(room.as_str()).map_err(internal)?,
            serde_json::to_string(c.user.as_str()).map_err(internal)?,
        );
        let tail = format!(",\"data\":{}}}", req.data.get());
        let cutoff = ts.saturating_sub(self.cfg.history_ttl_secs * 1000);
        let mut r = self.conn().await?;
        let (seq, message): (i64, String) = scripts::PUBLISH
            .key(k.all().as_slice())
            .arg(c.member())
            .arg(ts)
            .arg(head)
            .arg(tail)
            .arg(self.cfg.history_max)
            .arg(cutoff)
            .arg(c.user.as_str())
            .invoke_async(&mut r)
            .await
            .map_err(internal)?;
        drop(r);
        if seq < 0 {
            return Err(ServiceError::client(
                ErrorCode::NotMember,
                format!("join room {room} before publishing"),
            ));
        }
        let push = Push {
            frame: message_frame(&message).into(),
            seq: seq as u64,
            origin: Some(c.origin()),
            echo: req.echo,
        };
        self.push(&c.tenant, &room, push).await;
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "seq": seq, "ts": ts}),
        ))
    }

    async fn members(&self, c: &Caller, req: RoomReq) -> Result<Outcome, ServiceError> {
        let room = room_id(&req.room)?;
        let k = RoomKeys::new(&c.tenant, &room);
        access::check_readable(&mut self.conn().await?, c, &room).await?;
        let mut r = self.conn().await?;
        let users: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(&k.users)
            .query_async(&mut r)
            .await
            .map_err(internal)?;
        let list: Vec<_> = users
            .iter()
            .map(|(u, n)| json!({"user": u, "connections": n}))
            .collect();
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "count": list.len(), "members": list}),
        ))
    }

    async fn info(&self, c: &Caller, req: RoomReq) -> Result<Outcome, ServiceError> {
        let room = room_id(&req.room)?;
        let k = RoomKeys::new(&c.tenant, &room);
        access::check_readable(&mut self.conn().await?, c, &room).await?;
        let mut r = self.conn().await?;
        let (meta, members): (std::collections::HashMap<String, String>, i64) = redis::pipe()
            .hgetall(&k.meta)
            .hlen(&k.users)
            .query_async(&mut r)
            .await
            .map_err(internal)?;
        let num = |f: &str| meta.get(f).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(Outcome::json(&json!({
            "room": room.as_str(),
            "max_members": num("max"),
            "private": meta.get("private").map(String::as_str) == Some("1"),
            "created_by": meta.get("created_by"),
            "created_at": num("created_at"),
            "seq": num("seq"),
            "members": members,
        })))
    }

    async fn history(&self, c: &Caller, req: HistoryReq) -> Result<Outcome, ServiceError> {
        let room = room_id(&req.room)?;
        let k = RoomKeys::new(&c.tenant, &room);
        access::check_readable(&mut self.conn().await?, c, &room).await?;
        let limit = req.limit.unwrap_or(50).clamp(1, self.cfg.history_page_max);
        let read = match (req.after, req.before) {
            (Some(_), Some(_)) => {
                return Err(ServiceError::client(
                    ErrorCode::BadRequest,
                    "give `after` or `before`, not both",
                ));
            }
            (Some(after), None) => {
                self.read(
                    &k,
                    &format!("{}-0", after.saturating_add(1)),
                    "+",
                    limit + 1,
                    false,
                )
                .await?
            }
            (None, Some(before)) if before <= 1 => self.read(&k, "-", "-", 0, true).await?,
            (None, Some(before)) => {
                self.read(&k, "-", &format!("{}-0", before - 1), limit + 1, true)
                    .await?
            }
            (None, None) => self.read(&k, "-", "+", limit + 1, true).await?,
        };
        let Read {
            head,
            first,
            mut items,
        } = read;
        let more = items.len() as u64 > limit;
        items.truncate(limit as usize);
        if req.after.is_none() {
            items.reverse();
        }
        let messages: Vec<&RawValue> = items
            .iter()
            .filter_map(|(_, m)| serde_json::from_str(m).ok())
            .collect();
        let missed = req.after.is_some_and(|a| a + 1 < first && a < head);
        Ok(Outcome::json(&json!({
            "room": room.as_str(),
            "messages": messages,
            "head_seq": head,
            "first_seq": first,
            "more": more,
            "not_recovered": missed,
        })))
    }

    /// Reads history entries between two stream ids, dropping those older than
    /// the history TTL.
    async fn read(
        &self,
        k: &RoomKeys,
        start: &str,
        end: &str,
        count: u64,
        reverse: bool,
    ) -> Result<Read, ServiceError> {
        let mut r = self.conn().await?;
        let v: Value = scripts::READ
            .key(k.all().as_slice())
            .arg(start)
            .arg(end)
            .arg(count)
            .arg(if reverse { "1" } else { "0" })
            .invoke_async(&mut r)
            .await
            .map_err(internal)?;
        let Value::Array(parts) = v else {
            return Err(internal("READ returned an unexpected shape"));
        };
        let [status, head, oldest, items] = parts.as_slice() else {
            return Err(internal("READ returned an unexpected shape"));
        };
        if as_int(status) == Some(-1) {
            return Err(ServiceError::client(ErrorCode::NotFound, "no such room"));
        }
        let head = as_int(head).unwrap_or(0).max(0) as u64;
        let cutoff = now_ms().saturating_sub(self.cfg.history_ttl_secs * 1000);
        let mut first = entries(oldest).first().map_or(head + 1, |e| e.0);
        let mut out = Vec::new();
        for (seq, t, m) in entries(items) {
            if t < cutoff {
                // Expired by age: it counts as gone.
                first = first.max(seq + 1);
                continue;
            }
            out.push((seq, m));
        }
        Ok(Read {
            head,
            first,
            items: out,
        })
    }

    /// An ephemeral push to a room's members (not stored, not sequenced).
    async fn signal(&self, c: &Caller, room: &RoomId, event: &str, data: serde_json::Value) {
        let frame = json!({"event": event, "data": data});
        let push = Push {
            frame: serde_json::to_vec(&frame).unwrap_or_default().into(),
            seq: 0,
            origin: Some(c.origin()),
            echo: false,
        };
        self.push(&c.tenant, room, push).await;
    }

    async fn typing(&self, c: &Caller, req: TypingReq) -> Result<Outcome, ServiceError> {
        let room = room_id(&req.room)?;
        access::require_member(&mut self.conn().await?, c, &room).await?;
        let entry = format!("{}|{}|{}", c.tenant, room, c.user);
        let mut r = self.conn().await?;
        let cmd = if req.typing {
            let mut c = redis::cmd("ZADD");
            c.arg(keys::TYPING)
                .arg(now_ms() + self.cfg.typing_ttl_ms)
                .arg(&entry);
            c
        } else {
            let mut c = redis::cmd("ZREM");
            c.arg(keys::TYPING).arg(&entry);
            c
        };
        let changed: i64 = cmd.query_async(&mut r).await.map_err(internal)?;
        drop(r);
        if changed == 1 {
            let mut data =
                json!({"room": room.as_str(), "user": c.user.as_str(), "typing": req.typing});
            if req.typing {
                data["expires_in_ms"] = json!(self.cfg.typing_ttl_ms);
            }
            self.signal(c, &room, "typing", data).await;
        }
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "typing": req.typing}),
        ))
    }

    /// Ends a user's typing indicator (on leave, or when it expires).
    async fn stop_typing(&self, tenant: &TenantId, room: &RoomId, user: &UserId) {
        let entry = format!("{tenant}|{room}|{user}");
        let Ok(mut r) = self.conn().await else { return };
        let removed: Result<i64, _> = redis::cmd("ZREM")
            .arg(keys::TYPING)
            .arg(&entry)
            .query_async(&mut r)
            .await;
        drop(r);
        if matches!(removed, Ok(1)) {
            self.typing_stopped(tenant, room, user).await;
        }
    }

    async fn typing_stopped(&self, tenant: &TenantId, room: &RoomId, user: &UserId) {
        let frame = json!({"event": "typing", "data": {"room": room.as_str(), "user": user.as_str(), "typing": false}});
        let push = Push {
            frame: serde_json::to_vec(&frame).unwrap_or_default().into(),
            ..Push::default()
        };
        self.push(tenant, room, push).await;
    }

    /// Ends typing indicators whose time is up. Each entry is claimed with
    /// ZREM, so with several replicas exactly one announces it.
    pub async fn expire_typing(&self) {
        let Ok(mut r) = self.conn().await else { return };
        let due: Vec<String> = match redis::cmd("ZRANGEBYSCORE")
            .arg(keys::TYPING)
            .arg("-inf")
            .arg(now_ms())
            .arg("LIMIT")
            .arg(0)
            .arg(500)
            .query_async(&mut r)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "typing sweep failed");
                return;
            }
        };
        for entry in due {
            let claimed: Result<i64, _> = redis::cmd("ZREM")
                .arg(keys::TYPING)
                .arg(&entry)
                .query_async(&mut r)
                .await;
            if !matches!(claimed, Ok(1)) {
                continue;
            }
            let mut parts = entry.splitn(3, '|');
            let (Some(t), Some(room), Some(user)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Ok(t), Ok(room), Ok(user)) =
                (TenantId::parse(t), RoomId::parse(room), UserId::parse(user))
            else {
                continue;
            };
            self.typing_stopped(&t, &room, &user).await;
        }
    }

    async fn cursor(&self, c: &Caller, req: CursorReq) -> Result<Outcome, ServiceError> {
        let room = room_id(&req.room)?;
        access::require_member(&mut self.conn().await?, c, &room).await?;
        let data: serde_json::Value = serde_json::from_str(req.data.get()).map_err(internal)?;
        self.signal(
            c,
            &room,
            "cursor",
            json!({"room": room.as_str(), "user": c.user.as_str(), "data": data}),
        )
        .await;
        Ok(Outcome::json(&json!({"room": room.as_str()})))
    }

    async fn mark(&self, c: &Caller, req: MarkReq) -> Result<Outcome, ServiceError> {
        let room = room_id(&req.room)?;
        if req.delivered.is_none() && req.read.is_none() {
            return Err(ServiceError::client(
                ErrorCode::BadRequest,
                "give `delivered` and/or `read`",
            ));
        }
        let k = RoomKeys::new(&c.tenant, &room);
        let mut r = self.conn().await?;
        let res: Vec<i64> = scripts::MARK
            .key(k.all().as_slice())
            .arg(c.member())
            .arg(c.user.as_str())
            .arg(req.delivered.map_or(-1, |d| d.min(i64::MAX as u64) as i64))
            .arg(req.read.map_or(-1, |d| d.min(i64::MAX as u64) as i64))
            .invoke_async(&mut r)
            .await
            .map_err(internal)?;
        drop(r);
        let [status, delivered, read, changed] = res.as_slice() else {
            return Err(internal("MARK returned an unexpected shape"));
        };
        if *status == -4 {
            return Err(ServiceError::client(
                ErrorCode::NotMember,
                format!("join room {room} first"),
            ));
        }
        let data = json!({"room": room.as_str(), "user": c.user.as_str(), "delivered": delivered, "read": read});
        if *changed == 1 {
            self.signal(c, &room, "receipt", data.clone()).await;
        }
        Ok(Outcome::json(&data))
    }

    async fn markers(&self, c: &Caller, req: RoomReq) -> Result<Outcome, ServiceError> {
        let room = room_id(&req.room)?;
        let k = RoomKeys::new(&c.tenant, &room);
        access::check_readable(&mut self.conn().await?, c, &room).await?;
        let mut r = self.conn().await?;
        type Markers = std::collections::HashMap<String, u64>;
        let (read, delivered, head): (Markers, Markers, Option<u64>) = redis::pipe()
            .hgetall(&k.read)
            .hgetall(&k.delivered)
            .hget(&k.meta, "seq")
            .query_async(&mut r)
            .await
            .map_err(internal)?;
        let mut users: std::collections::BTreeSet<&String> = read.keys().collect();
        users.extend(delivered.keys());
        let list: Vec<_> = users
            .into_iter()
            .map(|u| {
                let d = delivered.get(u).copied().unwrap_or(0);
                let rd = read.get(u).copied().unwrap_or(0);
                json!({"user": u, "delivered": d.max(rd), "read": rd})
            })
            .collect();
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "head_seq": head.unwrap_or(0), "markers": list}),
        ))
    }

    async fn unread(&self, c: &Caller, req: UnreadReq) -> Result<Outcome, ServiceError> {
        let mut r = self.conn().await?;
        let rooms: Vec<String> = match req.rooms {
            Some(v) if v.len() > MAX_UNREAD_ROOMS => {
                return Err(ServiceError::client(
                    ErrorCode::BadRequest,
                    format!("at most {MAX_UNREAD_ROOMS} rooms"),
                ));
            }
            Some(v) => v,
            None => redis::cmd("SMEMBERS")
                .arg(UserKeys::new(&c.tenant, &c.user).rooms)
                .query_async(&mut r)
                .await
                .map_err(internal)?,
        };
        let mut out = Vec::new();
        for name in rooms.iter().take(MAX_UNREAD_ROOMS) {
            let room = room_id(name)?;
            let k = RoomKeys::new(&c.tenant, &room);
            let (head, read): (Option<u64>, Option<u64>) = redis::pipe()
                .hget(&k.meta, "seq")
                .hget(&k.read, c.user.as_str())
                .query_async(&mut r)
                .await
                .map_err(internal)?;
            let Some(head) = head else { continue };
            let read = read.unwrap_or(0);
            out.push(json!({"room": room.as_str(), "unread": head.saturating_sub(read), "head_seq": head, "read": read}));
        }
        Ok(Outcome::json(&json!({"rooms": out})))
    }

    async fn react(&self, c: &Caller, req: ReactReq) -> Result<Outcome, ServiceError> {
        let room = room_id(&req.room)?;
        check_emoji(&req.emoji)?;
        let k = RoomKeys::new(&c.tenant, &room);
        let field = format!("{}|{}|{}", req.seq, req.emoji, c.user);
        let mut r = self.conn().await?;
        let res: Vec<i64> = scripts::REACT
            .key(k.all().as_slice())
            .arg(c.member())
            .arg(&field)
            .arg(req.seq.min(i64::MAX as u64))
            .arg(if req.remove { "0" } else { "1" })
            .invoke_async(&mut r)
            .await
            .map_err(internal)?;
        drop(r);
        match res.as_slice() {
            [-4, _] => Err(ServiceError::client(
                ErrorCode::NotMember,
                format!("join room {room} first"),
            )),
            [-5, _] => Err(ServiceError::client(
                ErrorCode::NotFound,
                format!("no message {} in room {room}", req.seq),
            )),
            [1, changed] => {
                let data = json!({
                    "room": room.as_str(), "seq": req.seq, "emoji": req.emoji,
                    "user": c.user.as_str(), "added": !req.remove,
                });
                if *changed == 1 {
                    self.signal(c, &room, "reaction", data.clone()).await;
                }
                Ok(Outcome::json(
                    &json!({"room": room.as_str(), "seq": req.seq, "emoji": req.emoji, "changed": *changed == 1}),
                ))
            }
            _ => Err(internal("REACT returned an unexpected shape")),
        }
    }

    async fn reactions(&self, c: &Caller, req: ReactionsReq) -> Result<Outcome, ServiceError> {
        let room = room_id(&req.room)?;
        let k = RoomKeys::new(&c.tenant, &room);
        access::check_readable(&mut self.conn().await?, c, &room).await?;
        let mut r = self.conn().await?;
        let pattern = format!("{}|*", req.seq);
        let mut cursor: u64 = 0;
        let mut by_emoji: std::collections::BTreeMap<String, Vec<String>> =
            std::collections::BTreeMap::new();
        loop {
            let (next, fields): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(&k.reactions)
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut r)
                .await
                .map_err(internal)?;
            for (f, _) in fields {
                let mut parts = f.splitn(3, '|');
                if let (Some(_), Some(emoji), Some(user)) =
                    (parts.next(), parts.next(), parts.next())
                {
                    by_emoji
                        .entry(emoji.to_owned())
                        .or_default()
                        .push(user.to_owned());
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let list: Vec<_> = by_emoji
            .into_iter()
            .map(|(emoji, mut users)| {
                users.sort();
                json!({"emoji": emoji, "count": users.len(), "users": users})
            })
            .collect();
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "seq": req.seq, "reactions": list}),
        ))
    }

    async fn disconnected(&self, gw: &GatewayId, conn: u64) {
        let Ok(mut r) = self.conn().await else { return };
        let rooms_key = keys::conn_rooms(gw, conn);
        let rooms: Result<Vec<String>, _> = mark_gone(&mut redis::pipe(), gw, conn)
            .smembers(&rooms_key)
            .query_async::<(Vec<String>,)>(&mut r)
            .await
            .map(|(v,)| v);
        drop(r);
        let rooms = match rooms {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "disconnect cleanup failed");
                return;
            }
        };
        for entry in rooms {
            let Some((t, room)) = entry.split_once(':') else {
                continue;
            };
            let (Ok(t), Ok(room)) = (TenantId::parse(t), RoomId::parse(room)) else {
                continue;
            };
            self.leave_conn(&t, &room, gw, conn).await;
        }
        if let Ok(mut r) = self.conn().await {
            let _: Result<(), _> = redis::cmd("DEL").arg(&rooms_key).query_async(&mut r).await;
        }
    }
}

/// The client frame for a stored message.
fn message_frame(message: &str) -> Vec<u8> {
    let mut f = Vec::with_capacity(message.len() + 28);
    f.extend_from_slice(b"{\"event\":\"message\",\"data\":");
    f.extend_from_slice(message.as_bytes());
    f.push(b'}');
    f
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Parses XRANGE output into (seq, t, m).
fn entries(v: &Value) -> Vec<(u64, u64, String)> {
    let Value::Array(list) = v else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let Value::Array(parts) = e else { return None };
            let [id, Value::Array(fields)] = parts.as_slice() else {
                return None;
            };
            let seq = as_string(id)?.split('-').next()?.parse().ok()?;
            let mut t = 0;
            let mut m = None;
            for pair in fields.chunks(2) {
                if let [name, value] = pair {
                    match as_string(name).as_deref() {
                        Some("t") => t = as_int(value).unwrap_or(0).max(0) as u64,
                        Some("m") => m = as_string(value),
                        _ => {}
                    }
                }
            }
            Some((seq, t, m?))
        })
        .collect()
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
        let tenant = TenantId::parse(&req.tenant)?;
        let room = room_id(&req.key)?;
        let k = RoomKeys::new(&tenant, &room);
        let end = if req.until_seq == 0 {
            "+".to_owned()
        } else {
            format!("{}-0", req.until_seq)
        };
        let read = match self
            .read(
                &k,
                &format!("{}-0", req.after_seq.saturating_add(1)),
                &end,
                self.cfg.history_max.max(1),
                false,
            )
            .await
        {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::Client(ErrorCode::NotFound) => {
                return Ok(ReplayBatch {
                    gone: true,
                    ..ReplayBatch::default()
                });
            }
            Err(e) => return Err(e),
        };
        Ok(ReplayBatch {
            items: read
                .items
                .into_iter()
                .map(|(seq, m)| ReplayItem {
                    seq,
                    frame: message_frame(&m).into(),
                })
                .collect(),
            head_seq: read.head,
            first_seq: read.first,
            gone: false,
        })
    }

    async fn on_conn_event(&self, ev: ConnLifecycle) {
        if let ConnLifecycle::Disconnected(c) = ev {
            self.disconnected(&c.gw, c.conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frames_wrap_the_stored_message() {
        let f = message_frame(r#"{"room":"r","seq":1,"data":{"x":1}}"#);
        let v: serde_json::Value = serde_json::from_slice(&f).unwrap_or_default();
        assert_eq!(v["event"], "message");
        assert_eq!(v["data"]["seq"], 1);
    }

    #[test]
    fn stream_entries_parse() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let v = Value::Array(vec![Value::Array(vec![
            b("7-0"),
            Value::Array(vec![b("t"), b("123"), b("m"), b("{}")]),
        ])]);
        assert_eq!(entries(&v), vec![(7, 123, "{}".to_owned())]);
        assert!(entries(&Value::Nil).is_empty());
    }
}
