//! Lua scripts for the matchmaking service. Each touches only the keys of one
//! app's queue (hash tag `{mm:<tenant>}`), so it is atomic and Redis-Cluster
//! safe. KEYS always start with `queue, tickets, owners, users, expiry,
//! stats, meta` (see `MmKeys::all`); some scripts take more after those.
//!
//! A ticket is "waiting" exactly while its id is in `queue`; every script
//! that removes a ticket removes it from all five ticket structures at once.
//! Owners are stored as `<gateway>|<conn>|<user>`.

use std::sync::LazyLock;

use deadpool_redis::redis::Script;

/// KEYS[8]: the connection's `gone` marker.
/// ARGV: id, user, owner, ticket JSON, enqueued_at_ms, expires_at_ms.
/// Replaces the user's previous ticket, if any. Returns
/// {status (1 ok, -1 connection gone), rank (0-based), waiting, replaced id or ''}.
pub static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[8]) == 1 then return {-1, 0, 0, ''} end
local replaced = ''
local old = redis.call('HGET', KEYS[4], ARGV[2])
if old then
  redis.call('ZREM', KEYS[1], old)
  redis.call('HDEL', KEYS[2], old)
  redis.call('HDEL', KEYS[3], old)
  redis.call('ZREM', KEYS[5], old)
  replaced = old
end
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[1])
return {1, redis.call('ZRANK', KEYS[1], ARGV[1]), redis.call('ZCARD', KEYS[1]), replaced}
"#,
    )
});

/// KEYS[8]: the connection's `gone` marker.
/// ARGV: user, expected owner ('' = any), gone_ttl_secs (0 = do not mark).
/// Removes the user's ticket (only if owned by the expected connection).
/// Returns the removed ticket id or ''.
pub static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if tonumber(ARGV[3]) > 0 then redis.call('SET', KEYS[8], 1, 'EX', ARGV[3]) end
local id = redis.call('HGET', KEYS[4], ARGV[1])
if not id then return '' end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[3], id) ~= ARGV[2] then return '' end
redis.call('ZREM', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
redis.call('HDEL', KEYS[3], id)
redis.call('ZREM', KEYS[5], id)
redis.call('HDEL', KEYS[4], ARGV[1])
return id
"#,
    )
});

/// ARGV: now_ms, max tickets, rotating-window position (0..1e6).
/// Records the pass time in meta, then returns {waiting, {ticket JSON...}}:
/// the whole queue when it fits, else the oldest half, the newest quarter
/// and a quarter from a rotating position in between (so no ticket is
/// starved by a full head of incompatible ones).
pub static LOAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('HSET', KEYS[7], 'last_pass', ARGV[1])
local total = redis.call('ZCARD', KEYS[1])
local n = tonumber(ARGV[2])
local out = {}
local function add(ids)
  for _, id in ipairs(ids) do
    local j = redis.call('HGET', KEYS[2], id)
    if j then out[#out + 1] = j end
  end
end
if total <= n then
  add(redis.call('ZRANGE', KEYS[1], 0, -1))
else
  local head = math.floor(n / 2)
  local tail = math.floor(n / 4)
  local rot = n - head - tail
  local span = total - head - tail - rot
  local off = head + math.floor(span * tonumber(ARGV[3]) / 1000000)
  add(redis.call('ZRANGE', KEYS[1], 0, head - 1))
  if rot > 0 then add(redis.call('ZRANGE', KEYS[1], off, off + rot - 1)) end
  if tail > 0 then add(redis.call('ZRANGE', KEYS[1], -tail, -1)) end
end
return {total, out}
"#,
    )
});

/// ARGV: now_ms, then (id, user) per member. Claims a group: if every id
/// is still waiting, removes them all and records the match in stats;
/// otherwise changes nothing. Returns 1 claimed, 0 refused.
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for i = 2, #ARGV, 2 do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then return 0 end
end
local n = 0
for i = 2, #ARGV, 2 do
  local id, user = ARGV[i], ARGV[i + 1]
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[5], id)
  if redis.call('HGET', KEYS[4], user) == id then redis.call('HDEL', KEYS[4], user) end
  n = n + 1
end
redis.call('LPUSH', KEYS[6], ARGV[1] .. ' ' .. n)
redis.call('LTRIM', KEYS[6], 0, 199)
return 1
"#,
    )
});

/// KEYS[8..]: each ticket's connection `gone` marker, in ARGV order.
/// ARGV: (id, user, owner, JSON, enqueued_at_ms, expires_at_ms) per ticket.
/// Puts claimed tickets back (when the room could not be made), unless the
/// user has joined again or the connection is gone. Returns how many.
pub static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local k = 8
local n = 0
for i = 1, #ARGV, 6 do
  local id, user = ARGV[i], ARGV[i + 1]
  if redis.call('EXISTS', KEYS[k]) == 0 and not redis.call('HGET', KEYS[4], user) then
    redis.call('ZADD', KEYS[1], ARGV[i + 4], id)
    redis.call('HSET', KEYS[2], id, ARGV[i + 3])
    redis.call('HSET', KEYS[3], id, ARGV[i + 2])
    redis.call('HSET', KEYS[4], user, id)
    redis.call('ZADD', KEYS[5], ARGV[i + 5], id)
    n = n + 1
  end
  k = k + 1
end
return n
"#,
    )
});

/// ARGV: now_ms, limit. Removes tickets whose time is up. Returns
/// {id, owner, enqueued_at_ms, ...} for each, so exactly one replica tells
/// each owner.
pub static EXPIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, id in ipairs(due) do
  local owner = redis.call('HGET', KEYS[3], id)
  local at = redis.call('ZSCORE', KEYS[1], id) or '0'
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[5], id)
  if owner then
    local user = string.match(owner, '^[^|]*|[^|]*|(.*)$')
    if user and redis.call('HGET', KEYS[4], user) == id then redis.call('HDEL', KEYS[4], user) end
    out[#out + 1] = id
    out[#out + 1] = owner
    out[#out + 1] = at
  end
end
return out
"#,
    )
});

/// ARGV: first rank, last rank. Returns {id, owner or '', ...} for that
/// slice of the queue (for position updates).
pub static PAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local ids = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[3], id) or ''
end
return out
"#,
    )
});

/// ARGV: user. Returns {id, JSON, rank, waiting, last_pass_ms, {stats...}}
/// for the user's ticket, or {'', '', 0, 0, '0', {}} when there is none.
pub static STATUS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local id = redis.call('HGET', KEYS[4], ARGV[1])
local j = id and redis.call('HGET', KEYS[2], id)
local rank = id and redis.call('ZRANK', KEYS[1], id)
if not j or not rank then return {'', '', 0, 0, '0', {}} end
return {id, j, rank, redis.call('ZCARD', KEYS[1]), redis.call('HGET', KEYS[7], 'last_pass') or '0',
  redis.call('LRANGE', KEYS[6], 0, -1)}
"#,
    )
});
