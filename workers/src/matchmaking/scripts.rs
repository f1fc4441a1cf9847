//! Lua scripts for the matchmaking service, and their typed results. Each
//! script touches only the keys of one app's queue (hash tag `{mm:<tenant>}`),
//! so it is atomic and Redis-Cluster safe. KEYS are always
//! `queue, tickets, owners, users, expiry, stats, meta`
//! (`keys::MatchmakingKeys::all`).
//!
//! A ticket is "waiting" exactly while its id is in `queue`; every script
//! that removes a ticket removes it from all five ticket structures at once.
//! Owners are [`TicketOwner`]s (`<gateway>|<conn>|<user>`); `stats` entries
//! are `<ms> <tickets matched>`, read by `status::estimate_wait_ms`.
//!
//! No script reads a connection's gone marker: it lives in the connection's
//! hash slot, not the queue's (see `conns.rs` for how joins and requeues
//! check it after writing instead).
//!
//! Every reply is decoded here, by the `from_reply` of its result type; a
//! reply outside a script's contract is a [`ServiceError::Script`].

use std::sync::LazyLock;

use deadpool_redis::redis::Script;
use switchboard_shared::members::TicketOwner;

use crate::error::ServiceError;

/// ARGV: id, user, owner, ticket JSON, enqueued_at_ms, expires_at_ms,
/// max waiting (0 = no limit). Enqueues a ticket, replacing the user's
/// previous one, if any; a new ticket (not a replacement) only while fewer
/// than `max` wait (the `waiting_tickets_per_app` quota). Returns
/// {rank (0-based), waiting, replaced id or ''}, or {-1, waiting, ''} when
/// the queue is full: see [`Joined`].
pub static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local replaced = ''
local old = redis.call('HGET', KEYS[4], ARGV[2])
local max = tonumber(ARGV[7])
if not old and max > 0 and redis.call('ZCARD', KEYS[1]) >= max then
  return {-1, redis.call('ZCARD', KEYS[1]), ''}
end
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
return {redis.call('ZRANK', KEYS[1], ARGV[1]), redis.call('ZCARD', KEYS[1]), replaced}
"#,
    )
});

/// What [`JOIN`] did when it enqueued the ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// 0-based rank of the new ticket in the queue.
    pub rank: u64,
    /// Tickets waiting, the new one included.
    pub waiting: u64,
    /// The user's previous ticket, which this one replaced.
    pub replaced: Option<String>,
}

impl Joined {
    /// `None` when the queue was full (nothing changed).
    pub fn from_reply(
        (rank, waiting, replaced): (i64, u64, String),
    ) -> Result<Option<Self>, ServiceError> {
        match rank {
            -1 => Ok(None),
            r if r >= 0 => Ok(Some(Self {
                rank: r as u64,
                waiting,
                replaced: non_empty(replaced),
            })),
            other => Err(ServiceError::script("JOIN", other)),
        }
    }
}

/// ARGV: user, expected owner ('' = any).
/// Removes the user's ticket (only if owned by the expected connection).
/// Returns the removed ticket id or '': see [`Left`].
pub static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
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

/// What [`LEAVE`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    /// The ticket removed, if there was one (owned by the expected owner).
    pub ticket: Option<String>,
}

impl Left {
    pub fn from_reply(id: String) -> Self {
        Self {
            ticket: non_empty(id),
        }
    }
}

/// ARGV: now_ms, max tickets, rotating-window position (0..1e6).
/// Records the pass time in meta, then returns {waiting, {ticket JSON...}}:
/// the whole queue when it fits, else the oldest half, the newest quarter
/// and a quarter from a rotating position in between (so no ticket is
/// starved by a full head of incompatible ones). See [`Loaded`].
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

/// What [`LOAD`] read: a window of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Tickets waiting in the whole queue.
    pub waiting: u64,
    /// The window's stored tickets (JSON), possibly overlapping.
    pub tickets: Vec<String>,
}

impl Loaded {
    pub fn from_reply((waiting, tickets): (u64, Vec<String>)) -> Self {
        Self { waiting, tickets }
    }
}

/// ARGV: now_ms, then (id, user) per member. Claims a group: if every id
/// is still waiting, removes them all and records the match in stats;
/// otherwise changes nothing. Returns 1 claimed, 0 refused: see [`Claim`].
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

/// What [`CLAIM`] decided for one proposed group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Every ticket was still waiting; they are this pass's now.
    Claimed,
    /// Some ticket had left (matched, left, expired): nothing changed.
    Refused,
}

impl Claim {
    pub fn from_reply(status: i64) -> Result<Self, ServiceError> {
        match status {
            1 => Ok(Self::Claimed),
            0 => Ok(Self::Refused),
            other => Err(ServiceError::script("CLAIM", other)),
        }
    }
}

/// ARGV: (id, user, owner, JSON, enqueued_at_ms, expires_at_ms) per ticket.
/// Puts claimed tickets back (when the room could not be made), unless the
/// user has joined again meanwhile. Returns the ids put back: see
/// [`Requeued`].
pub static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for i = 1, #ARGV, 6 do
  local id, user = ARGV[i], ARGV[i + 1]
  if not redis.call('HGET', KEYS[4], user) then
    redis.call('ZADD', KEYS[1], ARGV[i + 4], id)
    redis.call('HSET', KEYS[2], id, ARGV[i + 3])
    redis.call('HSET', KEYS[3], id, ARGV[i + 2])
    redis.call('HSET', KEYS[4], user, id)
    redis.call('ZADD', KEYS[5], ARGV[i + 5], id)
    out[#out + 1] = id
  end
end
return out
"#,
    )
});

/// What [`REQUEUE`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requeued {
    /// The tickets back in the queue.
    pub ids: Vec<String>,
}

impl Requeued {
    pub fn from_reply(ids: Vec<String>) -> Self {
        Self { ids }
    }
}

/// ARGV: now_ms, limit. Removes tickets whose time is up. Returns
/// {id, owner, enqueued_at_ms, ...} for each, so exactly one replica tells
/// each owner: see [`Expired`]. (The user is the owner's last `|` field:
/// user ids may contain `|`, gateway ids and connection numbers never do.)
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

/// One ticket [`EXPIRE`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub id: String,
    /// Who to tell; `None` when the stored owner is not a valid one.
    pub owner: Option<TicketOwner>,
    pub enqueued_at: u64,
}

impl Expired {
    pub fn from_reply(flat: Vec<String>) -> Result<Vec<Self>, ServiceError> {
        if !flat.len().is_multiple_of(3) {
            return Err(ServiceError::script("EXPIRE", flat));
        }
        flat.chunks(3)
            .map(|e| match e {
                [id, owner, at] => Ok(Self {
                    id: id.clone(),
                    owner: TicketOwner::parse(owner),
                    enqueued_at: score_ms(at).ok_or_else(|| ServiceError::script("EXPIRE", e))?,
                }),
                _ => Err(ServiceError::script("EXPIRE", e)),
            })
            .collect()
    }
}

/// ARGV: first rank, last rank. Returns {id, owner or '', ...} for that
/// slice of the queue (for position updates): see [`Waiting`].
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

/// One waiting ticket of a [`PAGE`], in queue order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub id: String,
    /// `None` when the owner is missing or not a valid one.
    pub owner: Option<TicketOwner>,
}

impl Waiting {
    pub fn from_reply(flat: Vec<String>) -> Result<Vec<Self>, ServiceError> {
        if !flat.len().is_multiple_of(2) {
            return Err(ServiceError::script("PAGE", flat));
        }
        Ok(flat
            .chunks(2)
            .filter_map(|e| match e {
                [id, owner] => Some(Self {
                    id: id.clone(),
                    owner: TicketOwner::parse(owner),
                }),
                _ => None,
            })
            .collect())
    }
}

/// ARGV: user. Returns {id, JSON, rank, waiting, last_pass_ms, {stats...}}
/// for the user's ticket, or {'', '', 0, 0, '0', {}} when there is none:
/// see [`TicketState`].
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

/// A user's waiting ticket, as [`STATUS`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketState {
    pub id: String,
    /// The stored ticket (JSON).
    pub ticket: String,
    pub rank: u64,
    pub waiting: u64,
    /// When the latest matching pass of this app ran (ms).
    pub last_pass: u64,
    /// Recent matches (`<ms> <tickets>`), newest first.
    pub stats: Vec<String>,
}

/// The raw reply of [`STATUS`].
pub type StatusReply = (String, String, u64, u64, u64, Vec<String>);

impl TicketState {
    /// `None` when the user has no waiting ticket.
    pub fn from_reply((id, ticket, rank, waiting, last_pass, stats): StatusReply) -> Option<Self> {
        (!id.is_empty()).then_some(Self {
            id,
            ticket,
            rank,
            waiting,
            last_pass,
            stats,
        })
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A sorted-set score holding ms (Redis may print it as a float).
fn score_ms(s: &str) -> Option<u64> {
    s.parse::<u64>().ok().or_else(|| {
        s.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_decode_and_shape_violations_are_script_errors() {
        let joined = Joined::from_reply((0, 1, String::new())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(joined.map(|j| j.replaced), Some(None));
        assert_eq!(
            Joined::from_reply((-1, 5, String::new())).ok(),
            Some(None),
            "a full queue"
        );
        assert!(Joined::from_reply((-2, 5, String::new())).is_err());
        assert_eq!(Left::from_reply("t1".into()).ticket.as_deref(), Some("t1"));
        assert_eq!(Claim::from_reply(1).ok(), Some(Claim::Claimed));
        assert_eq!(Claim::from_reply(0).ok(), Some(Claim::Refused));
        assert!(matches!(
            Claim::from_reply(7),
            Err(ServiceError::Script {
                script: "CLAIM",
                ..
            })
        ));
        let expired = Expired::from_reply(vec![
            "t1".into(),
            "gw-1|3|we|ird".into(),
            "1700000000000".into(),
            "t2".into(),
            "g*|x".into(),
            "0".into(),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(expired.len(), 2);
        assert_eq!(
            expired[0].owner.as_ref().map(|o| (o.conn, o.user.as_str())),
            Some((3, "we|ird"))
        );
        assert_eq!(expired[0].enqueued_at, 1_700_000_000_000);
        assert_eq!(expired[1].owner, None, "a hostile owner is nobody");
        assert!(Expired::from_reply(vec!["t1".into()]).is_err());
        assert!(Expired::from_reply(vec!["t".into(), "gw|1|u".into(), "x".into()]).is_err());
        let page =
            Waiting::from_reply(vec!["t1".into(), String::new()]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page[0].owner, None);
        assert!(Waiting::from_reply(vec!["t1".into()]).is_err());
        let none = (String::new(), String::new(), 0, 0, 0, Vec::new());
        assert_eq!(TicketState::from_reply(none), None);
    }
}
