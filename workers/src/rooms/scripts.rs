//! Lua scripts for the rooms service. Each touches only the keys of one room
//! (one hash tag), so it is atomic and Redis-Cluster safe. KEYS are always
//! `meta, conns, users, history, read, delivered, reactions` (see
//! `switchboard_shared::keys::RoomKeys::all`).
//!
//! Status codes returned as the first element: 1 ok, -1 no such room,
//! -2 room full, -3 private room without a grant, -4 not a member,
//! 0 nothing to do.

use std::sync::LazyLock;

use deadpool_redis::redis::Script;

/// ARGV: max_members, private (0/1), created_by, created_at_ms, idle_ttl_secs.
/// Returns 1 when created, 0 when the room exists.
pub static CREATE: LazyLock<Script> = LazyLock::new(|| {
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

/// ARGV: member field (`gw:conn`), user, granted (0/1). A private room
/// also admits users listed in its meta as `allow:<user>` (rooms made for
/// them by another service, e.g. matchmaking).
/// Returns {status, head_seq, member_count, new_user (0/1)}.
pub static JOIN: LazyLock<Script> = LazyLock::new(|| {
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

/// ARGV: member field, idle_ttl_secs.
/// Returns {status (1 left, 0 was not in), member_count, user_gone (0/1), user}.
pub static LEAVE: LazyLock<Script> = LazyLock::new(|| {
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

/// ARGV: member field, now_ms, json head, json tail, history_max, cutoff_ms,
/// user. The stored message is `head .. seq .. tail`; the sender's read
/// marker moves to it (sending implies having read the conversation).
/// Returns {seq, message} or {-4, ''} when the connection is not a member.
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
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

/// ARGV: start id, end id, count, reverse (0/1).
/// Returns {status, head_seq, oldest entry (array, maybe empty), entries}.
pub static READ: LazyLock<Script> = LazyLock::new(|| {
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

/// ARGV: member field, user, delivered (or -1), read (or -1).
/// Markers only move forward and never past the head. Returns
/// {status, delivered, read, changed (0/1)}.
pub static MARK: LazyLock<Script> = LazyLock::new(|| {
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

/// ARGV: member field, field (`<seq>|<emoji>|<user>`), seq, add (1) or remove (0).
/// Returns {status, changed (0/1)}; status -5 when the seq does not exist.
pub static REACT: LazyLock<Script> = LazyLock::new(|| {
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
