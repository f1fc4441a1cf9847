//! Lua scripts for the notification store, and their typed results. Each
//! script touches one user's keys (hash tag `{user:<t>:<u>}`); KEYS are
//! `data, order, expiry, unread` ([`keys`]).
//!
//! Invariants:
//! - `order` scores are strictly increasing in the order `STORE` ran for
//!   that user: a new notification scores `max(created_ms, newest + 1)`, so
//!   notifications sent within one millisecond (or by workers whose clocks
//!   disagree) keep their send order, and the cap drops exactly the oldest.
//!   Scores are therefore "ms or a little later", never read as a time
//!   (`created_at` is in the notification itself).
//! - Every script first purges what has expired, so no reply ever names an
//!   expired notification.

use std::collections::HashSet;
use std::sync::LazyLock;

use deadpool_redis::redis::Script;
use switchboard_shared::keys::UserKeys;

/// The KEYS of every script here, in order.
pub fn keys(k: &UserKeys) -> [&str; 4] {
    [
        &k.notif_data,
        &k.notif_order,
        &k.notif_expiry,
        &k.notif_unread,
    ]
}

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
/// Stores one notification as unread, after every one stored before (see
/// the order invariant above), drops the oldest beyond `cap`, keeps the keys
/// alive until the last notification expires. Returns {unread count,
/// expiry of each one dropped}: see [`Stored`].
pub static STORE: LazyLock<Script> = LazyLock::new(|| {
    with_purge(
        r#"
purge(ARGV[1])
local score = tonumber(ARGV[4])
local newest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if newest[2] and tonumber(newest[2]) >= score then score = tonumber(newest[2]) + 1 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], string.format('%.17g', score), ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[2])
local n = redis.call('ZCARD', KEYS[2])
local cap = tonumber(ARGV[6])
local dropped = {}
if n > cap then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, n - cap - 1)) do
    local e = redis.call('ZSCORE', KEYS[3], id)
    if e then dropped[#dropped + 1] = e end
    drop(id)
  end
end
local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
if last[2] then
  for i = 1, 4 do redis.call('PEXPIREAT', KEYS[i], math.floor(tonumber(last[2])) + 1000) end
end
return {redis.call('SCARD', KEYS[4]), dropped}
"#,
    )
});

/// What [`STORE`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The recipient's unread count, the new one included.
    pub unread: u64,
    /// Expiry (ms) of each notification the cap dropped.
    pub dropped: Vec<u64>,
}

impl Stored {
    pub fn from_reply((unread, dropped): (u64, Vec<String>)) -> Self {
        Self {
            unread,
            dropped: scores_ms(&dropped),
        }
    }
}

/// Sorted-set scores holding ms (Redis may print them as floats); one that
/// is not a time is left out (it only ever lowers a quota count).
fn scores_ms(scores: &[String]) -> Vec<u64> {
    scores
        .iter()
        .filter_map(|s| {
            s.parse::<u64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
        })
        .collect()
}

/// ARGV: now. Returns {ids newest first, unread ids}: see [`Listed`].
pub static LIST: LazyLock<Script> = LazyLock::new(|| {
    with_purge(
        r#"
purge(ARGV[1])
return {redis.call('ZREVRANGE', KEYS[2], 0, -1), redis.call('SMEMBERS', KEYS[4])}
"#,
    )
});

/// A user's notifications, as [`LIST`] read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// `(id, unread)`, newest first.
    pub items: Vec<(String, bool)>,
    /// How many are unread.
    pub unread: usize,
}

impl Listed {
    pub fn from_reply((newest_first, unread): (Vec<String>, Vec<String>)) -> Self {
        let unread: HashSet<String> = unread.into_iter().collect();
        Self {
            unread: unread.len(),
            items: newest_first
                .into_iter()
                .map(|id| {
                    let u = unread.contains(&id);
                    (id, u)
                })
                .collect(),
        }
    }

    /// Whether `id` is stored (read or not).
    pub fn contains(&self, id: &str) -> bool {
        self.items.iter().any(|(i, _)| i == id)
    }
}

/// ARGV: now, id ('' = all). Marks read; returns {changed, unread count,
/// {}}: see [`Changed`].
pub static MARK_READ: LazyLock<Script> = LazyLock::new(|| {
    with_purge(
        r#"
purge(ARGV[1])
local changed
if ARGV[2] == '' then changed = redis.call('DEL', KEYS[4]) else changed = redis.call('SREM', KEYS[4], ARGV[2]) end
return {changed, redis.call('SCARD', KEYS[4]), {}}
"#,
    )
});

/// ARGV: now, id ('' = all). Deletes; returns {removed, unread count,
/// expiry of each one removed}: see [`Changed`].
pub static CLEAR: LazyLock<Script> = LazyLock::new(|| {
    with_purge(
        r#"
purge(ARGV[1])
local removed = 0
local expiries = {}
if ARGV[2] == '' then
  removed = redis.call('ZCARD', KEYS[2])
  local all = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
  for i = 2, #all, 2 do expiries[#expiries + 1] = all[i] end
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
elseif redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  local e = redis.call('ZSCORE', KEYS[3], ARGV[2])
  if e then expiries[1] = e end
  drop(ARGV[2])
  removed = 1
end
return {removed, redis.call('SCARD', KEYS[4]), expiries}
"#,
    )
});

/// What [`MARK_READ`] or [`CLEAR`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// How many were marked read (`MARK_READ`; for `all`, 1 when any
    /// were unread) or removed (`CLEAR`).
    pub changed: u64,
    /// The unread count after the change.
    pub unread: u64,
    /// Expiry (ms) of each notification removed (`CLEAR`).
    pub removed: Vec<u64>,
}

impl Changed {
    pub fn from_reply((changed, unread, removed): (u64, u64, Vec<String>)) -> Self {
        Self {
            changed,
            unread,
            removed: scores_ms(&removed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_of_removed_notifications_decode() {
        let s = Stored::from_reply((3, vec!["1700000000000".into(), "1.7e12".into(), "x".into()]));
        assert_eq!(
            (s.unread, s.dropped),
            (3, vec![1_700_000_000_000, 1_700_000_000_000])
        );
        let c = Changed::from_reply((1, 0, vec!["5".into()]));
        assert_eq!((c.changed, c.unread, c.removed), (1, 0, vec![5]));
    }

    #[test]
    fn lists_know_what_is_unread() {
        let l = Listed::from_reply((
            vec!["n3".into(), "n2".into(), "n1".into()],
            vec!["n1".into(), "n3".into()],
        ));
        assert_eq!(l.unread, 2);
        assert_eq!(
            l.items,
            [
                ("n3".into(), true),
                ("n2".into(), false),
                ("n1".into(), true)
            ]
        );
        assert!(l.contains("n2") && !l.contains("n4"));
    }
}
