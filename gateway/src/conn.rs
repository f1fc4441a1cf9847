//! One WebSocket connection: a reader task that turns client frames into bus
//! requests, and a writer loop that owns the socket's write half and drains
//! the bounded outbound queue, pings, and enforces the idle timeout.
//!
//! Close codes: 1000 normal, 1001 idle timeout, 1002 protocol error,
//! 1003 binary frames, 1007 invalid UTF-8, 1008 slow consumer,
//! 1009 message too big, 1012 server restarting.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{
    Frame, OpCode, Payload, WebSocket, WebSocketError, WebSocketRead, WebSocketWrite,
};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use switchboard_proto::bus::{ConnEvent, ConnRef, FeedMode, Interest, conn_event};
use switchboard_shared::auth::Identity;
use switchboard_shared::{bus, now_ms, subjects};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::time::Instant;

use crate::State;
use crate::handshake::SUBPROTOCOL;
use crate::outbox::Out;
use crate::protocol::{error_frame, parse_request, push_frame};
use crate::registry::{CloseReason, ConnHandle, elapsed_ms};
use crate::requests;

type Io = TokioIo<Upgraded>;

/// "No close frame": the peer is gone, just drop the socket.
const NO_FRAME: u16 = 1006;

/// How long past `request_timeout_ms` a draining connection waits for the
/// replies of its in-flight requests (the timeout sweeper answers them by
/// then).
const REPLY_SLACK: Duration = Duration::from_secs(1);

/// Serves one upgraded connection until it ends, then cleans up after it.
pub async fn serve(state: Arc<State>, mut ws: WebSocket<Io>, identity: Identity) {
    let cfg = &state.cfg.gateway;
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    // fastwebsockets refuses frames of *at least* this size.
    ws.set_max_message_size(cfg.max_message_bytes.saturating_add(1));
    let id = state.registry.next_id();
    let h = ConnHandle::new(
        id,
        identity.tenant,
        identity.user,
        identity.grants,
        cfg.outbound_queue,
    );
    h.touch(elapsed_ms(state.started));
    state.registry.insert(h.clone());
    conn_event(&state, &h, conn_event::Kind::Connected).await;
    h.send_text(push_frame(
        "welcome",
        &serde_json::json!({
            "conn": format!("{}:{}", state.gw, id),
            "app": h.tenant.as_str(),
            "user": h.user.as_str(),
            "protocol": SUBPROTOCOL,
            "max_message_bytes": cfg.max_message_bytes,
        }),
    ));
    // App-wide pushes (`sb.tenant.<app>`) reach every connection of the app.
    state.feeds.attach(
        &h,
        Interest {
            subject: subjects::tenant(&h.tenant),
            mode: FeedMode::Events as i32,
            ..Interest::default()
        },
    );
    tracing::debug!(conn = id, user = %h.user, "connected");

    let (rd, wr) = ws.split(tokio::io::split);
    let reader = state.tasks.spawn(read_loop(state.clone(), h.clone(), rd));
    write_loop(&state, &h, wr).await;
    reader.abort();

    state.registry.remove(id);
    state.feeds.detach_all(&h);
    conn_event(&state, &h, conn_event::Kind::Disconnected).await;
    tracing::debug!(conn = id, reason = ?h.close_reason(), "disconnected");
}

async fn conn_event(state: &State, h: &ConnHandle, kind: conn_event::Kind) {
    let ev = ConnEvent {
        kind: kind as i32,
        conn: Some(ConnRef {
            gateway: state.gw.to_string(),
            conn: h.id,
        }),
        tenant: h.tenant.to_string(),
        user: h.user.to_string(),
        at_ms: now_ms(),
        count: 0,
    };
    if let Err(e) = state
        .nats
        .publish(subjects::CONN_EVENTS, bus::encode(&ev))
        .await
    {
        tracing::warn!(error = %e, "could not publish connection event");
    }
}

async fn read_loop(state: Arc<State>, h: Arc<ConnHandle>, mut rd: WebSocketRead<ReadHalf<Io>>) {
    let max = state.cfg.gateway.max_message_bytes;
    let obligations = h.clone();
    // Pongs and close echoes that the protocol obliges us to send go through
    // the writer's queue.
    let mut send_fn = move |f: Frame<'_>| {
        let payload = Bytes::copy_from_slice(&f.payload);
        match f.opcode {
            OpCode::Pong => {
                obligations.send(Out::Pong(payload));
            }
            OpCode::Close => {
                obligations.send(Out::CloseEcho(payload));
            }
            _ => {}
        }
        std::future::ready(Ok::<(), std::io::Error>(()))
    };
    let mut fragments: Vec<u8> = Vec::new();
    let mut fragmented: Option<OpCode> = None;
    loop {
        let frame = match rd.read_frame(&mut send_fn).await {
            Ok(f) => f,
            Err(e) => {
                h.kill(classify(&e));
                return;
            }
        };
        h.touch(elapsed_ms(state.started));
        match frame.opcode {
            OpCode::Text | OpCode::Binary if frame.fin => {
                if fragmented.is_some() {
                    h.kill(close(1002, "new message before the fragmented one ended"));
                    return;
                }
                if !on_message(&state, &h, frame.opcode, &frame.payload).await {
                    return;
                }
            }
            OpCode::Text | OpCode::Binary => {
                if fragmented.is_some() {
                    h.kill(close(1002, "new message before the fragmented one ended"));
                    return;
                }
                fragmented = Some(frame.opcode);
                fragments.extend_from_slice(&frame.payload);
            }
            OpCode::Continuation => {
                let Some(op) = fragmented else {
                    h.kill(close(1002, "continuation without a message"));
                    return;
                };
                if fragments.len() + frame.payload.len() > max {
                    h.kill(close(1009, "message too big"));
                    return;
                }
                fragments.extend_from_slice(&frame.payload);
                if frame.fin {
                    let msg = std::mem::take(&mut fragments);
                    fragmented = None;
                    if !on_message(&state, &h, op, &msg).await {
                        return;
                    }
                }
            }
            OpCode::Close => return,
            OpCode::Ping | OpCode::Pong => {}
        }
    }
}

fn close(code: u16, reason: &'static str) -> CloseReason {
    CloseReason { code, reason }
}

fn classify(e: &WebSocketError) -> CloseReason {
    match e {
        WebSocketError::FrameTooLarge => close(1009, "message too big"),
        WebSocketError::InvalidUTF8 => close(1007, "invalid UTF-8"),
        WebSocketError::UnexpectedEOF
        | WebSocketError::IoError(_)
        | WebSocketError::ConnectionClosed => close(NO_FRAME, "connection lost"),
        _ => close(1002, "protocol error"),
    }
}

/// Handles one complete client message; false ends the connection.
async fn on_message(state: &State, h: &ConnHandle, op: OpCode, payload: &[u8]) -> bool {
    if op == OpCode::Binary {
        h.kill(close(
            1003,
            "binary frames are not supported; send JSON text",
        ));
        return false;
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        h.kill(close(1007, "invalid UTF-8"));
        return false;
    };
    let cfg = &state.cfg.gateway;
    let req = match parse_request(text, &cfg.services) {
        Ok(r) => r,
        Err(refused) => {
            let id = refused.id.map(|i| i.get());
            return h.send_text(error_frame(
                id,
                refused.error.code.as_str(),
                &refused.error.message,
            ));
        }
    };
    requests::forward(state, h, req).await
}

enum Step {
    Send(Out),
    Ping,
}

/// Where a connection stands in a drain.
#[derive(Clone, Copy)]
enum Drain {
    /// Serving normally (no shutdown yet).
    No,
    /// Shutdown: serving until this connection's turn.
    Turn(Instant),
    /// Turn taken: waiting for in-flight replies until this deadline.
    Replies(Instant),
    /// Close 1012 queued behind the last reply.
    Queued,
}

impl Drain {
    fn deadline(self) -> Option<Instant> {
        match self {
            Self::Turn(t) | Self::Replies(t) => Some(t),
            Self::No | Self::Queued => None,
        }
    }
}

/// Once no request is in flight (so every reply is queued), queues close 1012
/// behind the replies.
fn close_when_answered(h: &ConnHandle, drain: &mut Drain) {
    if matches!(drain, Drain::Replies(_)) && h.requests.is_empty() {
        h.outbox.push_last(Out::Close(1012, RESTARTING));
        *drain = Drain::Queued;
    }
}

const RESTARTING: &str = "server restarting";

async fn write_loop(state: &State, h: &ConnHandle, mut wr: WebSocketWrite<WriteHalf<Io>>) {
    let cfg = &state.cfg.gateway;
    let write_timeout = Duration::from_millis(cfg.write_timeout_ms.max(1));
    let every = Duration::from_millis(cfg.ping_interval_ms);
    let mut ping = tokio::time::interval_at(Instant::now() + every, every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain = Drain::No;
    loop {
        let step = tokio::select! {
            biased;
            _ = h.cancel.cancelled() => {
                if let Some(r) = h.close_reason() && r.code != NO_FRAME {
                    let frame = Frame::close(r.code, r.reason.as_bytes());
                    let _ = tokio::time::timeout(Duration::from_secs(1), wr.write_frame(frame)).await;
                }
                return;
            }
            _ = state.shutdown.cancelled(), if matches!(drain, Drain::No) => {
                let window = Duration::from_millis(cfg.drain_window_ms);
                drain = Drain::Turn(Instant::now() + crate::drain::turn(h.id, window));
                continue;
            }
            _ = switchboard_shared::sleep_until_opt(drain.deadline()), if drain.deadline().is_some() => {
                if let Drain::Turn(_) = drain {
                    h.requests.close();
                    let replies = Duration::from_millis(cfg.request_timeout_ms) + REPLY_SLACK;
                    drain = Drain::Replies(Instant::now() + replies);
                    close_when_answered(h, &mut drain);
                } else {
                    // The replies did not come in time (the sweeper should
                    // have answered them): close anyway.
                    h.kill(close(1012, RESTARTING));
                }
                continue;
            }
            o = h.outbox.pop() => Step::Send(o),
            _ = ping.tick() => {
                let seen = h.last_seen.load(std::sync::atomic::Ordering::Relaxed);
                if elapsed_ms(state.started).saturating_sub(seen) >= cfg.idle_timeout_ms {
                    h.kill(close(1001, "idle timeout"));
                    continue;
                }
                Step::Ping
            }
        };
        let (frame, last) = match &step {
            Step::Ping => (
                Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[])),
                false,
            ),
            Step::Send(Out::Text(b)) => (Frame::text(Payload::Borrowed(b)), false),
            Step::Send(Out::Pong(b)) => (Frame::pong(Payload::Borrowed(b)), false),
            Step::Send(Out::CloseEcho(b)) => (Frame::close_raw(Payload::Borrowed(b)), true),
            Step::Send(Out::Close(code, reason)) => (Frame::close(*code, reason.as_bytes()), true),
        };
        if !write(h, &mut wr, frame, write_timeout).await || last {
            return;
        }
        close_when_answered(h, &mut drain);
    }
}

/// Writes one frame, giving up when the client does not take it in time or
/// the connection is being dropped.
async fn write(
    h: &ConnHandle,
    wr: &mut WebSocketWrite<WriteHalf<Io>>,
    frame: Frame<'_>,
    limit: Duration,
) -> bool {
    tokio::select! {
        r = tokio::time::timeout(limit, wr.write_frame(frame)) => match r {
            Ok(Ok(())) => true,
            Ok(Err(_)) => {
                h.kill(close(NO_FRAME, "write failed"));
                false
            }
            Err(_) => {
                h.kill(close(NO_FRAME, "write timed out: slow consumer"));
                false
            }
        },
        _ = h.cancel.cancelled() => false,
    }
}
