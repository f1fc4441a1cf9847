//! The connection-gone marker (`{conn:<gw>:<conn>}:gone`), one per closed
//! connection, shared by every service. The `DISCONNECTED` handler sets it
//! before cleaning up; anything that registers a connection (a `CONNECTED`
//! event, a join, a ticket) writes first and checks it after, undoing itself
//! when set. One of the two always sees the other, so nothing registered for
//! a closed connection survives.

use deadpool_redis::redis;
use switchboard_shared::ids::GatewayId;
use switchboard_shared::keys;
use switchboard_shared::members::ConnMember;

use crate::error::ServiceError;

/// Adds "this connection is gone" to `pipe`.
pub fn mark_gone<'a>(
    pipe: &'a mut redis::Pipeline,
    gw: &GatewayId,
    conn: u64,
) -> &'a mut redis::Pipeline {
    pipe.cmd("SET")
        .arg(keys::conn_gone(gw, conn))
        .arg(1)
        .arg("EX")
        .arg(keys::GONE_TTL_SECS)
        .ignore()
}

/// Whether the connection's disconnect has been processed.
pub async fn is_gone(
    r: &mut deadpool_redis::Connection,
    gw: &GatewayId,
    conn: u64,
) -> Result<bool, ServiceError> {
    Ok(redis::cmd("EXISTS")
        .arg(keys::conn_gone(gw, conn))
        .query_async(r)
        .await?)
}

/// The connections named by the fields of hash `key` (a user's connections
/// as one service sees them). A malformed field is logged and skipped.
pub async fn hash_members(
    r: &mut deadpool_redis::Connection,
    key: &str,
) -> Result<Vec<ConnMember>, ServiceError> {
    let fields: Vec<String> = redis::cmd("HKEYS").arg(key).query_async(r).await?;
    Ok(fields
        .iter()
        .filter_map(|m| {
            let parsed = ConnMember::parse(m);
            if parsed.is_none() {
                tracing::warn!(key, value = %m, "skipping a malformed connection entry");
            }
            parsed
        })
        .collect())
}
