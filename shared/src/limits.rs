//! Abuse limits, as configured (`[limits]`): request rates per user and op,
//! connection rates and counts per IP, and the cluster-wide cap on one
//! user's connections. The gateway enforces rates and IP limits; the
//! presence service enforces the per-user connection cap, because only it
//! sees a user's connections on every gateway.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A token bucket: `per_sec` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub per_sec: u32,
    pub burst: u32,
}

impl Bucket {
    pub const fn new(per_sec: u32, burst: u32) -> Self {
        Self { per_sec, burst }
    }
}

/// What happens to a user's newest connection beyond
/// `limits.user_connections`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// The new connection is closed (1008).
    Refuse,
    /// The user's oldest connection is closed (1008) to make room.
    CloseOldest,
}

/// Limits one app may override.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AppLimits {
    /// `service` → `op` → bucket, replacing the default for that op.
    pub ops: BTreeMap<String, BTreeMap<String, Bucket>>,
    /// Replaces `limits.user_connections` for this app.
    pub user_connections: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Off switch for every limit here (benchmarks measure without them).
    pub enabled: bool,
    /// Requests per user and op on one gateway: `service` → `op` → bucket.
    pub ops: BTreeMap<String, BTreeMap<String, Bucket>>,
    /// Requests per user for any op not named in `ops`.
    pub default_op: Bucket,
    /// `rate_limited` answers within `strike_window_ms` after which the
    /// connection is closed with 1008 (sustained abuse).
    pub strikes_to_close: u32,
    pub strike_window_ms: u64,
    /// After that close, the user's new connections to the same gateway are
    /// refused (HTTP 429) for this long (0: not at all), so a client that
    /// reconnects at once cannot resume the flood.
    pub abuse_cooldown_ms: u64,
    /// New connections per client address on one gateway (HTTP 429 beyond).
    /// The address is the TCP peer: behind a load balancer that is the
    /// balancer's, so the default only stops floods.
    pub ip_connect: Bucket,
    /// Open connections per client address on one gateway (0: no limit;
    /// the default, for the same reason).
    pub ip_connections: usize,
    /// Connections one user may hold across the cluster (0: no limit).
    pub user_connections: usize,
    pub user_connections_policy: OverflowPolicy,
    /// Per-app overrides, by app id.
    pub apps: BTreeMap<String, AppLimits>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let op = |s: &str, o: &str, b: Bucket| (s.to_owned(), BTreeMap::from([(o.to_owned(), b)]));
        let mut ops: BTreeMap<String, BTreeMap<String, Bucket>> = BTreeMap::new();
        for (s, o, b) in [
            ("rooms", "publish", Bucket::new(20, 40)),
            ("rooms", "typing", Bucket::new(4, 8)),
            ("rooms", "cursor", Bucket::new(30, 60)),
            ("rooms", "create", Bucket::new(5, 20)),
            ("presence", "set", Bucket::new(2, 5)),
            ("signaling", "call", Bucket::new(1, 3)),
            ("matchmaking", "join", Bucket::new(1, 5)),
        ] {
            let (s, m) = op(s, o, b);
            ops.entry(s).or_default().extend(m);
        }
        Self {
            enabled: true,
            ops,
            default_op: Bucket::new(50, 100),
            strikes_to_close: 50,
            strike_window_ms: 10_000,
            abuse_cooldown_ms: 10_000,
            ip_connect: Bucket::new(1_000, 2_000),
            ip_connections: 0,
            user_connections: 50,
            user_connections_policy: OverflowPolicy::CloseOldest,
            apps: BTreeMap::new(),
        }
    }
}

impl LimitsConfig {
    /// The bucket for `service.op` requests of a user of `app`.
    pub fn bucket(&self, app: &str, service: &str, op: &str) -> Bucket {
        let pick = |ops: &BTreeMap<String, BTreeMap<String, Bucket>>| {
            ops.get(service).and_then(|m| m.get(op)).copied()
        };
        self.apps
            .get(app)
            .and_then(|a| pick(&a.ops))
            .or_else(|| pick(&self.ops))
            .unwrap_or(self.default_op)
    }

    /// The cluster-wide connection cap for a user of `app` (0: none).
    pub fn user_connections(&self, app: &str) -> usize {
        if !self.enabled {
            return 0;
        }
        self.apps
            .get(app)
            .and_then(|a| a.user_connections)
            .unwrap_or(self.user_connections)
    }

    /// The first invalid setting: `(key, why)`.
    pub fn invalid(&self) -> Option<(String, &'static str)> {
        let zero = |b: &Bucket| b.per_sec == 0 || b.burst == 0;
        let mut all: Vec<(String, Bucket)> = vec![
            ("limits.default_op".into(), self.default_op),
            ("limits.ip_connect".into(), self.ip_connect),
        ];
        let ops = |prefix: &str, m: &BTreeMap<String, BTreeMap<String, Bucket>>| {
            m.iter()
                .flat_map(|(s, o)| {
                    o.iter()
                        .map(move |(name, b)| (format!("{prefix}.{s}.{name}"), *b))
                })
                .collect::<Vec<_>>()
        };
        all.extend(ops("limits.ops", &self.ops));
        for (app, a) in &self.apps {
            all.extend(ops(&format!("limits.apps.{app}.ops"), &a.ops));
        }
        if let Some((k, _)) = all.into_iter().find(|(_, b)| zero(b)) {
            return Some((k, "per_sec and burst must be at least 1"));
        }
        if self.strikes_to_close == 0 || self.strike_window_ms == 0 {
            return Some((
                "limits.strikes_to_close".into(),
                "strikes_to_close and strike_window_ms must be at least 1",
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_overrides_win_then_op_defaults_then_the_catch_all() {
        let mut l = LimitsConfig::default();
        assert_eq!(l.bucket("a", "rooms", "publish"), Bucket::new(20, 40));
        assert_eq!(l.bucket("a", "rooms", "info"), l.default_op);
        l.apps.insert(
            "big".into(),
            AppLimits {
                ops: BTreeMap::from([(
                    "rooms".into(),
                    BTreeMap::from([("publish".into(), Bucket::new(100, 200))]),
                )]),
                user_connections: Some(5),
            },
        );
        assert_eq!(l.bucket("big", "rooms", "publish"), Bucket::new(100, 200));
        assert_eq!(l.bucket("a", "rooms", "publish"), Bucket::new(20, 40));
        assert_eq!(l.user_connections("big"), 5);
        assert_eq!(l.user_connections("a"), 50);
        l.enabled = false;
        assert_eq!(l.user_connections("big"), 0);
    }

    #[test]
    fn zero_buckets_are_refused_by_name() {
        let mut l = LimitsConfig::default();
        assert_eq!(l.invalid(), None);
        l.ops
            .entry("rooms".into())
            .or_default()
            .insert("publish".into(), Bucket::new(0, 1));
        assert_eq!(
            l.invalid().map(|(k, _)| k),
            Some("limits.ops.rooms.publish".to_owned())
        );
    }
}
