//! A connection's writer: owns the socket's write half ([`Wire`]), drains
//! the bounded outbound queue, pings, enforces the idle timeout, takes the
//! connection's turn in a drain, and ends it with a close frame.
//!
//! Ending: whoever decides that a connection ends calls
//! [`ConnHandle::kill`] with a reason; the writer stops taking frames at
//! once. After the connection has been cleaned up, [`close`] finishes the
//! frame that was being written (a close frame cannot follow half a frame)
//! and sends the close frame, within [`CLOSE_LIMIT`]. A slow consumer thus
//! gets 1008 as soon as it reads again, and a client that takes nothing at
//! all is dropped (1006) after that bound.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::time::Instant;

use crate::State;
use crate::outbox::Out;
use crate::registry::{CloseReason, ConnHandle, elapsed_ms};
use crate::wire::{Op, Wire, close_payload};

/// The longest a connection that is ending may take to receive the rest of
/// the frame in progress and its close frame (or `write_timeout_ms` when
/// shorter).
pub const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// How long past `request_timeout_ms` a draining connection waits for the
/// replies of its in-flight requests (the timeout sweeper answers them by
/// then).
const REPLY_SLACK: Duration = Duration::from_secs(1);

const RESTART_TEXT: &str = "server restarting";
const RESTARTING: CloseReason = CloseReason::new(1012, RESTART_TEXT);

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
        h.outbox
            .push_last(Out::Close(RESTARTING.code, RESTART_TEXT));
        *drain = Drain::Queued;
    }
}

/// Writes the connection's frames until it ends: killed (see [`close`]), its
/// client's close echoed, or the socket failed.
pub async fn run<W: AsyncWrite + Unpin>(state: &State, h: &ConnHandle, wire: &mut Wire<W>) {
    let cfg = &state.cfg.gateway;
    let write_timeout = Duration::from_millis(cfg.write_timeout_ms.max(1));
    let every = Duration::from_millis(cfg.ping_interval_ms);
    let mut ping = tokio::time::interval_at(Instant::now() + every, every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain = Drain::No;
    loop {
        let (op, payload) = tokio::select! {
            biased;
            _ = h.cancel.cancelled() => return,
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
                    h.kill(RESTARTING);
                }
                continue;
            }
            o = h.outbox.pop() => match o {
                Out::Text(b) => (Op::Text, b),
                Out::Pong(b) => (Op::Pong, b),
                Out::CloseEcho(b) => (Op::Close, b),
                Out::Close(code, reason) => {
                    // Everything queued before it is out: end like any
                    // other close.
                    h.kill(CloseReason::new(code, reason));
                    continue;
                }
            },
            _ = ping.tick() => {
                let seen = h.last_seen.load(std::sync::atomic::Ordering::Relaxed);
                if elapsed_ms(state.started).saturating_sub(seen) >= cfg.idle_timeout_ms {
                    h.kill(CloseReason::new(1001, "idle timeout"));
                    continue;
                }
                (Op::Ping, Bytes::new())
            }
        };
        if !write(h, wire, op, payload, write_timeout).await || op == Op::Close {
            return;
        }
        close_when_answered(h, &mut drain);
    }
}

/// Writes one frame. A client that does not take it within `limit` is a
/// slow consumer (1008); a kill meanwhile stops the wait, leaving the rest of
/// the frame for [`close`]. False when the connection is ending.
async fn write<W: AsyncWrite + Unpin>(
    h: &ConnHandle,
    wire: &mut Wire<W>,
    op: Op,
    payload: Bytes,
    limit: Duration,
) -> bool {
    if wire.start(op, payload).is_err() {
        h.kill(CloseReason::new(
            CloseReason::NO_FRAME,
            "frame interleaving",
        ));
        return false;
    }
    tokio::select! {
        r = tokio::time::timeout(limit, wire.finish()) => match r {
            Ok(Ok(())) => true,
            Ok(Err(_)) => {
                h.kill(CloseReason::new(CloseReason::NO_FRAME, "write failed"));
                false
            }
            Err(_) => {
                h.kill(CloseReason::new(1008, "slow consumer: write timed out"));
                false
            }
        },
        _ = h.cancel.cancelled() => false,
    }
}

/// Ends the connection on the wire: finishes the frame in progress, then
/// sends the close frame for the connection's close reason, all within
/// `limit`. Nothing is sent when the peer is gone (1006) or the client's
/// close was already being echoed.
pub async fn close<W: AsyncWrite + Unpin>(h: &ConnHandle, wire: &mut Wire<W>, limit: Duration) {
    let reason = h.close_reason();
    if reason
        .as_ref()
        .is_some_and(|r| r.code == CloseReason::NO_FRAME)
    {
        return;
    }
    let ended = tokio::time::timeout(limit, async {
        match &reason {
            Some(r) if !wire.close_started() => {
                wire.send(Op::Close, close_payload(r.code, &r.reason))
                    .await?;
            }
            _ => wire.finish().await?,
        }
        wire.flush().await
    })
    .await;
    if !matches!(ended, Ok(Ok(()))) {
        tracing::debug!(conn = h.id, ?reason, "could not send the close frame");
    }
}
