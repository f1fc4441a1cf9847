//! The `notifications_per_app` quota: how many notifications an app's
//! users have stored and not yet expired, counted per app by expiry
//! minute (`AppKeys::notif_buckets` / `notif_counts`), so that expiry needs
//! no bookkeeping: a minute's count leaves the total once the minute is
//! over.
//!
//! A send counts one per recipient with one check-and-add before it stores
//! anything ([`RESERVE`]); notifications dropped by the per-user cap or
//! cleared are taken off their minute ([`RELEASE`]). A crash between a
//! store and its release only over-counts, until those notifications'
//! minute is over: the count never keeps quota taken for longer.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use deadpool_redis::redis::Script;
use switchboard_shared::ids::TenantId;
use switchboard_shared::keys::AppKeys;
use switchboard_shared::quotas::Quota;

use super::Notifications;
use crate::error::{LogFailure, ServiceError};

/// Width of an expiry bucket: a notification stays counted until the end
/// of the minute it expires in.
pub const BUCKET_MS: u64 = 60_000;

/// KEYS: notif_buckets, notif_counts. ARGV: now, bucket, bucket_end, n,
/// max (0 = no limit). Drops the buckets whose time is over, then adds `n`
/// to `bucket` unless the total would pass `max`. Returns {1 added or
/// 0 full, total}. The keys live until the last bucket is over.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local over = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
for _, b in ipairs(over) do
  local c = tonumber(redis.call('HGET', KEYS[2], b) or '0')
  redis.call('HINCRBY', KEYS[2], 'total', -c)
  redis.call('HDEL', KEYS[2], b)
  redis.call('ZREM', KEYS[1], b)
end
local total = tonumber(redis.call('HGET', KEYS[2], 'total') or '0')
local n = tonumber(ARGV[4])
local max = tonumber(ARGV[5])
if max > 0 and total + n > max then return {0, total} end
redis.call('HINCRBY', KEYS[2], ARGV[2], n)
redis.call('HINCRBY', KEYS[2], 'total', n)
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
for i = 1, 2 do redis.call('PEXPIREAT', KEYS[i], math.floor(tonumber(last[2])) + 1000) end
return {1, total + n}
"#,
    )
});

/// KEYS: notif_buckets, notif_counts. ARGV: now, then pairs of bucket and
/// count. Takes each count off its bucket while the bucket is not over
/// (never below zero).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local now = tonumber(ARGV[1])
for i = 2, #ARGV - 1, 2 do
  local ends = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if ends and tonumber(ends) > now then
    local c = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0')
    local k = math.min(c, tonumber(ARGV[i + 1]))
    if k > 0 then
      redis.call('HINCRBY', KEYS[2], ARGV[i], -k)
      redis.call('HINCRBY', KEYS[2], 'total', -k)
    end
  end
end
return 0
"#,
    )
});

/// The bucket a notification expiring at `expires_ms` is counted in, and
/// when that bucket is over.
fn bucket(expires_ms: u64) -> (u64, u64) {
    let b = expires_ms / BUCKET_MS;
    (b, (b + 1) * BUCKET_MS)
}

/// Counts per bucket of notifications expiring at `expiries`.
fn by_bucket(expiries: &[u64]) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for e in expiries {
        *m.entry(bucket(*e).0).or_default() += 1;
    }
    m
}

impl Notifications {
    /// Counts `n` notifications expiring at `expires_ms` for `tenant`;
    /// `limit_exceeded` when the app would pass its quota (nothing counted).
    pub(super) async fn count_sent(
        &self,
        tenant: &TenantId,
        expires_ms: u64,
        n: u64,
        now: u64,
    ) -> Result<(), ServiceError> {
        if !self.quotas.enabled || n == 0 {
            return Ok(());
        }
        let max = self
            .quotas
            .limit(tenant.as_str(), Quota::NotificationsPerApp);
        let k = AppKeys::new(tenant);
        let (b, ends) = bucket(expires_ms);
        let (added, _total): (i64, i64) = RESERVE
            .key(&k.notif_buckets)
            .key(&k.notif_counts)
            .arg(now)
            .arg(b)
            .arg(ends)
            .arg(n)
            .arg(max)
            .invoke_async(&mut self.conn().await?)
            .await?;
        match added {
            1 => Ok(()),
            0 => Err(ServiceError::limit(
                Quota::NotificationsPerApp,
                max,
                "this app stores too many notifications",
            )),
            other => Err(ServiceError::script("RESERVE", other)),
        }
    }

    /// Takes notifications that left the store early (dropped by the cap,
    /// cleared) off the app's count; `expiries` are their expiry times.
    pub(super) async fn uncount(&self, tenant: &TenantId, expiries: &[u64], now: u64) {
        if !self.quotas.enabled || expiries.is_empty() {
            return;
        }
        let k = AppKeys::new(tenant);
        let mut call = RELEASE.key(&k.notif_buckets);
        call.key(&k.notif_counts).arg(now);
        for (b, n) in by_bucket(expiries) {
            call.arg(b).arg(n);
        }
        let released: Result<i64, ServiceError> = match self.conn().await {
            Ok(mut r) => call.invoke_async(&mut r).await.map_err(ServiceError::from),
            Err(e) => Err(e),
        };
        released.log_failure("taking notifications off the app's count");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_count_until_the_end_of_their_expiry_minute() {
        assert_eq!(bucket(0), (0, BUCKET_MS));
        assert_eq!(bucket(BUCKET_MS - 1), (0, BUCKET_MS));
        assert_eq!(bucket(BUCKET_MS), (1, 2 * BUCKET_MS));
        let m = by_bucket(&[1, 2, BUCKET_MS + 5]);
        assert_eq!(m.into_iter().collect::<Vec<_>>(), vec![(0, 2), (1, 1)]);
    }
}
