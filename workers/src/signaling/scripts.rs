//! Lua scripts for the call state machine, and their typed results. Each
//! touches one call's hash (`keys::call`), so transitions are atomic: exactly
//! one of two racing accepts wins, and a call ends once.
//!
//! Every transition script answers `{status, caller, callee, caller_conn,
//! callee_conn, state}`: status 1 done, 0 the call is not in a state that
//! allows it, -1 no such call, -2 the user is not the right party. The
//! wrappers below are the only way to run a script; they decode that answer
//! into a [`Transition`] here, once, so handlers never see a status code.

use std::sync::LazyLock;

use deadpool_redis::redis::Script;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::ids::{CallId, UserId};
use switchboard_shared::members::{CallRole, ConnMember};

use crate::error::ServiceError;

/// Where a call is in its life (the `state` field of its hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    Ringing,
    Active,
    Ended,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ringing => "ringing",
            Self::Active => "active",
            Self::Ended => "ended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ringing" => Some(Self::Ringing),
            "active" => Some(Self::Active),
            "ended" => Some(Self::Ended),
            _ => None,
        }
    }
}

/// Why a call ended (the `end_reason` field, and what clients are told).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Hangup,
    Rejected,
    Cancelled,
    /// Nobody answered in time.
    Timeout,
    /// A party dropped and did not come back within the grace period.
    Disconnected,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hangup => "hangup",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
            Self::Timeout => "timeout",
            Self::Disconnected => "disconnected",
        }
    }
}

/// A call as a transition script left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub caller: UserId,
    pub callee: UserId,
    /// The connection speaking for each party; `None` while it rings (callee)
    /// or while that party is reconnecting.
    pub caller_conn: Option<ConnMember>,
    pub callee_conn: Option<ConnMember>,
    pub state: CallState,
}

impl Call {
    pub fn user(&self, role: CallRole) -> &UserId {
        match role {
            CallRole::Caller => &self.caller,
            CallRole::Callee => &self.callee,
        }
    }

    pub fn conn(&self, role: CallRole) -> Option<&ConnMember> {
        match role {
            CallRole::Caller => self.caller_conn.as_ref(),
            CallRole::Callee => self.callee_conn.as_ref(),
        }
    }

    /// `user`'s side of the call, the caller's if they called themselves.
    pub fn role_of(&self, user: &UserId) -> Option<CallRole> {
        if *user == self.caller {
            Some(CallRole::Caller)
        } else if *user == self.callee {
            Some(CallRole::Callee)
        } else {
            None
        }
    }
}

/// What a transition script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The transition happened; the call as it is now.
    Done(Call),
    /// The call is not in a state that allows it.
    Refused(Call),
    /// There is no such call.
    NoSuchCall,
    /// The user is not the party the transition needs.
    NotAParty,
}

impl Transition {
    /// The call, or the client's error for a refused `what` ("accept"…).
    /// Anyone who is not the right party is told the call does not exist.
    pub fn check(self, what: &str) -> Result<Call, ServiceError> {
        match self {
            Self::Done(call) => Ok(call),
            Self::NoSuchCall | Self::NotAParty => {
                Err(ServiceError::client(ErrorCode::NotFound, "no such call"))
            }
            Self::Refused(call) => Err(ServiceError::client(
                ErrorCode::Conflict,
                format!("cannot {what} a call that is {}", call.state.as_str()),
            )),
        }
    }
}

/// The raw answer of a transition script.
type Raw = (i64, String, String, String, String, String);

fn decode(script: &'static str, raw: Raw) -> Result<Transition, ServiceError> {
    let call = |raw: &Raw| -> Option<Call> {
        let conn = |s: &str| match s {
            "" => Some(None),
            s => ConnMember::parse(s).map(Some),
        };
        Some(Call {
            caller: UserId::parse(&raw.1).ok()?,
            callee: UserId::parse(&raw.2).ok()?,
            caller_conn: conn(&raw.3)?,
            callee_conn: conn(&raw.4)?,
            state: CallState::parse(&raw.5)?,
        })
    };
    match raw.0 {
        -1 => Ok(Transition::NoSuchCall),
        -2 => Ok(Transition::NotAParty),
        0 | 1 => match call(&raw) {
            Some(c) if raw.0 == 1 => Ok(Transition::Done(c)),
            Some(c) => Ok(Transition::Refused(c)),
            None => Err(ServiceError::script(script, raw)),
        },
        _ => Err(ServiceError::script(script, raw)),
    }
}

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
static ACCEPT: LazyLock<Script> = LazyLock::new(|| {
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
static FINISH: LazyLock<Script> = LazyLock::new(|| {
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
static DROP_PARTY: LazyLock<Script> = LazyLock::new(|| {
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
static RESUME: LazyLock<Script> = LazyLock::new(|| {
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
static GRACE_OVER: LazyLock<Script> = LazyLock::new(|| {
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
/// still names this call; answers 1 if it did.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

type Conn = deadpool_redis::Connection;

/// The callee `user` answers call `key` from `conn`.
pub async fn accept(
    r: &mut Conn,
    key: &str,
    user: &UserId,
    conn: &ConnMember,
    now: u64,
) -> Result<Transition, ServiceError> {
    let raw: Raw = ACCEPT
        .key(key)
        .arg(user.as_str())
        .arg(conn.to_string())
        .arg(now)
        .invoke_async(r)
        .await?;
    decode("ACCEPT", raw)
}

/// Who may end a call and from which state, and why it ends.
#[derive(Debug, Clone, Copy)]
pub struct Finish<'a> {
    /// Who ends it (`ended_by`).
    pub by: &'a UserId,
    /// The side `by` must be; `None`: either.
    pub party: Option<CallRole>,
    /// The state the call must be in.
    pub from: CallState,
    pub reason: EndReason,
}

/// Ends call `key` as `f` says.
pub async fn finish(
    r: &mut Conn,
    key: &str,
    f: Finish<'_>,
    now: u64,
) -> Result<Transition, ServiceError> {
    let raw: Raw = FINISH
        .key(key)
        .arg(f.by.as_str())
        .arg(f.party.map_or("any", CallRole::as_str))
        .arg(f.from.as_str())
        .arg(f.reason.as_str())
        .arg(now)
        .invoke_async(r)
        .await?;
    decode("FINISH", raw)
}

/// `role`'s connection `conn` dropped out of active call `key`: the party
/// is reconnecting until `deadline` (ms).
pub async fn drop_party(
    r: &mut Conn,
    key: &str,
    role: CallRole,
    conn: &ConnMember,
    deadline: u64,
) -> Result<Transition, ServiceError> {
    let raw: Raw = DROP_PARTY
        .key(key)
        .arg(role.as_str())
        .arg(conn.to_string())
        .arg(deadline)
        .invoke_async(r)
        .await?;
    decode("DROP_PARTY", raw)
}

/// `user` speaks for their side of active call `key` from `conn` now.
pub async fn resume(
    r: &mut Conn,
    key: &str,
    user: &UserId,
    conn: &ConnMember,
) -> Result<Transition, ServiceError> {
    let raw: Raw = RESUME
        .key(key)
        .arg(user.as_str())
        .arg(conn.to_string())
        .invoke_async(r)
        .await?;
    decode("RESUME", raw)
}

/// `role`'s grace period in call `key` is over: ends the call unless they
/// came back.
pub async fn grace_over(
    r: &mut Conn,
    key: &str,
    role: CallRole,
    now: u64,
) -> Result<Transition, ServiceError> {
    let raw: Raw = GRACE_OVER
        .key(key)
        .arg(role.as_str())
        .arg(now)
        .invoke_async(r)
        .await?;
    decode("GRACE_OVER", raw)
}

/// Frees the busy marker `key` if it still names `call`; whether it did.
pub async fn release(r: &mut Conn, key: &str, call: &CallId) -> Result<bool, ServiceError> {
    let deleted: i64 = RELEASE.key(key).arg(call.as_str()).invoke_async(r).await?;
    match deleted {
        0 => Ok(false),
        1 => Ok(true),
        n => Err(ServiceError::script("RELEASE", n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(status: i64, caller_conn: &str, callee_conn: &str, state: &str) -> Raw {
        (
            status,
            "alice".into(),
            "bob@example.com".into(),
            caller_conn.into(),
            callee_conn.into(),
            state.into(),
        )
    }

    #[test]
    fn transitions_decode_every_status_and_refuse_anything_else() {
        let done = decode("T", raw(1, "gw-1:3", "", "ringing"));
        let Ok(Transition::Done(call)) = done else {
            panic!("{done:?}")
        };
        assert_eq!(call.caller.as_str(), "alice");
        assert_eq!(call.conn(CallRole::Caller).map(|c| c.conn), Some(3));
        assert_eq!(call.conn(CallRole::Callee), None);
        assert_eq!(call.state, CallState::Ringing);
        assert_eq!(call.role_of(&call.callee), Some(CallRole::Callee));
        assert!(matches!(
            decode("T", raw(0, "gw-1:3", "gw-2:9", "ended")),
            Ok(Transition::Refused(Call {
                state: CallState::Ended,
                ..
            }))
        ));
        assert_eq!(
            decode(
                "T",
                (-1, "".into(), "".into(), "".into(), "".into(), "".into())
            )
            .ok(),
            Some(Transition::NoSuchCall)
        );
        assert_eq!(
            decode("T", raw(-2, "", "", "")).ok(),
            Some(Transition::NotAParty)
        );
        for bad in [
            raw(2, "gw-1:3", "", "ringing"),
            raw(1, "gw-1:3", "", "paused"),
            raw(1, "not a conn", "", "active"),
            raw(0, "gw-1:3", "", ""),
        ] {
            let e = decode("T", bad.clone());
            assert!(
                matches!(e, Err(ServiceError::Script { script: "T", .. })),
                "{bad:?}: {e:?}"
            );
        }
    }
}
