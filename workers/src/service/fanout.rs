//! Pushes to a room's members: one message to each gateway that holds
//! members of the room, on `sb.gw.<gateway>.r.<tenant>.<room>`, which the
//! gateway receives on its one wildcard subscription. The room's gateways
//! are the fields of its `gateways` hash (`RoomKeys::gateways`), kept
//! exactly by the rooms membership scripts. A big room costs one bus message
//! per gateway holding members, not one per member; a gateway needs no
//! subscription per room.
//!
//! Sequenced pushes (room messages) are sent to the gateways the publish
//! script read atomically with the seq; a gateway that gains its first
//! member afterwards catches up from history. Unsequenced pushes (typing,
//! cursors, receipts, reactions, member and presence events) read the hash
//! here: a member joining at that very moment may miss one, as they are
//! ephemeral.

use deadpool_redis::redis;
use switchboard_proto::bus::Push;
use switchboard_shared::ids::{GatewayId, RoomId, TenantId};
use switchboard_shared::keys::RoomKeys;
use switchboard_shared::redis::Pool;
use switchboard_shared::{bus, subjects};

use crate::error::ServiceError;

/// The field names of a room's `gateways` hash. Only the membership
/// scripts write them, from validated ids; anything else is skipped.
pub fn gateways(names: Vec<String>) -> Vec<GatewayId> {
    names
        .into_iter()
        .filter_map(|g| match GatewayId::parse(&g) {
            Ok(g) => Some(g),
            Err(_) => {
                tracing::warn!(value = %g, "skipping a malformed gateway of a room");
                None
            }
        })
        .collect()
}

/// The gateways holding members of `room` now.
pub async fn room_gateways(
    pool: &Pool,
    tenant: &TenantId,
    room: &RoomId,
) -> Result<Vec<GatewayId>, ServiceError> {
    let names: Vec<String> = redis::cmd("HKEYS")
        .arg(RoomKeys::new(tenant, room).gateways)
        .query_async(&mut pool.get().await?)
        .await?;
    Ok(gateways(names))
}

/// Sends `push` to each of `gateways` for `room`. Failures are logged:
/// nobody waits on a push.
pub async fn to_gateways(
    nats: &async_nats::Client,
    gateways: &[GatewayId],
    tenant: &TenantId,
    room: &RoomId,
    push: &Push,
) {
    if gateways.is_empty() {
        return;
    }
    let payload = bus::encode(push);
    for gw in gateways {
        if let Err(e) = nats
            .publish(subjects::room_push(gw, tenant, room), payload.clone())
            .await
        {
            tracing::warn!(error = %e, gateway = %gw, %room, "could not push to a room's gateway");
        }
    }
}

/// Sends `push` to every gateway holding members of `room` now.
pub async fn to_room(
    nats: &async_nats::Client,
    pool: &Pool,
    tenant: &TenantId,
    room: &RoomId,
    push: &Push,
) -> Result<(), ServiceError> {
    let gws = room_gateways(pool, tenant, room).await?;
    to_gateways(nats, &gws, tenant, room, push).await;
    Ok(())
}
