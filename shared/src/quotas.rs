//! Quotas, as configured (`[quotas]`): bounds on what one connection, one
//! user and one app may make the cluster hold, as opposed to the rates of
//! `[limits]`. Defaults are far above what a real messenger needs; 0 means
//! no limit; `quotas.apps.<app>.<name>` overrides one quota for one app.
//!
//! Over a quota a request gets `limit_exceeded` with the quota's name and
//! value ([`crate::error::Exceeded`]); nothing is dropped silently. Where
//! each quota is enforced (ARCHITECTURE.md, "Quotas"):
//! - per connection, rooms joined: the rooms service, in Redis, with one
//!   check-and-add on the connection's room set;
//! - per connection, presence subscriptions and signal rooms: the gateway,
//!   which holds those subscriptions and sees those requests;
//! - per user, rooms created and per app, live rooms: the rooms service,
//!   with a check-and-add on the user's / app's room set, swept of rooms
//!   that expired;
//! - per app, connections: the gateway at the handshake, reading the count
//!   that the presence service keeps ([`usage`]);
//! - per app, notifications: the notifications service (a count by expiry);
//! - per app, waiting tickets: the matchmaking join script.
//!
//! This module also reads an app's usage ([`usage`]) for operators.

use std::collections::BTreeMap;

use deadpool_redis::redis;
use serde::{Deserialize, Serialize};

use crate::ids::{TenantId, UserId};
use crate::keys::{AppKeys, MatchmakingKeys, UserKeys};

/// Largest value a quota may take: counts are compared inside Lua, whose
/// numbers are doubles (exact up to 2^53).
pub const MAX_VALUE: u64 = (1 << 53) - 1;

/// One quota. Its name is the config key and what `limit_exceeded` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quota {
    /// Rooms one connection is a member of.
    RoomsPerConnection,
    /// Users whose presence one connection follows (`presence.subscribe`).
    PresenceSubscriptionsPerConnection,
    /// Rooms one connection sent a typing indicator or a cursor to within
    /// the last `rooms.typing_ttl_ms` (a typing indicator ended with
    /// `typing: false` no longer counts).
    SignalRoomsPerConnection,
    /// Rooms one user created that still exist (cluster-wide).
    RoomsCreatedPerUser,
    /// Rooms of one app that exist (cluster-wide), matchmaking's included.
    LiveRoomsPerApp,
    /// Open connections of one app (cluster-wide).
    ConnectionsPerApp,
    /// Notifications stored for one app's users and not yet expired.
    NotificationsPerApp,
    /// Matchmaking tickets waiting in one app's queue.
    WaitingTicketsPerApp,
}

impl Quota {
    pub const ALL: [Quota; 8] = [
        Self::RoomsPerConnection,
        Self::PresenceSubscriptionsPerConnection,
        Self::SignalRoomsPerConnection,
        Self::RoomsCreatedPerUser,
        Self::LiveRoomsPerApp,
        Self::ConnectionsPerApp,
        Self::NotificationsPerApp,
        Self::WaitingTicketsPerApp,
    ];

    /// The config key under `[quotas]`, and the `limit` of the error.
    pub fn name(self) -> &'static str {
        match self {
            Self::RoomsPerConnection => "rooms_per_connection",
            Self::PresenceSubscriptionsPerConnection => "presence_subscriptions_per_connection",
            Self::SignalRoomsPerConnection => "signal_rooms_per_connection",
            Self::RoomsCreatedPerUser => "rooms_created_per_user",
            Self::LiveRoomsPerApp => "live_rooms_per_app",
            Self::ConnectionsPerApp => "connections_per_app",
            Self::NotificationsPerApp => "notifications_per_app",
            Self::WaitingTicketsPerApp => "waiting_tickets_per_app",
        }
    }
}

/// Quotas one app may override (absent: the default).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AppQuotas {
    pub rooms_per_connection: Option<u64>,
    pub presence_subscriptions_per_connection: Option<u64>,
    pub signal_rooms_per_connection: Option<u64>,
    pub rooms_created_per_user: Option<u64>,
    pub live_rooms_per_app: Option<u64>,
    pub connections_per_app: Option<u64>,
    pub notifications_per_app: Option<u64>,
    pub waiting_tickets_per_app: Option<u64>,
}

impl AppQuotas {
    fn get(&self, q: Quota) -> Option<u64> {
        match q {
            Quota::RoomsPerConnection => self.rooms_per_connection,
            Quota::PresenceSubscriptionsPerConnection => self.presence_subscriptions_per_connection,
            Quota::SignalRoomsPerConnection => self.signal_rooms_per_connection,
            Quota::RoomsCreatedPerUser => self.rooms_created_per_user,
            Quota::LiveRoomsPerApp => self.live_rooms_per_app,
            Quota::ConnectionsPerApp => self.connections_per_app,
            Quota::NotificationsPerApp => self.notifications_per_app,
            Quota::WaitingTicketsPerApp => self.waiting_tickets_per_app,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    /// Off switch for every quota here.
    pub enabled: bool,
    pub rooms_per_connection: u64,
    pub presence_subscriptions_per_connection: u64,
    pub signal_rooms_per_connection: u64,
    pub rooms_created_per_user: u64,
    pub live_rooms_per_app: u64,
    pub connections_per_app: u64,
    pub notifications_per_app: u64,
    pub waiting_tickets_per_app: u64,
    /// Per-app overrides, by app id.
    pub apps: BTreeMap<String, AppQuotas>,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rooms_per_connection: 1_000,
            presence_subscriptions_per_connection: 1_000,
            signal_rooms_per_connection: 100,
            rooms_created_per_user: 1_000,
            live_rooms_per_app: 1_000_000,
            connections_per_app: 1_000_000,
            notifications_per_app: 10_000_000,
            waiting_tickets_per_app: 100_000,
            apps: BTreeMap::new(),
        }
    }
}

impl QuotasConfig {
    fn default_of(&self, q: Quota) -> u64 {
        match q {
            Quota::RoomsPerConnection => self.rooms_per_connection,
            Quota::PresenceSubscriptionsPerConnection => self.presence_subscriptions_per_connection,
            Quota::SignalRoomsPerConnection => self.signal_rooms_per_connection,
            Quota::RoomsCreatedPerUser => self.rooms_created_per_user,
            Quota::LiveRoomsPerApp => self.live_rooms_per_app,
            Quota::ConnectionsPerApp => self.connections_per_app,
            Quota::NotificationsPerApp => self.notifications_per_app,
            Quota::WaitingTicketsPerApp => self.waiting_tickets_per_app,
        }
    }

    /// The value of quota `q` for `app`: its override, else the default;
    /// 0 means no limit (also when quotas are off).
    pub fn limit(&self, app: &str, q: Quota) -> u64 {
        if !self.enabled {
            return 0;
        }
        self.apps
            .get(app)
            .and_then(|a| a.get(q))
            .unwrap_or_else(|| self.default_of(q))
    }

    /// The first invalid setting: `(key, why)`.
    pub fn invalid(&self) -> Option<(String, String)> {
        let too_big = || format!("must be at most {MAX_VALUE} (0 = no limit)");
        for q in Quota::ALL {
            if self.default_of(q) > MAX_VALUE {
                return Some((format!("quotas.{}", q.name()), too_big()));
            }
        }
        for (app, a) in &self.apps {
            if let Err(e) = TenantId::parse(app) {
                return Some((format!("quotas.apps.{app}"), format!("not an app id: {e}")));
            }
            for q in Quota::ALL {
                if a.get(q).is_some_and(|v| v > MAX_VALUE) {
                    return Some((format!("quotas.apps.{app}.{}", q.name()), too_big()));
                }
            }
        }
        None
    }
}

/// What one app holds now, for operators (a future admin API reads this).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AppUsage {
    /// Rooms that exist. Rooms that expired are counted until the rooms
    /// service's next sweep (every second).
    pub live_rooms: u64,
    /// Open connections, as the presence service has registered them.
    pub connections: u64,
    /// Notifications stored and not expired. Those that expired in the
    /// current minute may still be counted.
    pub notifications: u64,
    /// Matchmaking tickets waiting.
    pub waiting_tickets: u64,
}

/// An app's usage of its quotas, read from Redis (a few reads, no writes).
pub async fn usage(
    r: &mut deadpool_redis::Connection,
    app: &TenantId,
    now_ms: u64,
) -> Result<AppUsage, redis::RedisError> {
    let k = AppKeys::new(app);
    let mm = MatchmakingKeys::new(app);
    let (live_rooms, connections, total, expired, waiting_tickets): (
        u64,
        u64,
        Option<i64>,
        Vec<String>,
        u64,
    ) = redis::pipe()
        .zcard(&k.rooms)
        .scard(&k.conns)
        .hget(&k.notif_counts, AppKeys::NOTIF_TOTAL)
        .zrangebyscore(&k.notif_buckets, "-inf", now_ms)
        .zcard(&mm.queue)
        .query_async(r)
        .await?;
    let mut notifications = total.unwrap_or(0);
    if !expired.is_empty() {
        // Buckets whose time is over still wait for the next send to
        // remove them: leave them out.
        let counts: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(&k.notif_counts)
            .arg(&expired)
            .query_async(r)
            .await?;
        notifications -= counts.into_iter().flatten().sum::<i64>();
    }
    Ok(AppUsage {
        live_rooms,
        connections,
        notifications: notifications.max(0) as u64,
        waiting_tickets,
    })
}

/// How many connections `app` has open across the cluster, as the presence
/// service has registered them (the `connections_per_app` count).
pub async fn app_connections(
    r: &mut deadpool_redis::Connection,
    app: &TenantId,
) -> Result<u64, redis::RedisError> {
    redis::cmd("SCARD")
        .arg(AppKeys::new(app).conns)
        .query_async(r)
        .await
}

/// How many rooms `user` of `app` created that still exist (the same
/// count the `rooms_created_per_user` quota uses; expired rooms leave it at
/// the user's next create over the quota or at the sweep).
pub async fn user_rooms_created(
    r: &mut deadpool_redis::Connection,
    app: &TenantId,
    user: &UserId,
) -> Result<u64, redis::RedisError> {
    redis::cmd("ZCARD")
        .arg(UserKeys::new(app, user).rooms_created)
        .query_async(r)
        .await
}

/// A typing or cursor request as the `signal_rooms_per_connection` quota
/// sees it: the room it signals in, and whether it starts (or keeps up)
/// activity there (`typing: false` ends it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalTouch {
    pub room: String,
    pub active: bool,
}

#[derive(Deserialize)]
struct SignalData {
    room: Option<String>,
    typing: Option<bool>,
}

/// The room a `rooms.typing` / `rooms.cursor` request signals in; `None`
/// for any other request, or data the rooms service will refuse anyway.
pub fn signal_touch(service: &str, op: &str, data: &[u8]) -> Option<SignalTouch> {
    if service != "rooms" || !matches!(op, "typing" | "cursor") {
        return None;
    }
    let d: SignalData = serde_json::from_slice(data).ok()?;
    Some(SignalTouch {
        room: d.room?,
        active: op == "cursor" || d.typing.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_overrides_win_and_zero_or_off_means_no_limit() {
        let mut q = QuotasConfig::default();
        assert_eq!(q.limit("a", Quota::RoomsPerConnection), 1_000);
        q.apps.insert(
            "small".into(),
            AppQuotas {
                rooms_per_connection: Some(20),
                live_rooms_per_app: Some(0),
                ..AppQuotas::default()
            },
        );
        assert_eq!(q.limit("small", Quota::RoomsPerConnection), 20);
        assert_eq!(q.limit("small", Quota::LiveRoomsPerApp), 0);
        assert_eq!(q.limit("small", Quota::ConnectionsPerApp), 1_000_000);
        assert_eq!(q.limit("a", Quota::RoomsPerConnection), 1_000);
        q.enabled = false;
        assert_eq!(q.limit("small", Quota::RoomsPerConnection), 0);
    }

    #[test]
    fn bad_values_are_refused_by_key() {
        let mut q = QuotasConfig::default();
        assert_eq!(q.invalid(), None);
        q.apps.insert(
            "demo".into(),
            AppQuotas {
                waiting_tickets_per_app: Some(u64::MAX),
                ..AppQuotas::default()
            },
        );
        assert_eq!(
            q.invalid().map(|(k, _)| k),
            Some("quotas.apps.demo.waiting_tickets_per_app".to_owned())
        );
        q.apps.clear();
        q.apps.insert("a.b".into(), AppQuotas::default());
        assert_eq!(
            q.invalid().map(|(k, _)| k),
            Some("quotas.apps.a.b".to_owned())
        );
        q.apps.clear();
        q.notifications_per_app = MAX_VALUE + 1;
        assert_eq!(
            q.invalid().map(|(k, _)| k),
            Some("quotas.notifications_per_app".to_owned())
        );
    }

    fn from_toml(s: &str) -> Result<crate::config::Config, String> {
        use figment::providers::{Format, Serialized, Toml};
        let fig = figment::Figment::from(Serialized::defaults(crate::config::Config::default()))
            .merge(Toml::string(s));
        crate::config::Config::from_figment(fig).map_err(|e| e.to_string())
    }

    #[test]
    fn the_section_and_its_app_overrides_load_and_bad_keys_are_named() {
        let cfg = from_toml(
            "[quotas]\nrooms_per_connection = 50\n[quotas.apps.demo]\nconnections_per_app = 3\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.quotas.limit("x", Quota::RoomsPerConnection), 50);
        assert_eq!(cfg.quotas.limit("demo", Quota::ConnectionsPerApp), 3);
        assert_eq!(cfg.quotas.limit("x", Quota::ConnectionsPerApp), 1_000_000);
        let err = from_toml("[quotas.apps.demo]\nrooms_per_connection = 9007199254740992\n")
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("quotas.apps.demo.rooms_per_connection"),
            "{err}"
        );
        let err = from_toml("[quotas]\nrooms_per_conection = 5\n")
            .err()
            .unwrap_or_default();
        assert!(err.contains("rooms_per_conection"), "{err}");
        let err = from_toml("[quotas]\nlive_rooms_per_app = -1\n")
            .err()
            .unwrap_or_default();
        assert!(err.contains("live_rooms_per_app"), "{err}");
    }

    #[test]
    fn names_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for q in Quota::ALL {
            assert!(seen.insert(q.name()), "{}", q.name());
        }
    }

    #[test]
    fn signal_requests_name_their_room() {
        let t = |op, d: &str| signal_touch("rooms", op, d.as_bytes());
        assert_eq!(
            t("typing", r#"{"room":"r","typing":true}"#),
            Some(SignalTouch {
                room: "r".into(),
                active: true
            })
        );
        assert_eq!(
            t("typing", r#"{"room":"r","typing":false}"#).map(|s| s.active),
            Some(false)
        );
        assert_eq!(
            t("cursor", r#"{"room":"r","data":{"x":1}}"#).map(|s| s.active),
            Some(true)
        );
        assert_eq!(t("publish", r#"{"room":"r"}"#), None);
        assert_eq!(t("typing", "null"), None);
        assert_eq!(
            signal_touch("presence", "typing", b"{\"room\":\"r\"}"),
            None
        );
    }
}
