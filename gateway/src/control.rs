//! Control requests to this gateway on `sb.ctl.gw.<gateway>.<cmd>`
//! (`subjects::GatewayCommand`), answered on the request's reply subject:
//!
//! - `conns`: a page of the live connections (`bus.ConnPage`), which the
//!   presence service reads to repair connection events lost in an outage;
//! - `reset`: the cluster declared this gateway dead (it was paused or cut
//!   off longer than `presence.gateway_dead_after_ms`) and forgot its
//!   connections, so every client is closed with 1012 and reconnects to be
//!   registered anew. The reply is sent once every close is under way.

use std::sync::Arc;

use switchboard_proto::bus::{ConnEntry, ConnPage, ConnPageRequest};
use switchboard_shared::subjects::{GatewayCommand, parse_gateway_control};
use switchboard_shared::{Shutdown, bus};

use crate::State;
use crate::registry::CloseReason;
use crate::router::next_message;

/// Connections per page when the request does not say.
const DEFAULT_PAGE: usize = 1_000;
/// Most connections per page.
const MAX_PAGE: usize = 10_000;

/// Serves control requests from `sub` until it ends or `stop` fires.
pub async fn serve(state: Arc<State>, mut sub: async_nats::Subscriber, stop: Shutdown) {
    while let Some(msg) = next_message(&mut sub, &stop).await {
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let answer = match parse_gateway_control(&state.gw, &msg.subject) {
            Some(GatewayCommand::Conns) => match bus::decode::<ConnPageRequest>(&msg.payload) {
                Ok(req) => bus::encode(&page(&state, &req)),
                Err(e) => {
                    tracing::warn!(error = %e, "dropped a malformed connection page request");
                    continue;
                }
            },
            Some(GatewayCommand::Reset) => {
                reset(&state);
                bytes::Bytes::new()
            }
            None => continue,
        };
        if let Err(e) = state.nats.publish(reply, answer).await {
            tracing::warn!(error = %e, "answering a control request failed");
        }
    }
}

fn page(state: &State, req: &ConnPageRequest) -> ConnPage {
    let limit = match req.limit as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let p = state.registry.page(req.after, limit);
    ConnPage {
        conns: p
            .conns
            .iter()
            .map(|h| ConnEntry {
                conn: h.id,
                tenant: h.tenant.to_string(),
                user: h.user.to_string(),
            })
            .collect(),
        high_water: p.high_water,
        more: p.more,
    }
}

/// Closes every client with 1012; each close publishes its `DISCONNECTED`
/// as usual, and reconnecting clients are announced afresh.
fn reset(state: &State) {
    let all = state.registry.all();
    tracing::warn!(
        gateway = %state.gw,
        connections = all.len(),
        "this gateway was declared dead: closing every connection so clients reconnect"
    );
    for h in all {
        h.kill(CloseReason::new(1012, "server restarting"));
    }
}
