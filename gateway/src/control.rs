//! Control requests to this gateway on `sb.ctl.gw.<gateway>.<cmd>`, and
//! to every gateway on `sb.ctl.gw.all.<cmd>` (`subjects::GatewayCommand`),
//! answered on the request's reply subject:
//!
//! - `conns`: a page of the live connections (`bus.ConnPage`), which the
//!   presence service reads to repair connection events lost in an outage;
//! - `reset`: the cluster declared this gateway dead (it was paused or cut
//!   off longer than `presence.gateway_dead_after_ms`) and forgot its
//!   connections, so every client is closed with 1012 and reconnects to be
//!   registered anew. The reply is sent once every close is under way;
//! - `stats` (admin API): id, address, connections (per app), uptime,
//!   readiness, draining;
//! - `kick` (admin API): close one connection, or every connection of one
//!   user, with close code 4000 and the operator's reason;
//! - `drain` (admin API, only addressed to this gateway, never on `all`):
//!   answer, then drain exactly as on SIGTERM (unready, 1012 spread over
//!   `gateway.drain_window_ms`) and stop: the process exits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use switchboard_proto::bus::{
    ConnEntry, ConnPage, ConnPageRequest, DrainReply, GatewayStats, KickReply, KickRequest,
};
use switchboard_shared::subjects::{ControlScope, GatewayCommand, parse_gateway_control_scoped};
use switchboard_shared::{Shutdown, bus};

use crate::State;
use crate::registry::{CloseReason, elapsed_ms};

/// Connections per page when the request does not say.
const DEFAULT_PAGE: usize = 1_000;
/// Most connections per page.
const MAX_PAGE: usize = 10_000;

/// Serves control requests from `own` (this gateway's subjects) and `all`
/// (every gateway's) until they end or `stop` fires. `addr` is the
/// listener's address, reported by `stats`.
pub async fn serve(
    state: Arc<State>,
    own: async_nats::Subscriber,
    all: async_nats::Subscriber,
    addr: Option<SocketAddr>,
    stop: Shutdown,
) {
    let mut subs = futures::stream::select(own, all);
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            msg = subs.next() => match msg {
                Some(m) => m,
                None => return,
            },
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let mut drain = false;
        let answer = match parse_gateway_control_scoped(&state.gw, &msg.subject) {
            Some((GatewayCommand::Conns, _)) => {
                match bus::decode::<ConnPageRequest>(&msg.payload) {
                    Ok(req) => bus::encode(&page(&state, &req)),
                    Err(e) => {
                        tracing::warn!(error = %e, "dropped a malformed connection page request");
                        continue;
                    }
                }
            }
            Some((GatewayCommand::Reset, ControlScope::One)) => {
                reset(&state);
                bytes::Bytes::new()
            }
            Some((GatewayCommand::Stats, _)) => bus::encode(&stats(&state, addr)),
            Some((GatewayCommand::Kick, _)) => match bus::decode::<KickRequest>(&msg.payload) {
                Ok(req) => bus::encode(&kick(&state, &req)),
                Err(e) => {
                    tracing::warn!(error = %e, "dropped a malformed kick request");
                    continue;
                }
            },
            Some((GatewayCommand::Drain, ControlScope::One)) => {
                drain = true;
                bus::encode(&DrainReply {
                    gateway: state.gw.to_string(),
                    connections: state.registry.len() as u64,
                    drain_window_ms: state.cfg.gateway.drain_window_ms,
                })
            }
            // Resetting or draining every gateway at once is never obeyed.
            Some((GatewayCommand::Reset | GatewayCommand::Drain, ControlScope::All)) | None => {
                continue;
            }
        };
        if let Err(e) = state.nats.publish(reply, answer).await {
            tracing::warn!(error = %e, "answering a control request failed");
        }
        if drain {
            tracing::warn!(gateway = %state.gw, "drain requested by an operator");
            // Bounded: the answer should leave before the drain begins.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(500), state.nats.flush())
                .await;
            state.shutdown.cancel();
        }
    }
}

fn stats(state: &State, addr: Option<SocketAddr>) -> GatewayStats {
    let all = state.registry.all();
    let mut apps: HashMap<String, u64> = HashMap::new();
    for h in &all {
        *apps.entry(h.tenant.to_string()).or_default() += 1;
    }
    GatewayStats {
        gateway: state.gw.to_string(),
        address: addr.map(|a| a.to_string()).unwrap_or_default(),
        connections: all.len() as u64,
        uptime_ms: elapsed_ms(state.started),
        draining: state.draining.load(Ordering::Relaxed) || state.shutdown.is_cancelled(),
        ready: state.is_ready() && !state.shutdown.is_cancelled(),
        app_connections: apps,
    }
}

/// Closes the connections `req` names with the operator's reason.
fn kick(state: &State, req: &KickRequest) -> KickReply {
    let reason = CloseReason::operator(&req.reason);
    let targets = if req.conn != 0 {
        state.registry.get(req.conn).into_iter().collect()
    } else {
        state
            .registry
            .all()
            .into_iter()
            .filter(|h| h.tenant.as_str() == req.tenant && h.user.as_str() == req.user)
            .collect::<Vec<_>>()
    };
    let mut closed = 0;
    for h in targets {
        if !h.cancel.is_cancelled() {
            closed += 1;
        }
        h.kill(reason.clone());
    }
    if closed > 0 {
        tracing::info!(gateway = %state.gw, closed, reason = %reason.reason, "connections closed by an operator");
    }
    KickReply {
        gateway: state.gw.to_string(),
        closed,
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
