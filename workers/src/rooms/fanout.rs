//! Pushes to a room's feed (`sb.room.<tenant>.<room>`): stored messages with
//! their seq, and ephemeral signals (seq 0) that are neither stored nor
//! replayed. A failed publish is logged: nobody waits on a push.

use serde::Serialize;
use switchboard_proto::bus::{ConnRef, Push};
use switchboard_shared::ids::{RoomId, TenantId};
use switchboard_shared::{bus, frames, subjects};

use super::Rooms;
use crate::error::LogFailure;

impl Rooms {
    /// Publishes `push` on the room's feed.
    pub(super) async fn to_room(&self, tenant: &TenantId, room: &RoomId, push: Push) {
        self.nats
            .publish(subjects::room(tenant, room), bus::encode(&push))
            .await
            .log_failure("publishing to a room");
    }

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
        self.to_room(tenant, room, push).await;
    }
}
