//! Lua scripts for the presence service, and their typed results. The
//! user scripts touch only one user's keys (hash tag `{user:<t>:<u>}`, KEYS
//! `presence_conns, presence`); the gateway scripts only one gateway's
//! (`{gw:<gw>}`, KEYS `gateway_conns, gateway_digest`).
//!
//! Every script answers the user's effective state as `{changed (0/1),
//! status, text, last_seen, ver, online (0/1)}`, where `changed` says whether
//! watchers must be told. The wrappers below are the only way to run a
//! script; they decode that answer into an [`Update`] here, once.

use std::sync::LazyLock;

use deadpool_redis::redis::Script;
use switchboard_shared::conn_events::digest_term;
use switchboard_shared::ids::GatewayId;
use switchboard_shared::keys::{self, UserKeys};
use switchboard_shared::members::{ConnMember, TenantUser};

use super::status::State;
use crate::error::ServiceError;

/// What a presence script answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// Watchers must be told.
    pub changed: bool,
    pub state: State,
}

/// The raw answer of a presence script.
type Raw = (i64, String, String, u64, u64, i64);

fn flag(v: i64) -> Option<bool> {
    match v {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

fn decode(script: &'static str, raw: Raw) -> Result<Update, ServiceError> {
    let (Some(changed), Some(online)) = (flag(raw.0), flag(raw.5)) else {
        return Err(ServiceError::script(script, raw));
    };
    let (_, status, text, last_seen, ver, _) = raw;
    Ok(Update {
        changed,
        state: State {
            status,
            text,
            last_seen,
            ver,
            online,
        },
    })
}

/// How `presence.set` changes the custom status text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextChange {
    Keep,
    Clear,
    /// Never empty, never contains NUL (the script's "clear" marker).
    Set(String),
}

impl TextChange {
    /// The script's ARGV form: '' keep, '\0' clear.
    fn arg(&self) -> &str {
        match self {
            Self::Keep => "",
            Self::Clear => "\0",
            Self::Set(t) => t,
        }
    }
}

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
static CONNECT: LazyLock<Script> = LazyLock::new(|| {
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
static DISCONNECT: LazyLock<Script> = LazyLock::new(|| {
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
static SET: LazyLock<Script> = LazyLock::new(|| {
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
static GET: LazyLock<Script> = LazyLock::new(|| with_state("return state(0)"));

type Conn = deadpool_redis::Connection;

/// ARGV: conn id, `tenant|user`, the id's digest term. Lists a connection
/// under its gateway and adds it to the gateway's digest, once.
static GW_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'n', 1)
  redis.call('HINCRBY', KEYS[2], 'sum', ARGV[3])
  return 1
end
return 0
"#,
    )
});

/// ARGV: conn id, the id's digest term. Takes a connection off its gateway's
/// list and digest, once; an empty digest is deleted with its bookkeeping.
static GW_DEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  local n = redis.call('HINCRBY', KEYS[2], 'n', -1)
  local sum = redis.call('HINCRBY', KEYS[2], 'sum', -tonumber(ARGV[2]))
  if n <= 0 and sum == 0 then redis.call('DEL', KEYS[2]) end
  return 1
end
return 0
"#,
    )
});

fn added(script: &'static str, v: i64) -> Result<bool, ServiceError> {
    flag(v).ok_or_else(|| ServiceError::script(script, v))
}

/// Lists connection `conn` of `owner` under gateway `gw`; whether it was new.
pub async fn gateway_add(
    r: &mut Conn,
    gw: &GatewayId,
    conn: u64,
    owner: &TenantUser,
) -> Result<bool, ServiceError> {
    let v: i64 = GW_ADD
        .key(keys::gateway_conns(gw))
        .key(keys::gateway_digest(gw))
        .arg(conn)
        .arg(owner.to_string())
        .arg(digest_term(conn))
        .invoke_async(r)
        .await?;
    added("GW_ADD", v)
}

/// Takes connection `conn` off gateway `gw`; whether it was listed.
pub async fn gateway_remove(r: &mut Conn, gw: &GatewayId, conn: u64) -> Result<bool, ServiceError> {
    let v: i64 = GW_DEL
        .key(keys::gateway_conns(gw))
        .key(keys::gateway_digest(gw))
        .arg(conn)
        .arg(digest_term(conn))
        .invoke_async(r)
        .await?;
    added("GW_DEL", v)
}

/// Connection `member` of the user arrives.
pub async fn connect(
    r: &mut Conn,
    k: &UserKeys,
    member: &ConnMember,
    now: u64,
) -> Result<Update, ServiceError> {
    member_change(&CONNECT, "CONNECT", r, k, member, now).await
}

/// Connection `member` of the user leaves.
pub async fn disconnect(
    r: &mut Conn,
    k: &UserKeys,
    member: &ConnMember,
    now: u64,
) -> Result<Update, ServiceError> {
    member_change(&DISCONNECT, "DISCONNECT", r, k, member, now).await
}

/// Runs CONNECT or DISCONNECT (same keys and arguments).
async fn member_change(
    script: &Script,
    name: &'static str,
    r: &mut Conn,
    k: &UserKeys,
    member: &ConnMember,
    now: u64,
) -> Result<Update, ServiceError> {
    let raw: Raw = script
        .key(&k.presence_conns)
        .key(&k.presence)
        .arg(member.to_string())
        .arg(now)
        .invoke_async(r)
        .await?;
    decode(name, raw)
}

/// The user chooses a status (`None`: keep it) and changes their text.
pub async fn set(
    r: &mut Conn,
    k: &UserKeys,
    status: Option<&str>,
    text: &TextChange,
) -> Result<Update, ServiceError> {
    let raw: Raw = SET
        .key(&k.presence_conns)
        .key(&k.presence)
        .arg(status.unwrap_or(""))
        .arg(text.arg())
        .invoke_async(r)
        .await?;
    decode("SET", raw)
}

/// The user's state.
pub async fn get(r: &mut Conn, k: &UserKeys) -> Result<State, ServiceError> {
    let raw: Raw = GET
        .key(&k.presence_conns)
        .key(&k.presence)
        .invoke_async(r)
        .await?;
    Ok(decode("GET", raw)?.state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decode_and_odd_flags_are_refused() {
        let u = decode("T", (1, "away".into(), "lunch".into(), 5, 7, 0));
        assert_eq!(
            u.ok(),
            Some(Update {
                changed: true,
                state: State {
                    status: "away".into(),
                    text: "lunch".into(),
                    last_seen: 5,
                    ver: 7,
                    online: false,
                },
            })
        );
        for bad in [
            (2, "online".into(), "".into(), 0, 1, 1),
            (0, "online".into(), "".into(), 0, 1, -1),
        ] {
            assert!(matches!(
                decode("T", bad),
                Err(ServiceError::Script { script: "T", .. })
            ));
        }
        assert_eq!(TextChange::Keep.arg(), "");
        assert_eq!(TextChange::Clear.arg(), "\0");
        assert_eq!(TextChange::Set("hi".into()).arg(), "hi");
    }
}
