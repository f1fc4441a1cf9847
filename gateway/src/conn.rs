//! One WebSocket connection: a reader task that turns client frames into bus
//! requests, the writer ([`crate::writer`]) that owns the socket's write
//! half, and the cleanup once it ends.
//!
//! Close codes: 1000 normal, 1001 idle timeout, 1002 protocol error,
//! 1003 binary frames, 1007 invalid UTF-8, 1008 slow consumer,
//! 1009 message too big, 1012 server restarting.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Role, WebSocket, WebSocketError, WebSocketRead};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use switchboard_proto::bus::{FeedMode, Interest};
use switchboard_shared::auth::Identity;
use switchboard_shared::conn_events::{ConnInfo, ConnLifecycle};
use switchboard_shared::subjects;
use tokio::io::ReadHalf;

use crate::State;
use crate::handshake::SUBPROTOCOL;
use crate::outbox::Out;
use crate::protocol::{error_frame, parse_request, push_frame};
use crate::registry::{CloseReason, ConnHandle, elapsed_ms};
use crate::wire::Wire;
use crate::{requests, writer};

type Io = TokioIo<Upgraded>;

/// "No close frame": the peer is gone, just drop the socket.
const NO_FRAME: u16 = CloseReason::NO_FRAME;

/// Serves one upgraded connection until it ends, then cleans up after it.
pub async fn serve(state: Arc<State>, ws: WebSocket<Io>, identity: Identity) {
    let cfg = &state.cfg.gateway;
    // fastwebsockets reads; frames are written by `Wire`, which can finish a
    // frame cut short (fastwebsockets' own write half goes unused).
    let (rd, wr) = tokio::io::split(ws.into_inner());
    let (mut rd, _) = fastwebsockets::after_handshake_split(rd, tokio::io::sink(), Role::Server);
    rd.set_auto_close(true);
    rd.set_auto_pong(true);
    // fastwebsockets refuses frames of *at least* this size.
    rd.set_max_message_size(cfg.max_message_bytes.saturating_add(1));
    let Some(h) = state.registry.insert_new(|id| {
        ConnHandle::new(
            id,
            identity.tenant,
            identity.user,
            identity.grants,
            cfg.outbound_queue,
        )
    }) else {
        return;
    };
    let id = h.id;
    h.touch(elapsed_ms(state.started));
    conn_event(&state, &h, true).await;
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

    let reader = state.tasks.spawn(read_loop(state.clone(), h.clone(), rd));
    let mut wire = Wire::new(wr);
    writer::run(&state, &h, &mut wire).await;
    reader.abort();

    // The connection is gone for everyone else before its close frame is
    // out, which a slow consumer may take a while to accept.
    state.registry.remove(id);
    state.feeds.detach_all(&h);
    conn_event(&state, &h, false).await;
    let limit = writer::CLOSE_LIMIT.min(Duration::from_millis(cfg.write_timeout_ms.max(1)));
    writer::close(&h, &mut wire, limit).await;
    tracing::debug!(conn = id, reason = ?h.close_reason(), "disconnected");
}

async fn conn_event(state: &State, h: &ConnHandle, connected: bool) {
    let info = ConnInfo {
        gw: state.gw.clone(),
        conn: h.id,
        tenant: h.tenant.clone(),
        user: h.user.clone(),
    };
    let ev = if connected {
        ConnLifecycle::Connected(info)
    } else {
        ConnLifecycle::Disconnected(info)
    };
    if let Err(e) = state.nats.publish(subjects::CONN_EVENTS, ev.encode()).await {
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
    CloseReason::new(code, reason)
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
