//! Redis key naming. Keys of one room share the hash tag `{room:<t>:<r>}` so
//! a Lua script can touch them together, in Redis Cluster too.

use crate::ids::{GatewayId, RoomId, TenantId};

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
}

impl RoomKeys {
    pub fn new(tenant: &TenantId, room: &RoomId) -> Self {
        let tag = format!("sb:{{room:{tenant}:{room}}}");
        Self {
            meta: format!("{tag}:meta"),
            conns: format!("{tag}:conns"),
            users: format!("{tag}:users"),
            history: format!("{tag}:hist"),
        }
    }

    /// In the order the Lua scripts expect them as KEYS.
    pub fn all(&self) -> [&str; 4] {
        [&self.meta, &self.conns, &self.users, &self.history]
    }
}

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
