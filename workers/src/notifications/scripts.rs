//! Lua scripts for the notification store. Each touches one user's keys
//! (hash tag `{user:<t>:<u>}`); KEYS are `data, order, expiry, unread`.

use std::sync::LazyLock;

use deadpool_redis::redis::Script;

/// Removes expired notifications (ARGV[1] = now ms) and returns nothing;
/// shared by the scripts below as a prelude.
const PURGE: &str = r#"
local function drop(id)
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('SREM', KEYS[4], id)
end
local function purge(now)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 200)
  for _, id in ipairs(expired) do drop(id) end
end
"#;

fn with_purge(body: &str) -> Script {
    Script::new(&format!("{PURGE}\n{body}"))
}

/// ARGV: now, id, json, created_ms, expires_ms, cap.
/// Stores one notification as unread, drops the oldest beyond `cap`, keeps
/// the keys alive until the last notification expires. Returns the unread count.
pub static STORE: LazyLock<Script> = LazyLock::new(|| {
    with_purge(
        r#"
purge(ARGV[1])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[2])
local n = redis.call('ZCARD', KEYS[2])
local cap = tonumber(ARGV[6])
if n > cap then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, n - cap - 1)) do drop(id) end
end
local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
if last[2] then
  for i = 1, 4 do redis.call('PEXPIREAT', KEYS[i], math.floor(tonumber(last[2])) + 1000) end
end
return redis.call('SCARD', KEYS[4])
"#,
    )
});

/// ARGV: now. Returns {ids newest first, unread ids}.
pub static LIST: LazyLock<Script> = LazyLock::new(|| {
    with_purge(
        r#"
purge(ARGV[1])
return {redis.call('ZREVRANGE', KEYS[2], 0, -1), redis.call('SMEMBERS', KEYS[4])}
"#,
    )
});

/// ARGV: now, id ('' = all). Marks read; returns {changed, unread count}.
pub static MARK_READ: LazyLock<Script> = LazyLock::new(|| {
    with_purge(
        r#"
purge(ARGV[1])
local changed
if ARGV[2] == '' then changed = redis.call('DEL', KEYS[4]) else changed = redis.call('SREM', KEYS[4], ARGV[2]) end
return {changed, redis.call('SCARD', KEYS[4])}
"#,
    )
});

/// ARGV: now, id ('' = all). Deletes; returns {removed, unread count}.
pub static CLEAR: LazyLock<Script> = LazyLock::new(|| {
    with_purge(
        r#"
purge(ARGV[1])
local removed = 0
if ARGV[2] == '' then
  removed = redis.call('ZCARD', KEYS[2])
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
elseif redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  drop(ARGV[2])
  removed = 1
end
return {removed, redis.call('SCARD', KEYS[4])}
"#,
    )
});
