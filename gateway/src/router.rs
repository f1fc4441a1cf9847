//! Everything that reaches this gateway over NATS on its one wildcard
//! subscription (`sb.gw.<gateway>.>`), routed locally to a connection by id:
//! replies to its requests (answered by [`crate::requests`]), pushes to
//! that one socket, and pushes for a room with members here (handed to the
//! room's feed, [`crate::feeds`]).

use std::sync::Arc;

use futures::StreamExt;
use switchboard_proto::bus::Push;
use switchboard_shared::subjects::{self, GatewayTarget, parse_gateway_subject};
use switchboard_shared::{Shutdown, bus};

use crate::State;
use crate::registry::CloseReason;
use crate::requests;

/// Routes messages from the gateway's wildcard subscription until it ends or
/// `stop` fires.
pub async fn route(state: Arc<State>, mut sub: async_nats::Subscriber, stop: Shutdown) {
    while let Some(msg) = next_message(&mut sub, &stop).await {
        match parse_gateway_subject(&state.gw, &msg.subject) {
            Some(GatewayTarget::Reply { conn, req }) => {
                if let Some(h) = state.registry.get(conn) {
                    requests::on_reply(&state, &h, req, msg);
                }
            }
            Some(GatewayTarget::Push { conn }) => on_push(&state, conn, msg),
            None => match subjects::parse_room_push(&state.gw, &msg.subject) {
                Some((tenant, room)) => on_room_push(&state, &subjects::room(&tenant, &room), msg),
                None => tracing::debug!(subject = %msg.subject, "unroutable message"),
            },
        }
    }
}

/// The next message of `sub`; `None` once it ends or `stop` fires.
pub(crate) async fn next_message(
    sub: &mut async_nats::Subscriber,
    stop: &Shutdown,
) -> Option<async_nats::Message> {
    tokio::select! {
        _ = stop.cancelled() => None,
        msg = sub.next() => msg,
    }
}

/// The close a service asked for. Reasons are fixed per code: services
/// cannot put text in a close frame.
fn close_reason(code: u32) -> CloseReason {
    match code {
        1008 => CloseReason::new(1008, "too many connections for this user"),
        1012 => CloseReason::new(1012, "server restarting"),
        _ => CloseReason::new(1000, "closed by the server"),
    }
}

fn on_push(state: &State, conn: u64, msg: async_nats::Message) {
    let Some(h) = state.registry.get(conn) else {
        return;
    };
    match bus::decode::<Push>(&msg.payload) {
        Ok(push) => {
            if !push.frame.is_empty() {
                h.send_text(push.frame);
            }
            if push.close_code != 0 {
                h.kill(close_reason(push.close_code));
            }
        }
        Err(e) => tracing::warn!(error = %e, "malformed push"),
    }
}

/// A room push addressed to this gateway, for the feed named `feed`.
fn on_room_push(state: &State, feed: &str, msg: async_nats::Message) {
    match bus::decode::<Push>(&msg.payload) {
        Ok(push) => state.feeds.on_log_push(feed, push),
        Err(e) => tracing::warn!(error = %e, feed, "malformed room push"),
    }
}
