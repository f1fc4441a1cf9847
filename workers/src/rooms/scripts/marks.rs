//! The scripts of per-user marks in a room: receipts (delivered/read
//! markers) and reactions on messages.

use std::sync::LazyLock;

use deadpool_redis::redis::{Script, Value};
use switchboard_shared::ids::UserId;
use switchboard_shared::keys::RoomKeys;
use switchboard_shared::members::{ConnMember, ReactionField};

use super::{Conn, bool_arg, count, flag, reply};
use crate::error::ServiceError;

/// ARGV: member field, user, delivered (or -1), read (or -1).
/// Markers only move forward and never past the head. Returns
/// {status, delivered, read, changed (0/1)}.
static MARK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return {-4, 0, 0, 0} end
local head = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local changed = 0
local d = tonumber(redis.call('HGET', KEYS[6], ARGV[2]) or '0')
local r = tonumber(redis.call('HGET', KEYS[5], ARGV[2]) or '0')
local nd = math.min(tonumber(ARGV[3]), head)
local nr = math.min(tonumber(ARGV[4]), head)
if nr > r then r = nr; redis.call('HSET', KEYS[5], ARGV[2], r); changed = 1 end
if r > d then nd = math.max(nd, r) end
if nd > d then d = nd; redis.call('HSET', KEYS[6], ARGV[2], d); changed = 1 end
return {1, d, r, changed}
"#,
    )
});

/// What [`mark`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The user's markers now (moved or not).
    Marked {
        delivered: u64,
        read: u64,
        changed: bool,
    },
    NotMember,
}

impl Mark {
    pub(super) fn decode(
        (status, delivered, read, changed): (i64, i64, i64, i64),
    ) -> Result<Self, ServiceError> {
        match status {
            1 => Ok(Self::Marked {
                delivered: count("MARK", delivered)?,
                read: count("MARK", read)?,
                changed: flag("MARK", changed)?,
            }),
            -4 => Ok(Self::NotMember),
            other => Err(ServiceError::script("MARK", other)),
        }
    }
}

/// Redis integers are signed: a marker past `i64::MAX` is clamped (the head
/// clamps it further).
fn marker_arg(m: Option<u64>) -> i64 {
    m.map_or(-1, |m| i64::try_from(m).unwrap_or(i64::MAX))
}

pub async fn mark(
    r: &mut Conn,
    k: &RoomKeys,
    member: &ConnMember,
    user: &UserId,
    delivered: Option<u64>,
    read: Option<u64>,
) -> Result<Mark, ServiceError> {
    let v: Value = MARK
        .key(k.all().as_slice())
        .arg(member.to_string())
        .arg(user.as_str())
        .arg(marker_arg(delivered))
        .arg(marker_arg(read))
        .invoke_async(r)
        .await?;
    Mark::decode(reply("MARK", &v)?)
}

/// ARGV: member field, field (`<seq>|<emoji>|<user>`), seq, add (1) or remove (0).
/// Returns {status, changed (0/1)}; status -5 when the seq does not exist.
static REACT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return {-4, 0} end
local head = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local seq = tonumber(ARGV[3])
if seq < 1 or seq > head then return {-5, 0} end
if ARGV[4] == '1' then
  return {1, redis.call('HSETNX', KEYS[7], ARGV[2], 1)}
end
return {1, redis.call('HDEL', KEYS[7], ARGV[2])}
"#,
    )
});

/// What [`react`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum React {
    /// Added or removed; `changed` is false when it already was so.
    Done {
        changed: bool,
    },
    NotMember,
    NoMessage,
}

impl React {
    pub(super) fn decode((status, changed): (i64, i64)) -> Result<Self, ServiceError> {
        match status {
            1 => Ok(Self::Done {
                changed: flag("REACT", changed)?,
            }),
            -4 => Ok(Self::NotMember),
            -5 => Ok(Self::NoMessage),
            other => Err(ServiceError::script("REACT", other)),
        }
    }
}

pub async fn react(
    r: &mut Conn,
    k: &RoomKeys,
    member: &ConnMember,
    field: &ReactionField,
    add: bool,
) -> Result<React, ServiceError> {
    let v: Value = REACT
        .key(k.all().as_slice())
        .arg(member.to_string())
        .arg(field.to_string())
        .arg(i64::try_from(field.seq).unwrap_or(i64::MAX))
        .arg(bool_arg(add))
        .invoke_async(r)
        .await?;
    React::decode(reply("REACT", &v)?)
}
