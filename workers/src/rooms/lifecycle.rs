//! A room's life: create (by a client, or `_create_for` another service),
//! join, leave, and what anyone allowed to read it may ask (members, info).
//!
//! A room nobody has joined, or that its last member left, expires after
//! `idle_ttl_secs` (the scripts set and clear the expiry). A create is
//! counted against the room quotas first (`quota`). A join is registered in
//! the connection's room set first (the check-and-add of the connection's
//! room quota; a refused join takes it out again) and checks the
//! connection-gone marker after, undoing itself when the disconnect was
//! processed meanwhile (see `service::conns`).

use deadpool_redis::redis;
use serde::Deserialize;
use serde_json::json;
use switchboard_proto::bus::{ConnRef, FeedMode, Interest, Request};
use switchboard_shared::auth::Identity;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::ids::{GatewayId, RoomId, TenantId, UserId};
use switchboard_shared::keys::{self, RoomKeys, UserKeys};
use switchboard_shared::members::{ConnMember, TenantRoom};
use switchboard_shared::{now_ms, subjects};

use super::scripts::{self, Create, Join, Leave, NewRoom};
use super::{Rooms, access, quota};
use crate::error::{LogFailure, ServiceError};
use crate::service::conns::is_gone;
use crate::service::{Caller, Outcome, parse};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateReq {
    room: Option<String>,
    max_members: Option<u32>,
    #[serde(default)]
    private: bool,
}

/// A request naming one room.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoomReq {
    pub(super) room: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JoinReq {
    room: String,
    /// Resume: deliver every message after this seq (within the history).
    after: Option<u64>,
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

/// Most users `_create_for` admits by name.
const MAX_CREATE_FOR_MEMBERS: usize = 100;

impl Rooms {
    pub(super) async fn create(&self, c: &Caller, req: CreateReq) -> Result<Outcome, ServiceError> {
        let room = match &req.room {
            Some(r) => RoomId::parse(r)?,
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
            return Err(ServiceError::bad_request(format!(
                "max_members is at most {cap}"
            )));
        }
        self.create_room(&c.tenant, &room, max, req.private, &c.user, Some(&c.user))
            .await?;
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "max_members": max, "private": req.private}),
        ))
    }

    /// Creates a room (not yet joined; it expires if nobody joins), counted
    /// against the app's live rooms and, for a room a user asked for,
    /// against that user's created rooms (`quota`).
    async fn create_room(
        &self,
        tenant: &TenantId,
        room: &RoomId,
        max_members: u32,
        private: bool,
        creator: &UserId,
        counted_for: Option<&UserId>,
    ) -> Result<(), ServiceError> {
        let k = RoomKeys::new(tenant, room);
        let now = now_ms();
        let counted = self
            .count_room(tenant, &quota::entry(room, now, counted_for))
            .await?;
        let new = NewRoom {
            max_members,
            private,
            creator,
            now_ms: now,
            idle_ttl_secs: self.cfg.idle_ttl_secs.max(1),
        };
        // A failed call may still have created the room: its count stays,
        // to be checked after `quota::GRACE_MS` like any other.
        match scripts::create(&mut self.conn().await?, &k, new).await? {
            Create::Created => Ok(()),
            Create::Exists => {
                self.uncount_room(counted).await;
                Err(ServiceError::client(
                    ErrorCode::AlreadyExists,
                    format!("room {room} exists"),
                ))
            }
        }
    }

    /// A private room that admits exactly `members` (plus token grants).
    pub(super) async fn create_for(&self, req: &Request) -> Result<Outcome, ServiceError> {
        let tenant = TenantId::parse(&req.tenant)?;
        let body: CreateForReq = parse(req)?;
        if body.members.is_empty() || body.members.len() > MAX_CREATE_FOR_MEMBERS {
            return Err(ServiceError::bad_request(format!(
                "`members` takes 1 to {MAX_CREATE_FOR_MEMBERS} users"
            )));
        }
        let members: Vec<UserId> = body
            .members
            .iter()
            .map(|u| UserId::parse(u))
            .collect::<Result<_, _>>()?;
        let room = match &body.room {
            Some(r) => RoomId::parse(r)?,
            None => RoomId::generate(),
        };
        // At most MAX_CREATE_FOR_MEMBERS, so the count fits.
        let max = body.max_members.unwrap_or(members.len() as u32);
        self.create_room(&tenant, &room, max, true, &members[0], None)
            .await?;
        let k = RoomKeys::new(&tenant, &room);
        let mut pipe = redis::pipe();
        for u in &members {
            pipe.hset(&k.meta, RoomKeys::allow_field(u), 1).ignore();
        }
        let () = pipe.query_async(&mut self.conn().await?).await?;
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "max_members": max, "private": true}),
        ))
    }

    pub(super) async fn join(&self, c: &Caller, req: JoinReq) -> Result<Outcome, ServiceError> {
        let room = RoomId::parse(&req.room)?;
        let k = RoomKeys::new(&c.tenant, &room);
        let granted = Identity::may_access(&c.grants, room.as_str());
        let mut r = self.conn().await?;
        let conn_rooms = keys::conn_rooms(&c.gw, c.conn);
        let entry = TenantRoom::new(&c.tenant, &room).to_string();
        let counted = self
            .count_join(&mut r, &c.tenant, &conn_rooms, &entry)
            .await?;
        let refused = match scripts::join(&mut r, &k, &c.conn_member(), &c.user, granted).await? {
            Join::Joined {
                head_seq,
                members,
                new_user,
            } => Ok((head_seq, members, new_user)),
            Join::NoRoom => Err(ServiceError::client(
                ErrorCode::NotFound,
                format!("no room {room}"),
            )),
            Join::Full => Err(ServiceError::client(
                ErrorCode::RoomFull,
                format!("room {room} is full"),
            )),
            Join::Forbidden => Err(ServiceError::client(
                ErrorCode::Forbidden,
                "private room: the token has no grant for it",
            )),
        };
        let (seq, members, new_user) = match refused {
            Ok(joined) => joined,
            Err(e) => {
                // A refused join takes no room of the connection's quota.
                if counted {
                    redis::cmd("SREM")
                        .arg(&conn_rooms)
                        .arg(&entry)
                        .query_async::<()>(&mut r)
                        .await
                        .log_failure("un-counting a refused join");
                }
                return Err(e);
            }
        };
        // A disconnect processed meanwhile means this membership must not stay.
        if is_gone(&mut r, &c.gw, c.conn).await? {
            drop(r);
            self.leave_conn(&c.tenant, &room, &c.gw, c.conn)
                .await
                .log_failure("undoing a join of a closed connection");
            return Err(ServiceError::client(
                ErrorCode::NotFound,
                "connection is closed",
            ));
        }
        if new_user {
            redis::cmd("SADD")
                .arg(UserKeys::new(&c.tenant, &c.user).rooms)
                .arg(room.as_str())
                .query_async::<()>(&mut r)
                .await
                .log_failure("adding a room to the user's rooms");
        }
        drop(r);
        if new_user {
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
    pub(super) async fn leave_conn(
        &self,
        tenant: &TenantId,
        room: &RoomId,
        gw: &GatewayId,
        conn: u64,
    ) -> Result<u64, ServiceError> {
        let k = RoomKeys::new(tenant, room);
        let mut r = self.conn().await?;
        let left = scripts::leave(
            &mut r,
            &k,
            &ConnMember::new(gw, conn),
            self.cfg.idle_ttl_secs.max(1),
        )
        .await?;
        redis::cmd("SREM")
            .arg(keys::conn_rooms(gw, conn))
            .arg(TenantRoom::new(tenant, room).to_string())
            .query_async::<()>(&mut r)
            .await
            .log_failure("removing a room from the connection's rooms");
        if let Leave::Left {
            members,
            user_gone: Some(user),
        } = &left
        {
            redis::cmd("SREM")
                .arg(UserKeys::new(tenant, user).rooms)
                .arg(room.as_str())
                .query_async::<()>(&mut r)
                .await
                .log_failure("removing a room from the user's rooms");
            drop(r);
            self.stop_typing(tenant, room, user)
                .await
                .log_failure("ending a typing indicator");
            let origin = ConnRef {
                gateway: gw.to_string(),
                conn,
            };
            self.member_event("member_left", tenant, room, user, *members, origin)
                .await;
        }
        Ok(left.members())
    }

    pub(super) async fn leave(&self, c: &Caller, req: RoomReq) -> Result<Outcome, ServiceError> {
        let room = RoomId::parse(&req.room)?;
        let members = self.leave_conn(&c.tenant, &room, &c.gw, c.conn).await?;
        let mut out = Outcome::json(&json!({"room": room.as_str(), "members": members}));
        out.detach.push(subjects::room(&c.tenant, &room));
        Ok(out)
    }

    /// `member_joined` / `member_left` to the room (not to `origin`).
    async fn member_event(
        &self,
        event: &str,
        tenant: &TenantId,
        room: &RoomId,
        user: &UserId,
        members: u64,
        origin: ConnRef,
    ) {
        let data = json!({"room": room.as_str(), "user": user.as_str(), "members": members});
        self.signal(tenant, room, Some(origin), event, &data).await;
    }

    pub(super) async fn members(&self, c: &Caller, req: RoomReq) -> Result<Outcome, ServiceError> {
        let room = RoomId::parse(&req.room)?;
        let k = RoomKeys::new(&c.tenant, &room);
        let mut r = self.conn().await?;
        access::check_readable(&mut r, c, &room).await?;
        let users: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(&k.users)
            .query_async(&mut r)
            .await?;
        let list: Vec<_> = users
            .iter()
            .map(|(u, n)| json!({"user": u, "connections": n}))
            .collect();
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "count": list.len(), "members": list}),
        ))
    }

    pub(super) async fn info(&self, c: &Caller, req: RoomReq) -> Result<Outcome, ServiceError> {
        let room = RoomId::parse(&req.room)?;
        let k = RoomKeys::new(&c.tenant, &room);
        let mut r = self.conn().await?;
        access::check_readable(&mut r, c, &room).await?;
        let (meta, members): (std::collections::HashMap<String, String>, i64) = redis::pipe()
            .hgetall(&k.meta)
            .hlen(&k.users)
            .query_async(&mut r)
            .await?;
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
}
