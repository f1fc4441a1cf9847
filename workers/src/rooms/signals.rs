//! Ephemeral signals in a room: typing indicators and cursors. They are
//! pushed to the members present, never stored or replayed; only members
//! may send them.
//!
//! A typing indicator is an entry in the global `sb:typing` sorted set,
//! scored by its deadline. Whoever removes the entry (a `typing: false`, the
//! user leaving, or the sweeper in `typing_expiry`) announces the end, so
//! it is announced once.

use deadpool_redis::redis;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use switchboard_shared::ids::{RoomId, TenantId, UserId};
use switchboard_shared::keys;
use switchboard_shared::members::TypingEntry;
use switchboard_shared::now_ms;

use super::{Rooms, access};
use crate::error::ServiceError;
use crate::service::{Caller, Outcome};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TypingReq {
    room: String,
    typing: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CursorReq {
    room: String,
    data: Box<RawValue>,
}

/// The `typing` push that ends an indicator.
#[derive(Serialize)]
struct TypingStopped<'a> {
    room: &'a str,
    user: &'a str,
    typing: bool,
}

/// The `cursor` push.
#[derive(Serialize)]
struct Cursor<'a> {
    room: &'a str,
    user: &'a str,
    data: &'a RawValue,
}

/// Removes a typing entry; true when this call removed it (and so must
/// announce the end).
pub(super) async fn claim_typing(
    r: &mut deadpool_redis::Connection,
    entry: &str,
) -> Result<bool, ServiceError> {
    let removed: i64 = redis::cmd("ZREM")
        .arg(keys::TYPING)
        .arg(entry)
        .query_async(r)
        .await?;
    Ok(removed == 1)
}

impl Rooms {
    pub(super) async fn typing(&self, c: &Caller, req: TypingReq) -> Result<Outcome, ServiceError> {
        let room = RoomId::parse(&req.room)?;
        let mut r = self.conn().await?;
        access::require_member(&mut r, c, &room).await?;
        let entry = TypingEntry {
            tenant: c.tenant.clone(),
            room: room.clone(),
            user: c.user.clone(),
        }
        .to_string();
        let cmd = if req.typing {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(keys::TYPING)
                .arg(now_ms() + self.cfg.typing_ttl_ms)
                .arg(&entry);
            cmd
        } else {
            let mut cmd = redis::cmd("ZREM");
            cmd.arg(keys::TYPING).arg(&entry);
            cmd
        };
        let changed: i64 = cmd.query_async(&mut r).await?;
        drop(r);
        if changed == 1 {
            let mut data =
                json!({"room": room.as_str(), "user": c.user.as_str(), "typing": req.typing});
            if req.typing {
                data["expires_in_ms"] = json!(self.cfg.typing_ttl_ms);
            }
            self.signal(&c.tenant, &room, Some(c.origin()), "typing", &data)
                .await;
        }
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "typing": req.typing}),
        ))
    }

    /// Ends a user's typing indicator (on leave), announcing it if it was on.
    pub(super) async fn stop_typing(
        &self,
        tenant: &TenantId,
        room: &RoomId,
        user: &UserId,
    ) -> Result<(), ServiceError> {
        let entry = TypingEntry {
            tenant: tenant.clone(),
            room: room.clone(),
            user: user.clone(),
        };
        if claim_typing(&mut self.conn().await?, &entry.to_string()).await? {
            self.typing_stopped(tenant, room, user).await;
        }
        Ok(())
    }

    /// Tells the room that `user` stopped typing.
    pub(super) async fn typing_stopped(&self, tenant: &TenantId, room: &RoomId, user: &UserId) {
        let data = TypingStopped {
            room: room.as_str(),
            user: user.as_str(),
            typing: false,
        };
        self.signal(tenant, room, None, "typing", &data).await;
    }

    pub(super) async fn cursor(&self, c: &Caller, req: CursorReq) -> Result<Outcome, ServiceError> {
        let room = RoomId::parse(&req.room)?;
        access::require_member(&mut self.conn().await?, c, &room).await?;
        let data = Cursor {
            room: room.as_str(),
            user: c.user.as_str(),
            data: &req.data,
        };
        self.signal(&c.tenant, &room, Some(c.origin()), "cursor", &data)
            .await;
        Ok(Outcome::json(&json!({"room": room.as_str()})))
    }
}
