//! The scripts of the room quotas: a check-and-add on one counted set
//! (a user's or an app's rooms, or a connection's rooms). Each touches one
//! key, so the check and the add are one atomic step whatever the number of
//! replicas and gateways asking at once.

use std::sync::LazyLock;

use deadpool_redis::redis::{Script, Value};

use super::{Conn, reply};
use crate::error::ServiceError;

/// KEYS: a sorted set of [`switchboard_shared::members::CreatedRoom`].
/// ARGV: entry, check_at_ms, max (0 = no limit). Adds the entry unless the
/// set holds `max` already. Returns 1 added, 0 full.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local max = tonumber(ARGV[3])
if max > 0 and redis.call('ZSCORE', KEYS[1], ARGV[1]) == false
  and redis.call('ZCARD', KEYS[1]) >= max then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"#,
    )
});

/// What [`reserve`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    Added,
    /// The set holds its quota already; nothing changed.
    Full,
}

impl Reserve {
    pub(super) fn decode(status: i64) -> Result<Self, ServiceError> {
        match status {
            1 => Ok(Self::Added),
            0 => Ok(Self::Full),
            other => Err(ServiceError::script("RESERVE", other)),
        }
    }
}

/// Counts `entry` in the sorted set `key` unless it holds `max` already.
pub async fn reserve(
    r: &mut Conn,
    key: &str,
    entry: &str,
    check_at_ms: u64,
    max: u64,
) -> Result<Reserve, ServiceError> {
    let v: Value = RESERVE
        .key(key)
        .arg(entry)
        .arg(check_at_ms)
        .arg(max)
        .invoke_async(r)
        .await?;
    Reserve::decode(reply("RESERVE", &v)?)
}

/// KEYS: a connection's room set (`keys::conn_rooms`). ARGV: the room
/// (`<tenant>:<room>`), max (0 = no limit). Returns 2 when the room is in
/// the set already, 1 added, 0 full.
static CONN_ROOM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 2 end
local max = tonumber(ARGV[2])
if max > 0 and redis.call('SCARD', KEYS[1]) >= max then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"#,
    )
});

/// What [`conn_room`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRoom {
    /// The connection counted the room already.
    Already,
    Added,
    /// The connection is in `max` rooms; nothing changed.
    Full,
}

impl ConnRoom {
    pub(super) fn decode(status: i64) -> Result<Self, ServiceError> {
        match status {
            2 => Ok(Self::Already),
            1 => Ok(Self::Added),
            0 => Ok(Self::Full),
            other => Err(ServiceError::script("CONN_ROOM", other)),
        }
    }
}

/// Adds `room` to the connection's room set `key` unless it holds `max`.
pub async fn conn_room(
    r: &mut Conn,
    key: &str,
    room: &str,
    max: u64,
) -> Result<ConnRoom, ServiceError> {
    let v: Value = CONN_ROOM
        .key(key)
        .arg(room)
        .arg(max)
        .invoke_async(r)
        .await?;
    ConnRoom::decode(reply("CONN_ROOM", &v)?)
}
