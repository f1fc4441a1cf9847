//! Lua scripts for the presence service. Each touches only one user's keys
//! (hash tag `{user:<t>:<u>}`). KEYS are `presence_conns, presence`.
//!
//! Every script returns the user's effective state as
//! `{changed (0/1), status, text, last_seen, ver, online (0/1)}`, where
//! `changed` says whether watchers must be told.

use std::sync::LazyLock;

use deadpool_redis::redis::Script;

const STATE: &str = r#"
local function state(changed)
  local p = redis.call('HMGET', KEYS[2], 'status', 'text', 'last_seen', 'ver')
  local online = 0
  if redis.call('HLEN', KEYS[1]) > 0 then online = 1 end
  return {changed, p[1] or 'online', p[2] or '', tonumber(p[3] or '0'), tonumber(p[4] or '0'), online}
end
"#;

fn with_state(body: &str) -> Script {
    Script::new(&format!("{STATE}\n{body}"))
}

/// ARGV: member (`gw:conn`), now_ms. A connection arrives.
pub static CONNECT: LazyLock<Script> = LazyLock::new(|| {
    with_state(
        r#"
local added = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if added == 1 and redis.call('HLEN', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'ver', 1)
  return state(1)
end
return state(0)
"#,
    )
});

/// ARGV: member, now_ms. A connection leaves; the last one takes the user
/// offline and sets last_seen.
pub static DISCONNECT: LazyLock<Script> = LazyLock::new(|| {
    with_state(
        r#"
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed == 1 and redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[2], 'last_seen', ARGV[2])
  redis.call('HINCRBY', KEYS[2], 'ver', 1)
  return state(1)
end
return state(0)
"#,
    )
});

/// ARGV: status ('' = keep), text ('' = keep, '\0' = clear).
pub static SET: LazyLock<Script> = LazyLock::new(|| {
    with_state(
        r#"
if ARGV[1] ~= '' then redis.call('HSET', KEYS[2], 'status', ARGV[1]) end
if ARGV[2] == '\0' then redis.call('HDEL', KEYS[2], 'text')
elseif ARGV[2] ~= '' then redis.call('HSET', KEYS[2], 'text', ARGV[2]) end
redis.call('HINCRBY', KEYS[2], 'ver', 1)
return state(1)
"#,
    )
});

/// No ARGV: read the state.
pub static GET: LazyLock<Script> = LazyLock::new(|| with_state("return state(0)"));
