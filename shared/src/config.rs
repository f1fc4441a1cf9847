//! Configuration, layered with figment: built-in defaults that work on
//! localhost, then a TOML file, then `SB_` environment variables
//! (`SB_GATEWAY__LISTEN=0.0.0.0:8080`; `__` separates sections).
//!
//! The source is injectable ([`Config::from_figment`]) so tests can build a
//! config from a map. A bad value fails at start with a message naming its key.

use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The development HS256 secret used when none is configured. The gateway
/// warns loudly when it runs with it.
pub const DEV_SECRET: &str = "switchboard-dev-secret-change-me";

/// Longest `rooms.dedupe_window_secs` (a day): the ids a room remembers grow
/// with the window.
pub const MAX_DEDUPE_WINDOW_SECS: u64 = 86_400;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub nats: NatsConfig,
    pub redis: RedisConfig,
    pub auth: AuthConfig,
    pub gateway: GatewayConfig,
    pub workers: WorkersConfig,
    pub rooms: RoomsConfig,
    pub presence: PresenceConfig,
    pub notifications: NotificationsConfig,
    pub signaling: SignalingConfig,
    pub matchmaking: MatchmakingConfig,
    pub limits: crate::limits::LimitsConfig,
    pub quotas: crate::quotas::QuotasConfig,
    pub admin: crate::admin::AdminConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// `nats://host:port` (several, comma-separated, for a cluster).
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: String,
    pub pool_size: usize,
    /// Longest wait for a pooled connection (or a new one) before a request
    /// fails as `unavailable`.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accepted JWT algorithms: any of HS256, RS256, ES256. The token's own
    /// header never widens this list.
    pub algorithms: Vec<String>,
    /// Shared secret for HS256.
    pub hs256_secret: Option<String>,
    /// PEM public key for RS256.
    pub rs256_public_key: Option<String>,
    /// PEM public key for ES256.
    pub es256_public_key: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// The claim that names the app (tenant).
    pub tenant_claim: String,
    /// Clock skew tolerated on `exp` / `nbf`, in seconds.
    pub leeway_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Prefix of this gateway's id in subjects (e.g. the pod name); a random
    /// suffix is added at every start.
    pub id: Option<String>,
    /// Allowed `Origin` values for browser clients; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Largest client message accepted (bigger → close 1009).
    pub max_message_bytes: usize,
    /// Time allowed for the HTTP upgrade request to arrive.
    pub handshake_timeout_ms: u64,
    /// How often the gateway pings each client.
    pub ping_interval_ms: u64,
    /// A client silent (no frame, no pong) this long is closed (1001).
    pub idle_timeout_ms: u64,
    /// Frames queued for one client before it counts as a slow reader and is
    /// disconnected (1008).
    pub outbound_queue: usize,
    /// A single socket write blocked this long disconnects the client.
    pub write_timeout_ms: u64,
    /// How long a request may wait for its worker's reply.
    pub request_timeout_ms: u64,
    /// Requests one connection may have in flight.
    pub max_inflight: usize,
    /// Services clients may address (`<service>.<op>`).
    pub services: Vec<String>,
    /// How long an out-of-order room message waits for the missing ones
    /// before the gateway asks the worker for them.
    pub reorder_window_ms: u64,
    /// Most out-of-order messages buffered per room feed.
    pub reorder_buffer: usize,
    /// How often the gateway announces itself on `sb.evt.conn`.
    pub heartbeat_interval_ms: u64,
    /// Most concurrent connections; beyond it new upgrades get 503.
    pub max_connections: usize,
    /// On shutdown, clients are closed with 1012 spread over this window,
    /// so they do not all reconnect at once (0 closes them all at once).
    pub drain_window_ms: u64,
    /// A stopping gateway is gone this long after the signal at the latest,
    /// whatever its clients do. Must exceed `drain_window_ms`, with room for
    /// in-flight requests (`request_timeout_ms`) to get their replies.
    pub drain_grace_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// Requests one worker process handles at once per service.
    pub concurrency: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// Messages kept per room.
    pub history_max: u64,
    /// Age after which a message leaves the history, in seconds.
    pub history_ttl_secs: u64,
    /// A room with no members for this long is deleted, in seconds.
    pub idle_ttl_secs: u64,
    /// A typing indicator with no `stop` ends by itself after this.
    pub typing_ttl_ms: u64,
    /// Highest `max_members` a client may ask for (0 = no cap).
    pub max_members_cap: u32,
    /// Most entries one `history` read returns.
    pub history_page_max: u64,
    /// How long a publish's client message id (`msg_id`) is remembered, per
    /// room and user: a publish repeating it within this is not stored again.
    pub dedupe_window_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// A gateway silent this long is dead: its connections go offline and
    /// leave their rooms. Keep it a few `gateway.heartbeat_interval_ms`.
    pub gateway_dead_after_ms: u64,
    /// How often the presence service looks for dead gateways.
    pub reap_interval_ms: u64,
    /// Most users one request may get or watch.
    pub max_users_per_request: usize,
    /// Longest custom status text, in characters.
    pub max_text_chars: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationsConfig {
    /// Default lifetime of a notification, in seconds.
    pub ttl_secs: u64,
    /// Most notifications kept per user; the oldest are dropped first.
    pub per_user_cap: u64,
    /// Most pending notifications pushed to a connection when it connects.
    pub pending_on_connect: u64,
    /// Largest `content`, in bytes.
    pub max_content_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SignalingConfig {
    /// A call nobody answers ends (reason `timeout`) after this.
    pub ring_timeout_ms: u64,
    /// A party whose connection drops has this long to come back (any
    /// gateway) before the call ends with reason `disconnected`.
    pub reconnect_grace_ms: u64,
    /// Calls kept in each user's history.
    pub history_max: u64,
    /// How long ended calls (and their ratings) are kept, in seconds.
    pub history_ttl_secs: u64,
    /// Largest SDP / candidate payload relayed, in bytes.
    pub max_signal_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MatchmakingConfig {
    /// How often each matchmaking replica runs a matching pass.
    pub tick_ms: u64,
    /// A ticket not matched within this is dropped (and its owner told).
    pub ticket_ttl_secs: u64,
    /// After how many seconds of waiting each optional term is relaxed, in
    /// order: the first entry drops the first optional term, and so on.
    pub relax_after_secs: Vec<u64>,
    /// How often waiting tickets get position / estimated-wait updates.
    pub status_interval_ms: u64,
    /// Most tickets examined per matching pass.
    pub max_tickets_per_pass: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` (for terminals) or `json`.
    pub format: String,
    /// A tracing filter such as `info,switchboard_gateway=debug`; `RUST_LOG`
    /// overrides it.
    pub filter: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            pool_size: 16,
            timeout_ms: 2_000,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            algorithms: vec!["HS256".into()],
            hs256_secret: Some(DEV_SECRET.into()),
            rs256_public_key: None,
            es256_public_key: None,
            issuer: None,
            audience: None,
            tenant_claim: "app".into(),
            leeway_secs: 30,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            id: None,
            allowed_origins: Vec::new(),
            max_message_bytes: 64 * 1024,
            handshake_timeout_ms: 10_000,
            ping_interval_ms: 20_000,
            idle_timeout_ms: 60_000,
            outbound_queue: 256,
            write_timeout_ms: 10_000,
            request_timeout_ms: 5_000,
            max_inflight: 64,
            services: vec![
                "rooms".into(),
                "presence".into(),
                "notifications".into(),
                "signaling".into(),
                "matchmaking".into(),
            ],
            reorder_window_ms: 100,
            reorder_buffer: 1024,
            heartbeat_interval_ms: 4_000,
            max_connections: 200_000,
            drain_window_ms: 2_000,
            drain_grace_ms: 10_000,
        }
    }
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self { concurrency: 256 }
    }
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            history_max: 1000,
            history_ttl_secs: 24 * 3600,
            idle_ttl_secs: 24 * 3600,
            typing_ttl_ms: 6_000,
            max_members_cap: 10_000,
            history_page_max: 500,
            dedupe_window_secs: 120,
        }
    }
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            gateway_dead_after_ms: 12_000,
            reap_interval_ms: 1_000,
            max_users_per_request: 500,
            max_text_chars: 256,
        }
    }
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 7 * 24 * 3600,
            per_user_cap: 500,
            pending_on_connect: 100,
            max_content_bytes: 16 * 1024,
        }
    }
}

impl Default for SignalingConfig {
    fn default() -> Self {
        Self {
            ring_timeout_ms: 30_000,
            reconnect_grace_ms: 15_000,
            history_max: 100,
            history_ttl_secs: 30 * 24 * 3600,
            max_signal_bytes: 16 * 1024,
        }
    }
}

impl Default for MatchmakingConfig {
    fn default() -> Self {
        Self {
            tick_ms: 200,
            ticket_ttl_secs: 600,
            relax_after_secs: vec![10, 20, 30],
            status_interval_ms: 2_000,
            max_tickets_per_pass: 10_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "pretty".into(),
            filter: "info".into(),
        }
    }
}

/// A configuration that could not be loaded; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    /// Like `Invalid`, for keys named at run time (map entries).
    #[error("configuration key `{key}`: {message}")]
    InvalidSetting { key: String, message: String },
}

impl Config {
    /// The standard layering: defaults, then `path` (if given and present),
    /// then `SB_` environment variables.
    pub fn figment(path: Option<&Path>) -> Figment {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            fig = fig.merge(Toml::file(path));
        }
        fig.merge(Env::prefixed("SB_").split("__"))
    }

    /// Loads from the standard layering.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(path))
    }

    /// Loads from any figment (tests inject maps or strings here).
    pub fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        let cfg: Config = fig.extract().map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |key: &'static str, message: String| Err(ConfigError::Invalid { key, message });
        if let Some((key, why)) = self.limits.invalid() {
            return Err(ConfigError::InvalidSetting {
                key,
                message: why.into(),
            });
        }
        if let Some((key, message)) = self.quotas.invalid() {
            return Err(ConfigError::InvalidSetting { key, message });
        }
        if let Some((key, message)) = self.admin.invalid() {
            return invalid(key, message);
        }
        if self.auth.algorithms.is_empty() {
            return invalid(
                "auth.algorithms",
                "at least one algorithm is required".into(),
            );
        }
        for alg in &self.auth.algorithms {
            match alg.as_str() {
                "HS256" if self.auth.hs256_secret.as_deref().is_none_or(str::is_empty) => {
                    return invalid(
                        "auth.hs256_secret",
                        "HS256 is enabled but no secret is set".into(),
                    );
                }
                "RS256" if self.auth.rs256_public_key.is_none() => {
                    return invalid(
                        "auth.rs256_public_key",
                        "RS256 is enabled but no key is set".into(),
                    );
                }
                "ES256" if self.auth.es256_public_key.is_none() => {
                    return invalid(
                        "auth.es256_public_key",
                        "ES256 is enabled but no key is set".into(),
                    );
                }
                "HS256" | "RS256" | "ES256" => {}
                other => {
                    return invalid(
                        "auth.algorithms",
                        format!("unsupported algorithm {other:?} (use HS256, RS256 or ES256)"),
                    );
                }
            }
        }
        if let Some(id) = &self.gateway.id
            && let Err(e) = crate::ids::GatewayId::parse(id)
        {
            return invalid("gateway.id", e.to_string());
        }
        let g = &self.gateway;
        for (key, v) in [
            ("gateway.max_message_bytes", g.max_message_bytes),
            ("gateway.outbound_queue", g.outbound_queue),
            ("gateway.max_inflight", g.max_inflight),
            ("gateway.reorder_buffer", g.reorder_buffer),
            ("gateway.max_connections", g.max_connections),
            ("workers.concurrency", self.workers.concurrency),
            ("redis.pool_size", self.redis.pool_size),
        ] {
            if v == 0 {
                return invalid(key, "must be greater than 0".into());
            }
        }
        for (key, v) in [
            ("gateway.ping_interval_ms", g.ping_interval_ms),
            ("gateway.idle_timeout_ms", g.idle_timeout_ms),
            ("gateway.request_timeout_ms", g.request_timeout_ms),
            ("gateway.heartbeat_interval_ms", g.heartbeat_interval_ms),
            ("rooms.history_max", self.rooms.history_max),
            ("rooms.typing_ttl_ms", self.rooms.typing_ttl_ms),
            (
                "presence.gateway_dead_after_ms",
                self.presence.gateway_dead_after_ms,
            ),
            ("presence.reap_interval_ms", self.presence.reap_interval_ms),
            ("notifications.ttl_secs", self.notifications.ttl_secs),
            (
                "notifications.per_user_cap",
                self.notifications.per_user_cap,
            ),
            ("rooms.history_page_max", self.rooms.history_page_max),
        ] {
            if v == 0 {
                return invalid(key, "must be greater than 0".into());
            }
        }
        if !(1..=MAX_DEDUPE_WINDOW_SECS).contains(&self.rooms.dedupe_window_secs) {
            return invalid(
                "rooms.dedupe_window_secs",
                format!("must be between 1 and {MAX_DEDUPE_WINDOW_SECS}"),
            );
        }
        if self.matchmaking.max_tickets_per_pass == 0 {
            return invalid(
                "matchmaking.max_tickets_per_pass",
                "must be greater than 0".into(),
            );
        }
        if !self
            .matchmaking
            .relax_after_secs
            .windows(2)
            .all(|w| w[0] < w[1])
        {
            return invalid(
                "matchmaking.relax_after_secs",
                "steps must be strictly ascending".into(),
            );
        }
        if g.drain_grace_ms <= g.drain_window_ms {
            return invalid(
                "gateway.drain_grace_ms",
                format!(
                    "must be greater than gateway.drain_window_ms ({})",
                    g.drain_window_ms
                ),
            );
        }
        for s in &g.services {
            if !crate::subjects::is_op_name(s) {
                return invalid(
                    "gateway.services",
                    format!("{s:?} is not a valid service name"),
                );
            }
        }
        if !matches!(self.log.format.as_str(), "pretty" | "json") {
            return invalid(
                "log.format",
                format!("{:?} is not `pretty` or `json`", self.log.format),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::{Format, Toml};

    fn from_toml(s: &str) -> Result<Config, ConfigError> {
        Config::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(s)),
        )
    }

    #[test]
    fn defaults_are_valid_for_localhost() {
        let cfg = from_toml("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.gateway.listen.ip().to_string(), "127.0.0.1");
        assert_eq!(cfg.gateway.max_message_bytes, 65536);
    }

    #[test]
    fn file_values_override_defaults() {
        let cfg = from_toml("[gateway]\nlisten = \"0.0.0.0:9000\"\n[rooms]\nhistory_max = 5\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.gateway.listen.port(), 9000);
        assert_eq!(cfg.rooms.history_max, 5);
    }

    /// The error `s` fails with ('' when it loads).
    fn error_of(s: &str) -> String {
        from_toml(s)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_bad_value_names_its_key() {
        for (toml, key) in [
            ("[gateway]\nlisten = \"nowhere\"\n", "listen"),
            ("[gateway]\nmax_inflight = 0\n", "gateway.max_inflight"),
            (
                "[matchmaking]\nrelax_after_secs = [20, 10]\n",
                "matchmaking.relax_after_secs",
            ),
            ("[auth]\nalgorithms = [\"none\"]\n", "auth.algorithms"),
            ("[gateway]\nlistne = \"x\"\n", "listne"),
            (
                "[rooms]\ndedupe_window_secs = 0\n",
                "rooms.dedupe_window_secs",
            ),
            (
                "[rooms]\ndedupe_window_secs = 86401\n",
                "rooms.dedupe_window_secs",
            ),
        ] {
            let err = error_of(toml);
            assert!(err.contains(key), "{toml:?}: {err}");
        }
        assert_eq!(error_of("[rooms]\ndedupe_window_secs = 86400\n"), "");
    }

    #[test]
    fn the_drain_grace_must_outlast_the_drain_window() {
        let err = error_of("[gateway]\ndrain_window_ms = 5000\ndrain_grace_ms = 5000\n");
        assert!(err.contains("gateway.drain_grace_ms"), "{err}");
        let cfg = from_toml("[gateway]\ndrain_window_ms = 0\ndrain_grace_ms = 100\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (cfg.gateway.drain_window_ms, cfg.gateway.drain_grace_ms),
            (0, 100)
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn environment_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "sb.toml",
                "[gateway]\nmax_inflight = 7\nrequest_timeout_ms = 9\n",
            )?;
            jail.set_env("SB_GATEWAY__MAX_INFLIGHT", "11");
            let cfg = Config::load(Some(Path::new("sb.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(cfg.gateway.max_inflight, 11);
            assert_eq!(cfg.gateway.request_timeout_ms, 9);
            jail.set_env("SB_GATEWAY__MAX_INFLIGHT", "lots");
            let err = Config::load(Some(Path::new("sb.toml")))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.to_lowercase().contains("gateway.max_inflight"), "{err}");
            Ok(())
        });
    }
}
