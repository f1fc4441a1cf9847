//! Everything that reaches this gateway over NATS on its one wildcard
//! subscription (`sb.gw.<gateway>.>`): replies to requests and pushes to single
//! connections, routed locally by connection id. Also the request-timeout
//! sweeper that answers requests no worker answered.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use switchboard_proto::bus::{Push, Reply};
use switchboard_shared::error::ErrorCode;
use switchboard_shared::subjects::{GatewayTarget, parse_gateway_subject};
use switchboard_shared::{Shutdown, bus};
use tokio::time::Instant;

use crate::State;
use crate::protocol::{error_frame, ok_frame};

/// Deadlines of in-flight requests, oldest first (the timeout is constant, so
/// insertion order is deadline order).
#[derive(Debug, Default)]
pub struct Timeouts {
    queue: Mutex<VecDeque<(Instant, u64, u32)>>,
}

impl Timeouts {
    pub fn add(&self, deadline: Instant, conn: u64, req: u32) {
        if let Ok(mut q) = self.queue.lock() {
            q.push_back((deadline, conn, req));
        }
    }

    fn expired(&self, now: Instant) -> Vec<(u64, u32)> {
        let Ok(mut q) = self.queue.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while q.front().is_some_and(|(d, _, _)| *d <= now) {
            if let Some((_, c, r)) = q.pop_front() {
                out.push((c, r));
            }
        }
        out
    }
}

/// Answers requests whose deadline passed with a `timeout` error.
pub async fn sweep_timeouts(state: Arc<State>, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (conn, req) in state.timeouts.expired(Instant::now()) {
            let Some(h) = state.registry.get(conn) else {
                continue;
            };
            if let Some(id) = h.finish_request(req) {
                h.send_text(error_frame(
                    Some(&id),
                    ErrorCode::Timeout.as_str(),
                    "no reply from the service in time",
                ));
            }
        }
    }
}

/// Routes messages from the gateway's wildcard subscription until it ends.
pub async fn route(state: Arc<State>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        match parse_gateway_subject(&state.gw, &msg.subject) {
            Some(GatewayTarget::Reply { conn, req }) => on_reply(&state, conn, req, msg),
            Some(GatewayTarget::Push { conn }) => on_push(&state, conn, msg),
            None => tracing::debug!(subject = %msg.subject, "unroutable message"),
        }
    }
}

fn on_reply(state: &State, conn: u64, req: u32, msg: async_nats::Message) {
    let Some(h) = state.registry.get(conn) else {
        return;
    };
    let Some(id) = h.finish_request(req) else {
        return;
    };
    if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
        h.send_text(error_frame(
            Some(&id),
            ErrorCode::ServiceUnavailable.as_str(),
            "no worker is serving this service right now",
        ));
        return;
    }
    let reply: Reply = match bus::decode(&msg.payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "malformed reply");
            h.send_text(error_frame(
                Some(&id),
                ErrorCode::Internal.as_str(),
                "malformed reply from the service",
            ));
            return;
        }
    };
    if !reply.ok {
        let (code, message) = reply.error.map(|e| (e.code, e.message)).unwrap_or_else(|| {
            (
                ErrorCode::Internal.as_str().to_owned(),
                "request failed".to_owned(),
            )
        });
        h.send_text(error_frame(Some(&id), &code, &message));
        return;
    }
    // Detach before the reply (nothing arrives after a leave's reply), attach
    // after it (the reply arrives before the first message of the feed).
    for subject in &reply.detach {
        state.feeds.detach(&h, subject);
    }
    h.send_text(ok_frame(&id, &reply.data));
    for interest in reply.attach {
        state.feeds.attach(&h, interest);
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
