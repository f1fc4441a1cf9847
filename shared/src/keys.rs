//! Redis key naming. Keys of one room share the hash tag `{room:<t>:<r>}` so
//! a Lua script can touch them together, in Redis Cluster too.

use crate::ids::{CallId, GatewayId, RoomId, TenantId, UserId};

/// The keys that hold one room's state.
#[derive(Debug, Clone)]
pub struct RoomKeys {
    /// Hash: max_members, private, created_by, created_at, seq, and one
    /// [`RoomKeys::allow_field`] per user a private room admits by name.
    pub meta: String,
    /// Hash: `<gateway>:<conn>` → user id, one field per member connection.
    pub conns: String,
    /// Hash: user id → number of that user's connections in the room.
    pub users: String,
    /// Stream of messages, entry ids `<seq>-0`, fields `t` (ms) and `m` (JSON).
    pub history: String,
    /// Hash: user → last read seq.
    pub read: String,
    /// Hash: user → last delivered seq.
    pub delivered: String,
    /// Hash: `<seq>|<emoji>|<user>` → 1, reactions on messages.
    pub reactions: String,
    /// Hash: [`crate::members::PublishedId`] (`<msg_id>|<user>`) →
    /// `<seq>:<ts_ms>`, the client message ids published in the dedupe
    /// window and what they were stored as.
    pub msg_ids: String,
    /// Sorted set: the same fields by publish time (ms). The publish script
    /// drops the entries older than the window from both keys, a bounded
    /// number per call, so they hold about one window of ids.
    pub msg_id_times: String,
    /// Hash: gateway id → number of that gateway's connections in the room,
    /// kept by the scripts that add and remove members: the gateways a
    /// room's pushes are addressed to.
    pub gateways: String,
}

impl RoomKeys {
    pub fn new(tenant: &TenantId, room: &RoomId) -> Self {
        let tag = format!("sb:{{room:{tenant}:{room}}}");
        Self {
            meta: format!("{tag}:meta"),
            conns: format!("{tag}:conns"),
            users: format!("{tag}:users"),
            history: format!("{tag}:hist"),
            read: format!("{tag}:read"),
            delivered: format!("{tag}:delivered"),
            reactions: format!("{tag}:reactions"),
            msg_ids: format!("{tag}:msgids"),
            msg_id_times: format!("{tag}:msgidt"),
            gateways: format!("{tag}:gws"),
        }
    }

    /// The `meta` field that lets `user` into a private room without a grant
    /// (`allow:<user>`; the join script builds the same name).
    pub fn allow_field(user: &UserId) -> String {
        format!("allow:{user}")
    }

    /// In the order the Lua scripts expect them as KEYS.
    pub fn all(&self) -> [&str; 10] {
        [
            &self.meta,
            &self.conns,
            &self.users,
            &self.history,
            &self.read,
            &self.delivered,
            &self.reactions,
            &self.msg_ids,
            &self.msg_id_times,
            &self.gateways,
        ]
    }
}

/// Keys of one user's state, under the hash tag `{user:<t>:<u>}`.
#[derive(Debug, Clone)]
pub struct UserKeys {
    /// Hash: `<gateway>:<conn>` → connected-at ms; the user's live
    /// connections as the presence service sees them.
    pub presence_conns: String,
    /// Hash: status, text, last_seen, ver.
    pub presence: String,
    /// Set of room ids the user is a member of (maintained by rooms).
    pub rooms: String,
    /// Hash: `<gateway>:<conn>` → ms; live connections as the notifications
    /// service sees them.
    pub notif_conns: String,
    /// Hash: notification id → JSON.
    pub notif_data: String,
    /// Sorted set: notification id by creation order.
    pub notif_order: String,
    /// Sorted set: notification id by expiry (ms).
    pub notif_expiry: String,
    /// Set of unread notification ids.
    pub notif_unread: String,
    /// Sorted set: the rooms this user created that may still exist
    /// ([`crate::members::CreatedRoom`]), by when to check next (ms): the
    /// `rooms_created_per_user` quota.
    pub rooms_created: String,
}

impl UserKeys {
    pub fn new(tenant: &TenantId, user: &UserId) -> Self {
        let tag = format!("sb:{{user:{tenant}:{}}}", user.encoded());
        Self {
            presence_conns: format!("{tag}:pconns"),
            presence: format!("{tag}:presence"),
            rooms: format!("{tag}:rooms"),
            notif_conns: format!("{tag}:nconns"),
            notif_data: format!("{tag}:ndata"),
            notif_order: format!("{tag}:norder"),
            notif_expiry: format!("{tag}:nexpiry"),
            notif_unread: format!("{tag}:nunread"),
            rooms_created: format!("{tag}:created"),
        }
    }
}

/// Keys of one app's quota counts, under the hash tag `{app:<t>}`
/// (`switchboard_shared::quotas`).
#[derive(Debug, Clone)]
pub struct AppKeys {
    /// Sorted set: the app's rooms that may still exist
    /// ([`crate::members::CreatedRoom`]), by when to check next (ms).
    pub rooms: String,
    /// Set: `<gateway>:<conn>` of the app's open connections (kept by the
    /// presence service).
    pub conns: String,
    /// Sorted set: expiry bucket (minute number) → the bucket's end (ms).
    pub notif_buckets: String,
    /// Hash: expiry bucket → notifications stored that expire in it; and
    /// [`AppKeys::NOTIF_TOTAL`], their sum over the buckets not yet over.
    pub notif_counts: String,
}

impl AppKeys {
    /// The field of `notif_counts` holding the total.
    pub const NOTIF_TOTAL: &'static str = "total";

    pub fn new(tenant: &TenantId) -> Self {
        let tag = format!("sb:{{app:{tenant}}}");
        Self {
            rooms: format!("{tag}:rooms"),
            conns: format!("{tag}:conns"),
            notif_buckets: format!("{tag}:nbuckets"),
            notif_counts: format!("{tag}:ncounts"),
        }
    }
}

/// Set of app ids whose live rooms are counted (`AppKeys::rooms`), for the
/// rooms service's sweep of rooms that expired.
pub const QUOTA_ROOM_APPS: &str = "sb:quota:room_apps";

/// Sorted set: gateway id → last heartbeat (ms). Watched by the presence
/// service to notice dead gateways.
pub const GATEWAYS: &str = "sb:gateways";

/// Hash: conn id → `<tenant>|<user>`, the connections a gateway holds.
pub fn gateway_conns(gw: &GatewayId) -> String {
    format!("sb:{{gw:{gw}}}:conns")
}

/// Hash under the gateway's hash tag: `n` and `sum`, the count and digest
/// (`conn_events::digest_term`) of the connections in [`gateway_conns`],
/// kept by the same script; plus what the last heartbeat disagreed by
/// (`delta`, `mismatches`) and when a repair last ran (`repaired_at`).
pub fn gateway_digest(gw: &GatewayId) -> String {
    format!("sb:{{gw:{gw}}}:digest")
}

/// Set while a gateway declared dead has not yet been told to reset.
pub fn gateway_tombstone(gw: &GatewayId) -> String {
    format!("sb:{{gw:{gw}}}:dead")
}

/// How long a dead gateway's tombstone is kept. A gateway that wakes up
/// later is still repaired, by the connection digest.
pub const TOMBSTONE_TTL_SECS: u64 = 24 * 3600;

/// Set of user ids (encoded) that have connected to an app, for app-wide
/// notifications.
pub fn tenant_users(tenant: &TenantId) -> String {
    format!("sb:{{tenant:{tenant}}}:users")
}

/// Sorted set of `<tenant>|<room>|<user>` by typing expiry (ms).
pub const TYPING: &str = "sb:typing";

/// Set of `<tenant>:<room>` a connection is in, for disconnect cleanup.
pub fn conn_rooms(gw: &GatewayId, conn: u64) -> String {
    format!("sb:{{conn:{gw}:{conn}}}:rooms")
}

/// Set once a connection's disconnect has been processed, so a join racing
/// with the disconnect can undo itself.
pub fn conn_gone(gw: &GatewayId, conn: u64) -> String {
    format!("sb:{{conn:{gw}:{conn}}}:gone")
}

/// How long a connection's "gone" marker outlives its disconnect: long enough
/// for any `CONNECTED` event of that connection still in flight.
pub const GONE_TTL_SECS: u64 = 600;

/// Keys of one call, under the hash tag `{call:<t>:<id>}`.
pub fn call(tenant: &TenantId, call: &CallId) -> String {
    format!("sb:{{call:{tenant}:{call}}}")
}

/// String: the call a user is in (their "busy" marker).
pub fn user_call(tenant: &TenantId, user: &UserId) -> String {
    format!("sb:{{user:{tenant}:{}}}:call", user.encoded())
}

/// List: a user's call history (newest first).
pub fn user_calls(tenant: &TenantId, user: &UserId) -> String {
    format!("sb:{{user:{tenant}:{}}}:calls", user.encoded())
}

/// String: the call a connection speaks for, so its disconnect is noticed.
pub fn conn_call(gw: &GatewayId, conn: u64) -> String {
    format!("sb:{{conn:{gw}:{conn}}}:call")
}

/// Sorted set of [`crate::members::CallEntry`] by ring deadline (ms).
pub const CALLS_RINGING: &str = "sb:calls:ringing";

/// Sorted set of [`crate::members::CallPartyEntry`] by reconnect-grace
/// deadline (ms): the parties that dropped out of an active call.
pub const CALLS_GRACE: &str = "sb:calls:grace";

/// Set of app ids with a matchmaking queue, for the matching passes.
pub const MATCHMAKING_TENANTS: &str = "sb:{mm}:tenants";

/// The keys of one app's matchmaking queue, under the hash tag `{mm:<t>}`.
#[derive(Debug, Clone)]
pub struct MatchmakingKeys {
    /// Sorted set: ticket id by enqueue time.
    pub queue: String,
    /// Hash: ticket id → ticket JSON.
    pub tickets: String,
    /// Hash: ticket id → [`crate::members::TicketOwner`].
    pub owners: String,
    /// Hash: user id → ticket id (one ticket per user).
    pub users: String,
    /// Sorted set: ticket id by expiry (ms).
    pub expiry: String,
    /// Hash: match-rate statistics.
    pub stats: String,
    /// Hash: queue metadata.
    pub meta: String,
    /// String: set while one replica sends this app's position updates.
    pub status_lease: String,
}

impl MatchmakingKeys {
    pub fn new(tenant: &TenantId) -> Self {
        let tag = format!("sb:{{mm:{tenant}}}");
        Self {
            queue: format!("{tag}:queue"),
            tickets: format!("{tag}:tickets"),
            owners: format!("{tag}:owners"),
            users: format!("{tag}:users"),
            expiry: format!("{tag}:expiry"),
            stats: format!("{tag}:stats"),
            meta: format!("{tag}:meta"),
            status_lease: format!("{tag}:status_lease"),
        }
    }

    /// In the order the Lua scripts expect them as KEYS.
    pub fn all(&self) -> [&str; 7] {
        [
            &self.queue,
            &self.tickets,
            &self.owners,
            &self.users,
            &self.expiry,
            &self.stats,
            &self.meta,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_keys_share_one_hash_tag() {
        let t = TenantId::parse("app").unwrap_or_else(|e| panic!("{e}"));
        let r = RoomId::parse("r1").unwrap_or_else(|e| panic!("{e}"));
        let k = RoomKeys::new(&t, &r);
        for key in k.all() {
            assert!(key.starts_with("sb:{room:app:r1}:"), "{key}");
        }
    }

    #[test]
    fn allow_fields_name_the_user_verbatim() {
        // The join script looks up `'allow:' .. <user id>`: the field must be
        // the raw id, whatever separators it holds.
        let u = UserId::parse("a:b|c{x}@example.com").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(RoomKeys::allow_field(&u), "allow:a:b|c{x}@example.com");
    }

    fn hash_tag(key: &str) -> &str {
        let open = key
            .find('{')
            .unwrap_or_else(|| panic!("{key}: no hash tag"));
        let close = key[open..]
            .find('}')
            .unwrap_or_else(|| panic!("{key}: unclosed hash tag"));
        &key[open..open + close + 1]
    }

    #[test]
    fn every_key_of_one_owner_shares_one_hash_tag() {
        let t = TenantId::parse("app").unwrap_or_else(|e| panic!("{e}"));
        let u = UserId::parse("a.b>*{x}@example.com").unwrap_or_else(|e| panic!("{e}"));
        let g = GatewayId::parse("gw-1").unwrap_or_else(|e| panic!("{e}"));
        let mm = MatchmakingKeys::new(&t);
        for key in mm.all().iter().chain([&mm.status_lease.as_str()]) {
            assert_eq!(hash_tag(key), "{mm:app}", "{key}");
        }
        let uk = UserKeys::new(&t, &u);
        let user_keys = [
            uk.presence_conns.as_str(),
            &uk.presence,
            &uk.rooms,
            &uk.notif_conns,
            &uk.notif_data,
            &uk.notif_order,
            &uk.notif_expiry,
            &uk.notif_unread,
            &uk.rooms_created,
            &user_call(&t, &u),
            &user_calls(&t, &u),
        ];
        let tag = hash_tag(user_keys[0]).to_owned();
        for key in user_keys {
            assert_eq!(hash_tag(key), tag, "{key}");
            // The hostile user id is encoded: no second tag, no wildcard.
            assert_eq!(key.matches('{').count(), 1, "{key}");
            assert!(!key.contains(' ') && !key.contains('*'), "{key}");
        }
        for key in [conn_rooms(&g, 9), conn_gone(&g, 9), conn_call(&g, 9)] {
            assert_eq!(hash_tag(&key), "{conn:gw-1:9}", "{key}");
        }
        let ak = AppKeys::new(&t);
        for key in [&ak.rooms, &ak.conns, &ak.notif_buckets, &ak.notif_counts] {
            assert_eq!(hash_tag(key), "{app:app}", "{key}");
        }
        let c = CallId::parse("c1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hash_tag(&call(&t, &c)), "{call:app:c1}");
    }
}
