//! Everything that reaches this gateway over NATS on its one wildcard
//! subscription (`sb.gw.<gateway>.>`), routed locally to a connection by id:
//! replies to its requests (answered by [`crate::requests`]) and pushes to
//! that one socket.

use std::sync::Arc;

use futures::StreamExt;
use switchboard_proto::bus::Push;
use switchboard_shared::subjects::{GatewayTarget, parse_gateway_subject};
use switchboard_shared::{Shutdown, bus};

use crate::State;
use crate::requests;

/// Routes messages from the gateway's wildcard subscription until it ends or
/// `stop` fires.
pub async fn route(state: Arc<State>, mut sub: async_nats::Subscriber, stop: Shutdown) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            msg = sub.next() => match msg {
                Some(m) => m,
                None => return,
            },
        };
        match parse_gateway_subject(&state.gw, &msg.subject) {
            Some(GatewayTarget::Reply { conn, req }) => {
                if let Some(h) = state.registry.get(conn) {
                    requests::on_reply(&state, &h, req, msg);
                }
            }
            Some(GatewayTarget::Push { conn }) => on_push(&state, conn, msg),
            None => tracing::debug!(subject = %msg.subject, "unroutable message"),
        }
    }
}

fn on_push(state: &State, conn: u64, msg: async_nats::Message) {
    let Some(h) = state.registry.get(conn) else {
        return;
    };
    match bus::decode::<Push>(&msg.payload) {
        Ok(push) => {
            h.send_text(push.frame);
        }
        Err(e) => tracing::warn!(error = %e, "malformed push"),
    }
}
