//! Who may read a room and who may act in it: the one access rule, used by
//! rooms and by every service that serves room members (presence of a room,
//! mesh signaling).
//!
//! - Public rooms are readable by every user of the app.
//! - Private rooms are readable by their members and by tokens with a
//!   `rooms` grant matching the room id.
//! - Acting in a room (publishing, typing, cursors, receipts) needs the
//!   caller's connection to be a member.

use deadpool_redis::redis;
use switchboard_shared::auth::Identity;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::ids::RoomId;
use switchboard_shared::keys::RoomKeys;

use crate::error::ServiceError;
use crate::service::Caller;

/// What Redis says about a room for one caller.
#[derive(Debug, Clone, Copy)]
pub struct RoomView {
    /// `None` when the room does not exist.
    pub private: Option<bool>,
    /// The caller's connection is a member.
    pub member: bool,
}

impl RoomView {
    /// Adds the reads [`RoomView::from_reply`] expects to `pipe` (two replies).
    pub fn query<'a>(
        pipe: &'a mut redis::Pipeline,
        k: &RoomKeys,
        c: &Caller,
    ) -> &'a mut redis::Pipeline {
        pipe.hget(&k.meta, "private").hexists(&k.conns, c.member())
    }

    pub fn from_reply(private: Option<String>, member: bool) -> Self {
        Self {
            private: private.map(|p| p == "1"),
            member,
        }
    }

    /// Reads the room for `c` in one round trip.
    pub async fn load(
        r: &mut deadpool_redis::Connection,
        c: &Caller,
        k: &RoomKeys,
    ) -> Result<Self, ServiceError> {
        let (private, member): (Option<String>, bool) =
            Self::query(&mut redis::pipe(), k, c).query_async(r).await?;
        Ok(Self::from_reply(private, member))
    }

    /// The caller may read the room (members, history, presence, reactions).
    pub fn check_readable(&self, c: &Caller, room: &RoomId) -> Result<(), ServiceError> {
        match self.private {
            None => Err(not_found(room)),
            Some(true) if !self.member && !Identity::may_access(&c.grants, room.as_str()) => {
                Err(ServiceError::client(ErrorCode::Forbidden, "private room"))
            }
            Some(_) => Ok(()),
        }
    }

    /// The caller's connection is a member of the room.
    pub fn check_member(&self, room: &RoomId) -> Result<(), ServiceError> {
        match (self.private, self.member) {
            (None, _) => Err(not_found(room)),
            (Some(_), false) => Err(ServiceError::client(
                ErrorCode::NotMember,
                format!("join room {room} first"),
            )),
            (Some(_), true) => Ok(()),
        }
    }
}

fn not_found(room: &RoomId) -> ServiceError {
    ServiceError::client(ErrorCode::NotFound, format!("no room {room}"))
}

/// Checks that `c` may read `room`.
pub async fn check_readable(
    r: &mut deadpool_redis::Connection,
    c: &Caller,
    room: &RoomId,
) -> Result<(), ServiceError> {
    RoomView::load(r, c, &RoomKeys::new(&c.tenant, room))
        .await?
        .check_readable(c, room)
}

/// Checks that the caller's connection is a member of `room`.
pub async fn require_member(
    r: &mut deadpool_redis::Connection,
    c: &Caller,
    room: &RoomId,
) -> Result<(), ServiceError> {
    RoomView::load(r, c, &RoomKeys::new(&c.tenant, room))
        .await?
        .check_member(room)
}
