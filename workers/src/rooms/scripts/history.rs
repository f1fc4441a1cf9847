//! The scripts of a room's history: publish (sequence and store) and read.

use std::sync::LazyLock;

use deadpool_redis::redis::{Script, Value};
use switchboard_shared::ids::{GatewayId, UserId};
use switchboard_shared::keys::RoomKeys;
use switchboard_shared::members::{ConnMember, PublishedId};

use super::{Conn, bool_arg, count, reply};
use crate::error::ServiceError;
use crate::service::fanout::gateways;

/// ARGV: member field, now_ms, json head, json tail, history_max, cutoff_ms,
/// user, no-echo member ('' when the sender wants its message back),
/// published id (`<msg_id>|<user>`, '' without a client message id),
/// dedupe cutoff ms. The stored message is `head .. seq .. tail`; field `o`
/// keeps the no-echo member, so a replay skips the sender as the live push
/// does. The sender's read marker moves to it (sending implies having read
/// the conversation).
///
/// A published id seen at or after the dedupe cutoff is not stored again:
/// the script answers what it was stored as. Ids older than the cutoff are
/// dropped from `msg_ids` and `msg_id_times`, at most 64 per call (each call
/// adds at most one), so both keys hold about one window of ids.
///
/// Returns {1, seq, message, gateways} when stored, {0, seq, ts_ms, {}} for
/// an id already published (seq and time of that publish; nothing is sent
/// again), {-4, 0, '', {}} when the connection is not a member. `gateways`
/// are the room's gateways (`HKEYS gateways`), read with the seq: a gateway
/// that gains its first member after this script catches up from the
/// history this script wrote.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return {-4, 0, '', {}} end
local stale = redis.call('ZRANGEBYSCORE', KEYS[9], '-inf', '(' .. ARGV[10], 'LIMIT', 0, 64)
if #stale > 0 then
  redis.call('HDEL', KEYS[8], unpack(stale))
  redis.call('ZREM', KEYS[9], unpack(stale))
end
if ARGV[9] ~= '' then
  local seen = redis.call('HGET', KEYS[8], ARGV[9])
  if seen then
    local s, t = string.match(seen, '^(%d+):(%d+)$')
    if s and tonumber(t) >= tonumber(ARGV[10]) then return {0, tonumber(s), t, {}} end
  end
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local m = ARGV[3] .. seq .. ARGV[4]
if ARGV[8] == '' then
  redis.call('XADD', KEYS[4], 'MAXLEN', ARGV[5], seq .. '-0', 't', ARGV[2], 'm', m)
else
  redis.call('XADD', KEYS[4], 'MAXLEN', ARGV[5], seq .. '-0', 't', ARGV[2], 'm', m, 'o', ARGV[8])
end
local cutoff = tonumber(ARGV[6])
local old = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 8)
for _, e in ipairs(old) do
  if tonumber(e[2][2]) < cutoff then redis.call('XDEL', KEYS[4], e[1]) else break end
end
local r = tonumber(redis.call('HGET', KEYS[5], ARGV[7]) or '0')
if seq > r then redis.call('HSET', KEYS[5], ARGV[7], seq) end
if ARGV[9] ~= '' then
  redis.call('HSET', KEYS[8], ARGV[9], seq .. ':' .. ARGV[2])
  redis.call('ZADD', KEYS[9], ARGV[2], ARGV[9])
end
return {1, seq, m, redis.call('HKEYS', KEYS[10])}
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
    /// The sender published this client message id within the dedupe
    /// window already: nothing was stored; the first publish got `seq` at
    /// `ts_ms`.
    Duplicate {
        seq: u64,
        ts_ms: u64,
    },
    NotMember,
}

impl Publish {
    pub(super) fn decode((status, seq, payload): (i64, i64, String)) -> Result<Self, ServiceError> {
        let bad = || ServiceError::script("PUBLISH", (status, seq, &payload));
        match status {
            -4 => Ok(Self::NotMember),
            1 | 0 if seq < 1 => Err(bad()),
            1 => Ok(Self::Stored {
                seq: count("PUBLISH", seq)?,
                message: payload,
            }),
            0 => Ok(Self::Duplicate {
                seq: count("PUBLISH", seq)?,
                ts_ms: payload.parse().map_err(|_| bad())?,
            }),
            _ => Err(bad()),
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
    /// The sender asked to get its own message back.
    pub echo: bool,
    /// The sender's client message id, to publish it at most once.
    pub msg_id: Option<&'a PublishedId>,
    /// Client message ids published before this (ms) are forgotten.
    pub dedupe_since_ms: u64,
}

/// Stores `m`; returns what happened and the room's gateways at its seq.
pub async fn publish(
    r: &mut Conn,
    k: &RoomKeys,
    m: NewMessage<'_>,
) -> Result<(Publish, Vec<GatewayId>), ServiceError> {
    let v: Value = PUBLISH
        .key(k.all().as_slice())
        .arg(m.member.to_string())
        .arg(m.ts_ms)
        .arg(m.head)
        .arg(m.tail)
        .arg(m.history_max)
        .arg(m.cutoff_ms)
        .arg(m.user.as_str())
        .arg(if m.echo {
            String::new()
        } else {
            m.member.to_string()
        })
        .arg(m.msg_id.map(ToString::to_string).unwrap_or_default())
        .arg(m.dedupe_since_ms)
        .invoke_async(r)
        .await?;
    let (status, seq, payload, gws): (i64, i64, String, Vec<String>) = reply("PUBLISH", &v)?;
    Ok((Publish::decode((status, seq, payload))?, gateways(gws)))
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

/// One history entry: stream id `<seq>-0`, fields `t` (ms), `m` (JSON) and
/// `o` (the sender's connection, when it asked not to get it back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub t_ms: u64,
    pub message: String,
    pub no_echo_to: Option<ConnMember>,
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
    pub(super) fn decode(v: &Value) -> Result<Self, ServiceError> {
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
pub(super) fn entries(v: &Value) -> Result<Vec<Entry>, ServiceError> {
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
            let (mut t_ms, mut message, mut no_echo_to) = (None, None, None);
            for pair in fields.chunks(2) {
                let [name, value] = pair else {
                    return Err(bad());
                };
                match reply::<String>("READ", name)?.as_str() {
                    "t" => t_ms = Some(reply("READ", value)?),
                    "m" => message = Some(reply("READ", value)?),
                    "o" => no_echo_to = ConnMember::parse(&reply::<String>("READ", value)?),
                    _ => {}
                }
            }
            Ok(Entry {
                seq,
                t_ms: t_ms.ok_or_else(bad)?,
                message: message.ok_or_else(bad)?,
                no_echo_to,
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
