//! Pushes to a room's members through the one room fan-out helper
//! (`service::fanout`): stored messages with their seq, sent to the gateways
//! the publish script returned, and ephemeral signals (seq 0) that are
//! neither stored nor replayed. A failed push is logged: nobody waits on it.

use serde::Serialize;
use switchboard_proto::bus::{ConnRef, Push};
use switchboard_shared::frames;
use switchboard_shared::ids::{RoomId, TenantId};

use super::Rooms;
use crate::error::LogFailure;
use crate::service::fanout;

impl Rooms {
    /// An ephemeral `{"event", "data"}` push to the room's members. With an
    /// `origin`, that connection does not get it back.
    pub(super) async fn signal<T: Serialize + ?Sized>(
        &self,
        tenant: &TenantId,
        room: &RoomId,
        origin: Option<ConnRef>,
        event: &str,
        data: &T,
    ) {
        let push = Push {
            frame: frames::event(event, data),
            seq: 0,
            origin,
            echo: false,
            close_code: 0,
        };
        fanout::to_room(&self.nats, &self.pool, tenant, room, &push)
            .await
            .log_failure("pushing a signal to a room");
    }
}
