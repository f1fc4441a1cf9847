//! Redis key naming. Keys of one room share the hash tag `{room:<t>:<r>}` so
//! a Lua script can touch them together, in Redis Cluster too.

use crate::ids::{GatewayId, RoomId, TenantId, UserId};

/// The keys that hold one room's state.
#[derive(Debug, Clone)]
pub struct RoomKeys {
    /// Hash: max_members, private, created_by, created_at, seq.
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
        }
    }

    /// In the order the Lua scripts expect them as KEYS.
    pub fn all(&self) -> [&str; 7] {
        [
            &self.meta,
            &self.conns,
            &self.users,
            &self.history,
            &self.read,
            &self.delivered,
            &self.reactions,
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
        }
    }
}

/// Sorted set: gateway id → last heartbeat (ms). Watched by the presence
/// service to notice dead gateways.
pub const GATEWAYS: &str = "sb:gateways";

/// Hash: conn id → `<tenant>|<user>`, the connections a gateway holds.
pub fn gateway_conns(gw: &GatewayId) -> String {
    format!("sb:{{gw:{gw}}}:conns")
}

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

/// The member field for a connection in [`RoomKeys::conns`].
pub fn conn_member(gw: &GatewayId, conn: u64) -> String {
    format!("{gw}:{conn}")
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
}
