//! The life of a client request, from the frame that starts it to the one
//! reply that ends it:
//! - each connection's in-flight table ([`Inflight`], at most `max_inflight`);
//! - the bus envelope (`bus.Request` to `sb.svc.<service>.<op>`, with the
//!   reply subject `sb.gw.<gateway>.c.<conn>.<req>` and a fresh `traceparent`);
//! - the worker's reply turned into the client's frame, with its feed
//!   `detach` (before) and `attach` (after) directives;
//! - the per-connection quotas the gateway enforces: signal rooms (checked
//!   before a typing or cursor request is sent) and presence subscriptions
//!   (checked before a reply's `LATEST` feeds are attached: a reply that
//!   would pass the quota becomes `limit_exceeded`, and nothing attaches);
//! - the gateway-wide deadline queue and the sweeper that answers `timeout`
//!   for requests no worker answered.
//!
//! Invariant: every request that was registered gets exactly one reply frame;
//! whoever takes it out of the table (reply, no responders, bus failure,
//! timeout) is the one that answers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use switchboard_proto::bus::{ConnRef, FeedMode, Interest, Reply, Request};
use switchboard_shared::error::{ClientError, ErrorCode};
use switchboard_shared::quotas::{self, Quota};
use switchboard_shared::{Shutdown, bus, subjects};
use tokio::time::Instant;

use crate::State;
use crate::limits::{Limited, Verdict};
use crate::protocol::{ClientRequest, error_frame, ok_frame};
use crate::registry::{CloseReason, ConnHandle};

/// One in-flight request: the client's id (raw JSON) awaiting a reply.
#[derive(Debug)]
struct Pending {
    id: Box<str>,
}

/// The requests of one connection that still await their reply.
#[derive(Debug, Default)]
pub struct Inflight {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next: u32,
    pending: HashMap<u32, Pending>,
    /// The connection is closing: no new request may start.
    closed: bool,
}

/// Why a request could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_inflight` requests are already waiting.
    TooMany,
    /// The connection is closing (drain).
    Closing,
}

impl Inflight {
    /// Registers a request.
    pub fn begin(&self, id: &str, max: usize) -> Result<u32, Refusal> {
        let Ok(mut t) = self.table.lock() else {
            return Err(Refusal::TooMany);
        };
        if t.closed {
            return Err(Refusal::Closing);
        }
        if t.pending.len() >= max {
            return Err(Refusal::TooMany);
        }
        loop {
            t.next = t.next.wrapping_add(1);
            let n = t.next;
            if let std::collections::hash_map::Entry::Vacant(e) = t.pending.entry(n) {
                e.insert(Pending { id: id.into() });
                return Ok(n);
            }
        }
    }

    /// Takes a request's client id once its reply (or timeout) arrives;
    /// `None` if it was already answered.
    pub fn finish(&self, req: u32) -> Option<Box<str>> {
        self.finish_with(req, |id| id)
    }

    /// Takes a request out of the table and runs `answer` with its client id
    /// before anyone can see the table without it: whoever finds the table
    /// empty knows every reply has been queued. `None` if it was already
    /// answered.
    pub fn finish_with<R>(&self, req: u32, answer: impl FnOnce(Box<str>) -> R) -> Option<R> {
        let mut t = self.table.lock().ok()?;
        let p = t.pending.remove(&req)?;
        Some(answer(p.id))
    }

    /// Refuses new requests from now on (the ones in flight still finish).
    pub fn close(&self) {
        if let Ok(mut t) = self.table.lock() {
            t.closed = true;
        }
    }

    pub fn len(&self) -> usize {
        self.table.lock().map(|t| t.pending.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

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

/// Registers `req` and publishes it to its service. Returns false when the
/// connection is to end (its queue overflowed while answering).
pub async fn forward(state: &State, h: &ConnHandle, req: ClientRequest<'_>) -> bool {
    let cfg = &state.cfg.gateway;
    let now = switchboard_shared::now_ms();
    match state.limits.check_request(
        h.tenant.as_str(),
        h.user.as_str(),
        req.service,
        req.op,
        &h.strikes,
        now,
    ) {
        Verdict::Allow => {}
        Verdict::Refuse(l) => return h.send_text(rate_limited_frame(req.id.get(), l)),
        Verdict::Close(l) => {
            h.send_text(rate_limited_frame(req.id.get(), l));
            h.kill(CloseReason::new(1008, "rate limit exceeded"));
            state.limits.bench(h.tenant.as_str(), h.user.as_str(), now);
            return false;
        }
    }
    if let Some(touch) = quotas::signal_touch(req.service, req.op, req.data) {
        let max = state
            .cfg
            .quotas
            .limit(h.tenant.as_str(), Quota::SignalRoomsPerConnection);
        let window = state.cfg.rooms.typing_ttl_ms;
        if !h.signal(&touch.room, touch.active, now, window, max) {
            let e = ClientError::limit_exceeded(
                Quota::SignalRoomsPerConnection,
                max,
                "this connection signals in too many rooms at once",
            );
            return h.send_text(error_object_frame(req.id.get(), &e.to_json()));
        }
    }
    if !state.bus_up() {
        return h.send_text(error_frame(
            Some(req.id.get()),
            ErrorCode::Unavailable.as_str(),
            "the message bus is unavailable; retry shortly",
        ));
    }
    let seq = match h.requests.begin(req.id.get(), cfg.max_inflight) {
        Ok(seq) => seq,
        Err(Refusal::TooMany) => {
            return h.send_text(error_frame(
                Some(req.id.get()),
                ErrorCode::TooManyRequests.as_str(),
                "too many requests in flight on this connection",
            ));
        }
        Err(Refusal::Closing) => {
            return h.send_text(error_frame(
                Some(req.id.get()),
                ErrorCode::ServiceUnavailable.as_str(),
                "the server is restarting: reconnect and send it again",
            ));
        }
    };
    state.timeouts.add(
        Instant::now() + Duration::from_millis(cfg.request_timeout_ms),
        h.id,
        seq,
    );
    let env = Request {
        conn: Some(ConnRef {
            gateway: state.gw.to_string(),
            conn: h.id,
        }),
        tenant: h.tenant.to_string(),
        user: h.user.to_string(),
        op: req.op.to_owned(),
        payload: Bytes::copy_from_slice(req.data),
        grants: h.grants.clone(),
        traceparent: traceparent(),
        request_id: seq,
    };
    let subject = subjects::service_op(req.service, req.op);
    let reply = subjects::conn_reply(&state.gw, h.id, seq);
    if let Err(e) = state
        .nats
        .publish_with_reply(subject, reply, bus::encode(&env))
        .await
    {
        tracing::warn!(error = %e, "could not publish request");
        if let Some(queued) = h.requests.finish_with(seq, |id| {
            h.send_text(error_frame(
                Some(&id),
                ErrorCode::Unavailable.as_str(),
                "the message bus is unavailable; retry shortly",
            ))
        }) {
            return queued;
        }
    }
    true
}

/// `rate_limited` with the time after which the same request would pass.
fn rate_limited_frame(id: &str, l: Limited) -> Bytes {
    let retry_after_ms = l.retry_after.as_millis().max(1) as u64;
    let mut f = Vec::with_capacity(160);
    f.extend_from_slice(b"{\"id\":");
    f.extend_from_slice(id.as_bytes());
    f.extend_from_slice(
        format!(
            ",\"ok\":false,\"error\":{{\"code\":\"rate_limited\",\"message\":\"too many requests: retry after {retry_after_ms} ms\",\"retry_after_ms\":{retry_after_ms}}}}}"
        )
        .as_bytes(),
    );
    Bytes::from(f)
}

/// A fresh W3C `traceparent` (version 00, sampled) for a request that starts
/// at this gateway.
fn traceparent() -> String {
    let trace: u128 = rand::random();
    let span: u64 = rand::random();
    format!("00-{:032x}-{:016x}-01", trace.max(1), span.max(1))
}

/// Answers request `req` of `h` with the worker's reply in `msg` (or NATS's
/// "no responders" status).
pub fn on_reply(state: &State, h: &Arc<ConnHandle>, req: u32, msg: async_nats::Message) {
    let attach = h
        .requests
        .finish_with(req, |id| answer(state, h, &id, &msg))
        .unwrap_or_default();
    // Attach after the reply: it arrives before the first message of a feed.
    for interest in attach {
        state.feeds.attach(h, interest);
    }
}

/// Queues the client's frame for a reply; returns the feeds to attach.
fn answer(state: &State, h: &ConnHandle, id: &str, msg: &async_nats::Message) -> Vec<Interest> {
    if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
        h.send_text(error_frame(
            Some(id),
            ErrorCode::ServiceUnavailable.as_str(),
            "no worker is serving this service right now",
        ));
        return Vec::new();
    }
    let reply: Reply = match bus::decode(&msg.payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "malformed reply");
            h.send_text(error_frame(
                Some(id),
                ErrorCode::Internal.as_str(),
                "malformed reply from the service",
            ));
            return Vec::new();
        }
    };
    if !reply.ok {
        let (code, message) = reply.error.map(|e| (e.code, e.message)).unwrap_or_else(|| {
            (
                ErrorCode::Internal.as_str().to_owned(),
                "request failed".to_owned(),
            )
        });
        h.send_text(worker_error_frame(id, &code, &message, &reply.data));
        return Vec::new();
    }
    // Detach before the reply: nothing arrives after a leave's reply.
    for subject in &reply.detach {
        state.feeds.detach(h, subject);
        h.unwatch(subject);
    }
    let presence = reply
        .attach
        .iter()
        .filter(|i| i.mode() == FeedMode::Latest)
        .map(|i| i.subject.as_str());
    let max = state
        .cfg
        .quotas
        .limit(h.tenant.as_str(), Quota::PresenceSubscriptionsPerConnection);
    if !h.watch(presence, max) {
        let e = ClientError::limit_exceeded(
            Quota::PresenceSubscriptionsPerConnection,
            max,
            "this connection follows too many users' presence",
        );
        h.send_text(error_object_frame(id, &e.to_json()));
        return Vec::new();
    }
    h.send_text(ok_frame(id, &reply.data));
    reply.attach
}

/// `{"id":<id>,"ok":false,"error":<error>}`: an error object with fields
/// beyond `code` and `message` (the quota of `limit_exceeded`).
fn error_object_frame(id: &str, error: &serde_json::Value) -> Bytes {
    let mut f = Vec::with_capacity(160);
    f.extend_from_slice(b"{\"id\":");
    f.extend_from_slice(id.as_bytes());
    f.extend_from_slice(b",\"ok\":false,\"error\":");
    f.extend_from_slice(error.to_string().as_bytes());
    f.push(b'}');
    Bytes::from(f)
}

/// A worker's refusal. Its reply's `data` may hold a JSON object of the
/// error's extra fields (`limit` and `value` of `limit_exceeded`): they join
/// `code` and `message`, which they cannot replace.
fn worker_error_frame(id: &str, code: &str, message: &str, extra: &[u8]) -> Bytes {
    let extra = (!extra.is_empty())
        .then(|| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(extra).ok())
        .flatten();
    let Some(mut error) = extra else {
        return error_frame(Some(id), code, message);
    };
    error.insert("code".into(), code.into());
    error.insert("message".into(), message.into());
    error_object_frame(id, &serde_json::Value::Object(error))
}

/// Answers requests whose deadline passed with a `timeout` error, until
/// `stop` fires.
pub async fn sweep_timeouts(state: Arc<State>, stop: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (conn, req) in state.timeouts.expired(Instant::now()) {
            let Some(h) = state.registry.get(conn) else {
                continue;
            };
            h.requests.finish_with(req, |id| {
                h.send_text(error_frame(
                    Some(&id),
                    ErrorCode::Timeout.as_str(),
                    "no reply from the service in time",
                ))
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_extra_error_fields_join_the_error_object() {
        let f = worker_error_frame(
            "7",
            "limit_exceeded",
            "too many",
            br#"{"limit":"rooms_per_connection","value":20,"code":"x"}"#,
        );
        let v: serde_json::Value = serde_json::from_slice(&f).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({"id": 7, "ok": false, "error": {"code": "limit_exceeded",
                "message": "too many", "limit": "rooms_per_connection", "value": 20}})
        );
        let plain: serde_json::Value =
            serde_json::from_slice(&worker_error_frame("7", "not_found", "no", b""))
                .unwrap_or_default();
        assert_eq!(
            plain["error"],
            serde_json::json!({"code": "not_found", "message": "no"})
        );
    }

    #[test]
    fn inflight_is_bounded_and_answered_once() {
        let f = Inflight::default();
        let a = f.begin("\"a\"", 2);
        let b = f.begin("\"b\"", 2);
        assert!(a.is_ok() && b.is_ok() && a != b);
        assert_eq!(f.begin("\"c\"", 2), Err(Refusal::TooMany));
        let a = a.unwrap_or_default();
        assert_eq!(f.finish(a).as_deref(), Some("\"a\""));
        assert_eq!(f.finish(a), None);
        assert!(f.begin("\"c\"", 2).is_ok());
    }

    #[test]
    fn a_closed_table_refuses_new_requests_and_lets_old_ones_finish() {
        let f = Inflight::default();
        let a = f.begin("1", 8).unwrap_or_default();
        f.close();
        assert_eq!(f.begin("2", 8), Err(Refusal::Closing));
        assert!(!f.is_empty());
        assert_eq!(f.finish_with(a, |id| id.len()), Some(1));
        assert!(f.is_empty());
    }
}
