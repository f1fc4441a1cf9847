//! Pushes to one connection, on its per-connection subject
//! (`sb.gw.<gateway>.c.<conn>`).

use bytes::Bytes;
use serde::Serialize;
use switchboard_proto::bus::Push;
use switchboard_shared::members::ConnMember;
use switchboard_shared::{bus, frames, subjects};

/// Sends a ready-made client frame to one connection. A failure is logged:
/// the connection's gateway may be gone, and nobody waits on a push.
pub async fn frame_to_conn(nats: &async_nats::Client, to: &ConnMember, frame: Bytes) {
    let push = Push {
        frame,
        ..Push::default()
    };
    if let Err(e) = nats
        .publish(subjects::conn(&to.gw, to.conn), bus::encode(&push))
        .await
    {
        tracing::warn!(error = %e, conn = %to, "could not push to a connection");
    }
}

/// Sends the push `{"event": event, "data": data}` to one connection.
pub async fn event_to_conn<T: Serialize + ?Sized>(
    nats: &async_nats::Client,
    to: &ConnMember,
    event: &str,
    data: &T,
) {
    frame_to_conn(nats, to, frames::event(event, data)).await;
}
