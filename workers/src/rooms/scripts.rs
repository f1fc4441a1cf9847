//! Lua scripts for the rooms service and their typed results. Each script
//! touches only the keys of one room (one hash tag), so it is atomic and
//! Redis-Cluster safe. KEYS are always `meta, conns, users, history, read,
//! delivered, reactions` (see `switchboard_shared::keys::RoomKeys::all`).
//!
//! Every script is run through the function beside it, which passes its ARGV
//! in order and decodes the reply into a typed result. Status codes are read
//! here and nowhere else: 1 ok, -1 no such room, -2 room full, -3 private
//! room without a grant, -4 not a member, -5 no such message, 0 nothing to
//! do. A reply outside a script's contract is a `ServiceError::Script`.

use std::sync::LazyLock;

use deadpool_redis::redis::{FromRedisValue, Script, Value};
use switchboard_shared::ids::UserId;
use switchboard_shared::keys::RoomKeys;
use switchboard_shared::members::{ConnMember, ReactionField};

use crate::error::ServiceError;

type Conn = deadpool_redis::Connection;

/// Reads a script's raw reply as `T`, or names the script whose contract it
/// broke.
fn reply<T: FromRedisValue>(script: &'static str, v: &Value) -> Result<T, ServiceError> {
    T::from_redis_value_ref(v).map_err(|_| ServiceError::script(script, v))
}

/// A 0/1 flag of a reply.
fn flag(script: &'static str, v: i64) -> Result<bool, ServiceError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(ServiceError::script(script, other)),
    }
}

/// A count or seq of a reply, never negative.
fn count(script: &'static str, v: i64) -> Result<u64, ServiceError> {
    u64::try_from(v).map_err(|_| ServiceError::script(script, v))
}

fn bool_arg(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

/// ARGV: max_members, private (0/1), created_by, created_at_ms, idle_ttl_secs.
/// Returns 1 when created, 0 when the room exists.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
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
    fn decode(status: i64) -> Result<Self, ServiceError> {
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

/// ARGV: member field (`gw:conn`), user, granted (0/1). A private room
/// also admits users listed in its meta as `allow:<user>` (rooms made for
/// them by another service, e.g. matchmaking; see `RoomKeys::allow_field`).
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
    fn decode((status, seq, members, new): (i64, i64, i64, i64)) -> Result<Self, ServiceError> {
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
        .invoke_async(r)
        .await?;
    Join::decode(reply("JOIN", &v)?)
}

/// ARGV: member field, idle_ttl_secs. A room left empty expires after
/// idle_ttl_secs unless someone joins again.
/// Returns {status (1 left, 0 was not in), member_count, user_gone (0/1), user}.
static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local user = redis.call('HGET', KEYS[2], ARGV[1])
if not user then return {0, redis.call('HLEN', KEYS[3]), 0, ''} end
redis.call('HDEL', KEYS[2], ARGV[1])
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

    fn decode(
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
        .invoke_async(r)
        .await?;
    Leave::decode(reply("LEAVE", &v)?)
}

/// ARGV: member field, now_ms, json head, json tail, history_max, cutoff_ms,
/// user. The stored message is `head .. seq .. tail`; the sender's read
/// marker moves to it (sending implies having read the conversation).
/// Returns {seq, message} or {-4, ''} when the connection is not a member.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return {-4, ''} end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local m = ARGV[3] .. seq .. ARGV[4]
redis.call('XADD', KEYS[4], 'MAXLEN', ARGV[5], seq .. '-0', 't', ARGV[2], 'm', m)
local cutoff = tonumber(ARGV[6])
local old = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 8)
for _, e in ipairs(old) do
  if tonumber(e[2][2]) < cutoff then redis.call('XDEL', KEYS[4], e[1]) else break end
end
local r = tonumber(redis.call('HGET', KEYS[5], ARGV[7]) or '0')
if seq > r then redis.call('HSET', KEYS[5], ARGV[7], seq) end
return {seq, m}
"#,
    )
});

/// What [`publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// Stored as `seq`; `message` is the stored JSON.
    Stored {
        seq: u64,
        message: String,
    },
    NotMember,
}

impl Publish {
    fn decode((seq, message): (i64, String)) -> Result<Self, ServiceError> {
        match seq {
            -4 => Ok(Self::NotMember),
            s if s >= 1 => Ok(Self::Stored {
                seq: count("PUBLISH", s)?,
                message,
            }),
            other => Err(ServiceError::script("PUBLISH", other)),
        }
    }
}

/// A message to store: the JSON `head .. seq .. tail`, sent at `ts_ms`.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    pub member: &'a ConnMember,
    pub user: &'a UserId,
    pub ts_ms: u64,
    pub head: &'a str,
    pub tail: &'a str,
    /// Most entries the history keeps.
    pub history_max: u64,
    /// Entries older than this (ms) are dropped from the history's front.
    pub cutoff_ms: u64,
}

pub async fn publish(
    r: &mut Conn,
    k: &RoomKeys,
    m: NewMessage<'_>,
) -> Result<Publish, ServiceError> {
    let v: Value = PUBLISH
        .key(k.all().as_slice())
        .arg(m.member.to_string())
        .arg(m.ts_ms)
        .arg(m.head)
        .arg(m.tail)
        .arg(m.history_max)
        .arg(m.cutoff_ms)
        .arg(m.user.as_str())
        .invoke_async(r)
        .await?;
    Publish::decode(reply("PUBLISH", &v)?)
}

/// ARGV: start id, end id, count, reverse (0/1).
/// Returns {status, head_seq, oldest entry (array, maybe empty), entries}.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0, {}, {}} end
local head = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local oldest = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)
local items
if ARGV[4] == '1' then
  items = redis.call('XREVRANGE', KEYS[4], ARGV[2], ARGV[1], 'COUNT', ARGV[3])
else
  items = redis.call('XRANGE', KEYS[4], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
end
return {1, head, oldest, items}
"#,
    )
});

/// One history entry: stream id `<seq>-0`, fields `t` (ms) and `m` (JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub t_ms: u64,
    pub message: String,
}

/// What [`read`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    NoRoom,
    Page {
        head_seq: u64,
        /// The oldest entry the history still holds.
        oldest: Option<Entry>,
        /// The entries asked for, in the order asked for.
        entries: Vec<Entry>,
    },
}

impl Read {
    fn decode(v: &Value) -> Result<Self, ServiceError> {
        let bad = || ServiceError::script("READ", v);
        let Value::Array(parts) = v else {
            return Err(bad());
        };
        let [status, head, oldest, items] = parts.as_slice() else {
            return Err(bad());
        };
        match reply::<i64>("READ", status)? {
            -1 => Ok(Self::NoRoom),
            1 => Ok(Self::Page {
                head_seq: reply("READ", head)?,
                oldest: entries(oldest)?.into_iter().next(),
                entries: entries(items)?,
            }),
            other => Err(ServiceError::script("READ", other)),
        }
    }
}

/// Parses XRANGE output (`[[id, [field, value, …]], …]`) into entries.
fn entries(v: &Value) -> Result<Vec<Entry>, ServiceError> {
    let bad = || ServiceError::script("READ", v);
    let list = match v {
        Value::Array(list) => list,
        Value::Nil => return Ok(Vec::new()),
        _ => return Err(bad()),
    };
    list.iter()
        .map(|e| {
            let Value::Array(parts) = e else {
                return Err(bad());
            };
            let [id, Value::Array(fields)] = parts.as_slice() else {
                return Err(bad());
            };
            let id: String = reply("READ", id)?;
            let seq = id
                .split('-')
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(bad)?;
            let (mut t_ms, mut message) = (None, None);
            for pair in fields.chunks(2) {
                let [name, value] = pair else {
                    return Err(bad());
                };
                match reply::<String>("READ", name)?.as_str() {
                    "t" => t_ms = Some(reply("READ", value)?),
                    "m" => message = Some(reply("READ", value)?),
                    _ => {}
                }
            }
            Ok(Entry {
                seq,
                t_ms: t_ms.ok_or_else(bad)?,
                message: message.ok_or_else(bad)?,
            })
        })
        .collect()
}

/// Reads history between stream ids `start` and `end` (`-`/`+` for the
/// ends), at most `count` entries, newest first when `reverse`.
pub async fn read(
    r: &mut Conn,
    k: &RoomKeys,
    start: &str,
    end: &str,
    count: u64,
    reverse: bool,
) -> Result<Read, ServiceError> {
    let v: Value = READ
        .key(k.all().as_slice())
        .arg(start)
        .arg(end)
        .arg(count)
        .arg(bool_arg(reverse))
        .invoke_async(r)
        .await?;
    Read::decode(&v)
}

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
    fn decode(
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
    fn decode((status, changed): (i64, i64)) -> Result<Self, ServiceError> {
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

#[cfg(test)]
mod tests;
