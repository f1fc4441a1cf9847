//! The scripts of a room's membership: create, join, leave.

use std::sync::LazyLock;

use deadpool_redis::redis::{Script, Value};
use switchboard_shared::ids::UserId;
use switchboard_shared::keys::RoomKeys;
use switchboard_shared::members::ConnMember;

use super::{Conn, bool_arg, count, flag, reply};
use crate::error::ServiceError;

/// ARGV: max_members, private (0/1), created_by, created_at_ms, idle_ttl_secs.
/// Returns 1 when created, 0 when the room exists.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('HSET', KEYS[1], 'max', ARGV[1], 'private', ARGV[2], 'created_by', ARGV[3], 'created_at', ARGV[4], 'seq', 0)
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"#,
    )
});

/// What [`create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    Created,
    /// The room exists already (nothing changed).
    Exists,
}

impl Create {
    pub(super) fn decode(status: i64) -> Result<Self, ServiceError> {
        match status {
            1 => Ok(Self::Created),
            0 => Ok(Self::Exists),
            other => Err(ServiceError::script("CREATE", other)),
        }
    }
}

/// A room to create: not joined yet, so it expires after `idle_ttl_secs`
/// unless someone joins.
#[derive(Debug, Clone, Copy)]
pub struct NewRoom<'a> {
    /// 0 = unlimited.
    pub max_members: u32,
    pub private: bool,
    pub creator: &'a UserId,
    pub now_ms: u64,
    pub idle_ttl_secs: u64,
}

pub async fn create(r: &mut Conn, k: &RoomKeys, room: NewRoom<'_>) -> Result<Create, ServiceError> {
    let v: Value = CREATE
        .key(k.all().as_slice())
        .arg(room.max_members)
        .arg(bool_arg(room.private))
        .arg(room.creator.as_str())
        .arg(room.now_ms)
        .arg(room.idle_ttl_secs)
        .invoke_async(r)
        .await?;
    Create::decode(reply("CREATE", &v)?)
}

/// ARGV: member field (`gw:conn`), user, granted (0/1), the member's
/// gateway. A private room also admits users listed in its meta as
/// `allow:<user>` (rooms made for them by another service, e.g. matchmaking;
/// see `RoomKeys::allow_field`). A connection newly added counts once in
/// its gateway's entry of `gateways` (what the room's pushes are sent to).
/// Returns {status, head_seq, member_count, new_user (0/1)}.
static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0, 0, 0} end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return {1, seq, redis.call('HLEN', KEYS[3]), 0}
end
if redis.call('HGET', KEYS[1], 'private') == '1' and ARGV[3] ~= '1'
  and redis.call('HEXISTS', KEYS[1], 'allow:' .. ARGV[2]) == 0 then return {-3, 0, 0, 0} end
local max = tonumber(redis.call('HGET', KEYS[1], 'max') or '0')
local mine = tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0')
if mine == 0 and max > 0 and redis.call('HLEN', KEYS[3]) >= max then return {-2, 0, 0, 0} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
redis.call('HINCRBY', KEYS[10], ARGV[4], 1)
for i = 1, #KEYS do redis.call('PERSIST', KEYS[i]) end
local new = 0
if mine == 0 then new = 1 end
return {1, seq, redis.call('HLEN', KEYS[3]), new}
"#,
    )
});

/// What [`join`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// The connection is a member (it may have been one already).
    Joined {
        head_seq: u64,
        members: u64,
        /// This was the user's first connection in the room.
        new_user: bool,
    },
    NoRoom,
    Full,
    /// A private room, and the caller has neither a grant nor an allow entry.
    Forbidden,
}

impl Join {
    pub(super) fn decode(
        (status, seq, members, new): (i64, i64, i64, i64),
    ) -> Result<Self, ServiceError> {
        match status {
            1 => Ok(Self::Joined {
                head_seq: count("JOIN", seq)?,
                members: count("JOIN", members)?,
                new_user: flag("JOIN", new)?,
            }),
            -1 => Ok(Self::NoRoom),
            -2 => Ok(Self::Full),
            -3 => Ok(Self::Forbidden),
            other => Err(ServiceError::script("JOIN", other)),
        }
    }
}

pub async fn join(
    r: &mut Conn,
    k: &RoomKeys,
    member: &ConnMember,
    user: &UserId,
    granted: bool,
) -> Result<Join, ServiceError> {
    let v: Value = JOIN
        .key(k.all().as_slice())
        .arg(member.to_string())
        .arg(user.as_str())
        .arg(bool_arg(granted))
        .arg(member.gw.as_str())
        .invoke_async(r)
        .await?;
    Join::decode(reply("JOIN", &v)?)
}

/// ARGV: member field, idle_ttl_secs, the member's gateway. A room left
/// empty expires after idle_ttl_secs unless someone joins again. A
/// connection really removed no longer counts in its gateway's entry of
/// `gateways`, which goes at 0.
/// Returns {status (1 left, 0 was not in), member_count, user_gone (0/1), user}.
static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local user = redis.call('HGET', KEYS[2], ARGV[1])
if not user then return {0, redis.call('HLEN', KEYS[3]), 0, ''} end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HINCRBY', KEYS[10], ARGV[3], -1) <= 0 then redis.call('HDEL', KEYS[10], ARGV[3]) end
local gone = 0
if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
  redis.call('HDEL', KEYS[3], user)
  gone = 1
end
local n = redis.call('HLEN', KEYS[3])
if n == 0 then
  for i = 1, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ARGV[2]) end
  end
end
return {1, n, gone, user}
"#,
    )
});

/// What [`leave`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leave {
    Left {
        members: u64,
        /// The user whose last connection in the room this was.
        user_gone: Option<UserId>,
    },
    /// The connection was not a member.
    NotIn { members: u64 },
}

impl Leave {
    pub fn members(&self) -> u64 {
        match self {
            Self::Left { members, .. } | Self::NotIn { members } => *members,
        }
    }

    pub(super) fn decode(
        (status, members, gone, user): (i64, i64, i64, String),
    ) -> Result<Self, ServiceError> {
        let members = count("LEAVE", members)?;
        match status {
            1 => Ok(Self::Left {
                members,
                user_gone: match flag("LEAVE", gone)? {
                    true => Some(
                        UserId::parse(&user).map_err(|_| ServiceError::script("LEAVE", user))?,
                    ),
                    false => None,
                },
            }),
            0 => Ok(Self::NotIn { members }),
            other => Err(ServiceError::script("LEAVE", other)),
        }
    }
}

pub async fn leave(
    r: &mut Conn,
    k: &RoomKeys,
    member: &ConnMember,
    idle_ttl_secs: u64,
) -> Result<Leave, ServiceError> {
    let v: Value = LEAVE
        .key(k.all().as_slice())
        .arg(member.to_string())
        .arg(idle_ttl_secs)
        .arg(member.gw.as_str())
        .invoke_async(r)
        .await?;
    Leave::decode(reply("LEAVE", &v)?)
}
