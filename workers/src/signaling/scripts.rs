//! Lua scripts for the call state machine. Each touches one call's hash
//! (`sb:{call:<tenant>:<id>}`), so transitions are atomic: exactly one of
//! two racing accepts wins, and a call ends once.
//!
//! Every transition returns `{status, caller, callee, caller_conn,
//! callee_conn, state}`: status 1 done, 0 the call is not in a state that
//! allows it, -1 no such call, -2 the user is not the right party.

use std::sync::LazyLock;

use deadpool_redis::redis::Script;

const PRELUDE: &str = r#"
local function out(status)
  local f = redis.call('HMGET', KEYS[1], 'caller', 'callee', 'caller_conn', 'callee_conn', 'state')
  return {status, f[1] or '', f[2] or '', f[3] or '', f[4] or '', f[5] or ''}
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, '', '', '', '', ''} end
local state = redis.call('HGET', KEYS[1], 'state')
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

/// ARGV: user, conn (`gw:conn`), now. The callee answers from one device.
pub static ACCEPT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('HGET', KEYS[1], 'callee') ~= ARGV[1] then return out(-2) end
if state ~= 'ringing' then return out(0) end
redis.call('HSET', KEYS[1], 'state', 'active', 'callee_conn', ARGV[2], 'answered_at', ARGV[3])
return out(1)
"#,
    )
});

/// ARGV: user, required role (`caller`, `callee` or `any`), required state,
/// reason, now. Ends the call.
pub static FINISH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local role = ARGV[2]
local caller = redis.call('HGET', KEYS[1], 'caller')
local callee = redis.call('HGET', KEYS[1], 'callee')
if role == 'caller' and caller ~= ARGV[1] then return out(-2) end
if role == 'callee' and callee ~= ARGV[1] then return out(-2) end
if role == 'any' and caller ~= ARGV[1] and callee ~= ARGV[1] then return out(-2) end
if state == 'ended' then return out(0) end
if ARGV[3] ~= '' and state ~= ARGV[3] then return out(0) end
redis.call('HSET', KEYS[1], 'state', 'ended', 'end_reason', ARGV[4], 'ended_at', ARGV[5], 'ended_by', ARGV[1])
return out(1)
"#,
    )
});

/// ARGV: role (`caller`/`callee`), conn that dropped, grace deadline.
/// Marks an active call's party as disconnected if that conn was theirs.
pub static DROP_PARTY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if state ~= 'active' then return out(0) end
if redis.call('HGET', KEYS[1], ARGV[1] .. '_conn') ~= ARGV[2] then return out(0) end
redis.call('HSET', KEYS[1], ARGV[1] .. '_conn', '', ARGV[1] .. '_grace', ARGV[3])
return out(1)
"#,
    )
});

/// ARGV: user, new conn. A party that dropped comes back.
pub static RESUME: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local role
if redis.call('HGET', KEYS[1], 'caller') == ARGV[1] then role = 'caller'
elseif redis.call('HGET', KEYS[1], 'callee') == ARGV[1] then role = 'callee'
else return out(-2) end
if state ~= 'active' then return out(0) end
redis.call('HSET', KEYS[1], role .. '_conn', ARGV[2])
redis.call('HDEL', KEYS[1], role .. '_grace')
return out(1)
"#,
    )
});

/// ARGV: role, now. Ends an active call whose party did not come back.
pub static GRACE_OVER: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if state ~= 'active' then return out(0) end
if redis.call('HGET', KEYS[1], ARGV[1] .. '_conn') ~= '' then return out(0) end
local who = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'ended', 'end_reason', 'disconnected', 'ended_at', ARGV[2], 'ended_by', who)
return out(1)
"#,
    )
});

/// KEYS: the user's call marker; ARGV: call id. Frees the marker if it
/// still names this call.
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});
