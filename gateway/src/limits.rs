//! Abuse limits at the edge (`[limits]`): token buckets per user and op
//! (governor, keyed), strikes that close a connection under sustained abuse,
//! and per-IP connection rates and counts at the handshake.
//!
//! Memory is bounded by active users and IPs, not by connections: buckets
//! live in keyed limiters pruned by [`Limits::housekeeping`], and a
//! connection carries only its [`Strikes`] (two integers).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use switchboard_shared::limits::{Bucket, LimitsConfig};

/// A request refused by a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

/// What to do with a request over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Answer `rate_limited`.
    Refuse(Limited),
    /// Answer `rate_limited`, then close the connection (1008): the client
    /// kept going past `strikes_to_close` refusals.
    Close(Limited),
}

/// Per-connection count of refusals in the current strike window.
#[derive(Debug, Default)]
pub struct Strikes {
    window_start_ms: AtomicU64,
    count: AtomicU32,
}

fn quota(b: Bucket) -> Quota {
    let one = NonZeroU32::MIN;
    Quota::per_second(NonZeroU32::new(b.per_sec).unwrap_or(one))
        .allow_burst(NonZeroU32::new(b.burst).unwrap_or(one))
}

/// The gateway's limits.
pub struct Limits {
    cfg: LimitsConfig,
    clock: DefaultClock,
    /// One keyed limiter per distinct bucket; keys hash (app, user, op).
    ops: Mutex<HashMap<Bucket, Arc<DefaultKeyedRateLimiter<u64>>>>,
    ip_connect: DefaultKeyedRateLimiter<IpAddr>,
    ip_open: Mutex<HashMap<IpAddr, usize>>,
    /// Users closed for sustained abuse (hash of app and user) and until
    /// when (ms) their new connections are refused.
    benched: Mutex<HashMap<u64, u64>>,
}

/// Why a handshake was refused by an IP limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpRefusal {
    /// Too many new connections from this IP: retry after the duration.
    Rate(Duration),
    /// Too many open connections from this IP.
    Open(usize),
}

/// Holds one of an IP's open-connection slots; gives it back on drop.
pub struct IpSlot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.limits.ip_open.lock()
            && let Some(n) = open.get_mut(&self.ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl Limits {
    pub fn new(cfg: LimitsConfig) -> Self {
        Self {
            ip_connect: RateLimiter::keyed(quota(cfg.ip_connect)),
            cfg,
            clock: DefaultClock::default(),
            ops: Mutex::new(HashMap::new()),
            ip_open: Mutex::new(HashMap::new()),
            benched: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    fn limiter(&self, b: Bucket) -> Option<Arc<DefaultKeyedRateLimiter<u64>>> {
        let mut ops = self.ops.lock().ok()?;
        Some(
            ops.entry(b)
                .or_insert_with(|| Arc::new(RateLimiter::keyed(quota(b))))
                .clone(),
        )
    }

    /// Checks one request of `user` of `app` for `service.op`, counting a
    /// refusal against the connection's `strikes`.
    pub fn check_request(
        &self,
        app: &str,
        user: &str,
        service: &str,
        op: &str,
        strikes: &Strikes,
        now_ms: u64,
    ) -> Verdict {
        if !self.cfg.enabled {
            return Verdict::Allow;
        }
        let bucket = self.cfg.bucket(app, service, op);
        let Some(limiter) = self.limiter(bucket) else {
            return Verdict::Allow;
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (app, user, service, op).hash(&mut h);
        let Err(not_until) = limiter.check_key(&h.finish()) else {
            return Verdict::Allow;
        };
        let limited = Limited {
            retry_after: not_until.wait_time_from(self.clock.now()),
        };
        let window = self.cfg.strike_window_ms;
        let start = strikes.window_start_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(start) >= window {
            strikes.window_start_ms.store(now_ms, Ordering::Relaxed);
            strikes.count.store(0, Ordering::Relaxed);
        }
        let n = strikes.count.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.cfg.strikes_to_close {
            Verdict::Close(limited)
        } else {
            Verdict::Refuse(limited)
        }
    }

    /// Admits a new connection from `ip`, or says why not. The slot is held
    /// until the connection ends.
    pub fn admit_ip(self: &Arc<Self>, ip: IpAddr) -> Result<Option<IpSlot>, IpRefusal> {
        if !self.cfg.enabled {
            return Ok(None);
        }
        if let Err(not_until) = self.ip_connect.check_key(&ip) {
            return Err(IpRefusal::Rate(not_until.wait_time_from(self.clock.now())));
        }
        let max = self.cfg.ip_connections;
        if max == 0 {
            return Ok(None);
        }
        let Ok(mut open) = self.ip_open.lock() else {
            return Ok(None);
        };
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return Err(IpRefusal::Open(max));
        }
        *n += 1;
        Ok(Some(IpSlot {
            limits: self.clone(),
            ip,
        }))
    }

    /// A connection of `user` was closed for sustained abuse at `now_ms`:
    /// refuse the user's new connections for `limits.abuse_cooldown_ms`.
    pub fn bench(&self, app: &str, user: &str, now_ms: u64) {
        if !self.cfg.enabled || self.cfg.abuse_cooldown_ms == 0 {
            return;
        }
        if let Ok(mut b) = self.benched.lock() {
            b.insert(
                user_key(app, user),
                now_ms.saturating_add(self.cfg.abuse_cooldown_ms),
            );
        }
    }

    /// How long `user` must still wait before connecting again, if they
    /// were closed for abuse lately.
    pub fn benched(&self, app: &str, user: &str, now_ms: u64) -> Option<Duration> {
        let until = *self.benched.lock().ok()?.get(&user_key(app, user))?;
        (until > now_ms).then(|| Duration::from_millis(until - now_ms))
    }

    /// Forgets buckets that are full again (idle users and IPs), so memory
    /// follows active clients. Called periodically.
    pub fn housekeeping(&self) {
        if let Ok(ops) = self.ops.lock() {
            for l in ops.values() {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
        self.ip_connect.retain_recent();
        self.ip_connect.shrink_to_fit();
        let now = switchboard_shared::now_ms();
        if let Ok(mut b) = self.benched.lock() {
            b.retain(|_, until| *until > now);
        }
    }
}

/// The key of one user of one app in the cooldown table.
fn user_key(app: &str, user: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (app, user).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(f: impl FnOnce(&mut LimitsConfig)) -> Arc<Limits> {
        let mut cfg = LimitsConfig::default();
        f(&mut cfg);
        Arc::new(Limits::new(cfg))
    }

    #[test]
    fn a_burst_is_allowed_then_refused_with_a_retry_time_then_closed() {
        let l = limits(|c| {
            c.ops
                .entry("rooms".into())
                .or_default()
                .insert("publish".into(), Bucket::new(1, 3));
            c.strikes_to_close = 3;
        });
        let s = Strikes::default();
        for _ in 0..3 {
            assert_eq!(
                l.check_request("a", "u", "rooms", "publish", &s, 1),
                Verdict::Allow
            );
        }
        let Verdict::Refuse(r) = l.check_request("a", "u", "rooms", "publish", &s, 1) else {
            panic!("fourth request allowed");
        };
        assert!(r.retry_after > Duration::ZERO && r.retry_after <= Duration::from_secs(1));
        // Other users and other ops have their own buckets.
        assert_eq!(
            l.check_request("a", "v", "rooms", "publish", &s, 1),
            Verdict::Allow
        );
        assert_eq!(
            l.check_request("b", "u", "rooms", "publish", &s, 1),
            Verdict::Allow
        );
        assert_eq!(
            l.check_request("a", "u", "rooms", "info", &s, 1),
            Verdict::Allow
        );
        assert!(matches!(
            l.check_request("a", "u", "rooms", "publish", &s, 2),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            l.check_request("a", "u", "rooms", "publish", &s, 3),
            Verdict::Close(_)
        ));
    }

    #[test]
    fn a_user_closed_for_abuse_waits_before_connecting_again() {
        let l = limits(|c| c.abuse_cooldown_ms = 1_000);
        assert_eq!(l.benched("a", "u", 5_000), None);
        l.bench("a", "u", 5_000);
        assert_eq!(l.benched("a", "u", 5_400), Some(Duration::from_millis(600)));
        assert_eq!(l.benched("a", "other", 5_400), None);
        assert_eq!(l.benched("b", "u", 5_400), None);
        assert_eq!(l.benched("a", "u", 6_000), None);
        let off = limits(|c| c.abuse_cooldown_ms = 0);
        off.bench("a", "u", 5_000);
        assert_eq!(off.benched("a", "u", 5_001), None);
    }

    #[test]
    fn strikes_reset_after_the_window() {
        let l = limits(|c| {
            c.default_op = Bucket::new(1, 1);
            c.strikes_to_close = 2;
            c.strike_window_ms = 100;
        });
        let s = Strikes::default();
        assert_eq!(l.check_request("a", "u", "x", "y", &s, 0), Verdict::Allow);
        assert!(matches!(
            l.check_request("a", "u", "x", "y", &s, 10),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            l.check_request("a", "u", "x", "y", &s, 500),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn ip_slots_are_counted_and_given_back() {
        let l = limits(|c| {
            c.ip_connections = 2;
            c.ip_connect = Bucket::new(100, 100);
        });
        let ip: IpAddr = [127, 0, 0, 1].into();
        let a = l.admit_ip(ip);
        let b = l.admit_ip(ip);
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(l.admit_ip(ip).err(), Some(IpRefusal::Open(2)));
        assert!(l.admit_ip([127, 0, 0, 2].into()).is_ok());
        drop(a);
        assert!(l.admit_ip(ip).is_ok());
    }

    #[test]
    fn the_ip_connect_rate_is_limited() {
        let l = limits(|c| c.ip_connect = Bucket::new(1, 2));
        let ip: IpAddr = [10, 1, 1, 1].into();
        let _a = l.admit_ip(ip);
        let _b = l.admit_ip(ip);
        assert!(matches!(l.admit_ip(ip).err(), Some(IpRefusal::Rate(_))));
    }

    #[test]
    fn disabled_limits_allow_everything() {
        let l = limits(|c| {
            c.enabled = false;
            c.default_op = Bucket::new(1, 1);
        });
        let s = Strikes::default();
        for _ in 0..10 {
            assert_eq!(l.check_request("a", "u", "x", "y", &s, 0), Verdict::Allow);
        }
    }
}
