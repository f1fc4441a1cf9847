//! One room member of the `reconnect` scenario: joins its room, counts
//! every seq it receives, and when its socket ends reconnects like a client
//! SDK would — a jittered wait, then the survivor's URL, then
//! `rooms.join` with `after` = the highest seq it saw.
//!
//! Reconnect policy (what the report's times include): the first attempt
//! waits a uniform random delay in `[0, backoff_max)` after the socket is
//! seen closed ("full jitter", so a gateway's clients do not all come back
//! in the same millisecond); each failed attempt waits a uniform random
//! delay in `[0, min(8 s, backoff_max · 2^attempt))` before the next.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::conn;
use crate::net::{ConnectError, Sources, WsRead, WsUrl, WsWrite, no_obligations};
use crate::rng::Rng;
use crate::scenarios::{HANDSHAKE_TIMEOUT, SETUP_TIMEOUT};
use crate::tokens::Tokens;
use crate::wire::{self, In, Target};

/// The longest wait between two failed reconnect attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(8);
/// Attempts at a resume `rooms.join` that fails (`timeout`, `unavailable`).
const JOIN_ATTEMPTS: u32 = 5;
const SEQ: &[u8] = b"\"seq\":";

/// What every member shares.
pub struct Ctx {
    /// The gateway that stays up: the only URL left after the kill.
    pub survivor: WsUrl,
    /// Source addresses for reconnects (a block apart from the first one).
    pub sources: Sources,
    pub tokens: Tokens,
    pub user_prefix: String,
    pub clients: usize,
    pub seed: u64,
    pub backoff_max: Duration,
    /// Set just before the gateway is killed.
    pub killed_at: OnceLock<Instant>,
    /// Highest seq each member has seen (the scenario polls it to know when
    /// everyone has caught up).
    pub progress: Vec<AtomicU64>,
    /// Bounds the initial joins in flight.
    pub join_gate: Semaphore,
    /// Members whose first join has been answered (either way).
    pub joined: AtomicUsize,
    pub stop: CancellationToken,
    pub deadline: Instant,
}

/// What one member saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub room: usize,
    /// Whether it was on the gateway that was killed.
    pub on_killed: bool,
    pub joined: bool,
    /// The room's seq at the first join: messages after it are owed.
    pub base: u64,
    /// Receptions of seq `base + 1 + i`.
    pub counts: Vec<u8>,
    pub max_seq: u64,
    /// Seqs received below the highest already seen (not duplicates).
    pub out_of_order: u64,
    pub gaps: u64,
    /// Kill → socket seen closed (µs); killed members only.
    pub noticed_us: Option<u64>,
    /// The first reconnect's drawn wait (µs).
    pub backoff_us: Option<u64>,
    /// Kill → `welcome` on the survivor (µs).
    pub connected_us: Option<u64>,
    /// Kill → reply to the resume `rooms.join` (µs).
    pub resumed_us: Option<u64>,
    /// Kill → first message after the resume (µs).
    pub first_message_us: Option<u64>,
    pub attempts: u32,
    /// Connection and join failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Connections that ended other than through the kill, by reason.
    pub unexpected_drops: BTreeMap<String, u64>,
}

impl Outcome {
    fn record(&mut self, seq: u64) {
        if seq <= self.base {
            // Before the first join: never owed, and never sent by a
            // correct gateway; count it as out of order.
            self.out_of_order += 1;
            return;
        }
        let i = (seq - self.base - 1) as usize;
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        if self.counts[i] == 0 && seq < self.max_seq {
            self.out_of_order += 1;
        }
        self.counts[i] = self.counts[i].saturating_add(1);
        self.max_seq = self.max_seq.max(seq);
    }

    fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }
}

/// Why reading stopped.
enum End {
    /// The scenario is over.
    Stop,
    /// The connection ended (reason).
    Lost(String),
}

/// Runs member `i` on an open connection until the scenario stops.
pub async fn run(
    ctx: &Ctx,
    i: usize,
    room: usize,
    room_name: String,
    on_killed: bool,
    mut rd: WsRead,
    mut wr: WsWrite,
) -> Outcome {
    let mut out = Outcome {
        room,
        on_killed,
        ..Outcome::default()
    };
    let joined = {
        let _permit = ctx.join_gate.acquire().await;
        call(
            &mut rd,
            &mut wr,
            1,
            wire::join(Target::Switchboard, 1, &room_name),
        )
        .await
    };
    match joined {
        Ok((true, reply)) => {
            out.joined = true;
            out.base = wire::number_after(&reply, SEQ).unwrap_or(0);
            out.max_seq = out.base;
            ctx.progress[i].store(out.base, Ordering::Relaxed);
        }
        Ok((false, reply)) => out.error(format!("join: {}", error_code(&reply))),
        Err(e) => out.error(format!("join: {e}")),
    }
    ctx.joined.fetch_add(1, Ordering::AcqRel);
    if !out.joined {
        return out;
    }
    let mut rng = Rng::derive(ctx.seed, i as u64);
    let mut resumed_after_kill = false;
    loop {
        match read_messages(ctx, i, &mut rd, &mut wr, &mut out, resumed_after_kill).await {
            End::Stop => return out,
            End::Lost(why) => {
                let killed_at = ctx.killed_at.get().copied();
                let by_kill = on_killed && !resumed_after_kill && killed_at.is_some();
                if by_kill {
                    out.noticed_us = killed_at.map(|t| t.elapsed().as_micros() as u64);
                } else {
                    *out.unexpected_drops.entry(why).or_default() += 1;
                }
                match reconnect(ctx, i, &room_name, &mut rng, &mut out, by_kill).await {
                    Some((r, w)) => {
                        rd = r;
                        wr = w;
                        resumed_after_kill |= by_kill;
                    }
                    None => return out,
                }
            }
        }
    }
}

/// Reads pushes until the connection ends or the scenario stops.
async fn read_messages(
    ctx: &Ctx,
    i: usize,
    rd: &mut WsRead,
    wr: &mut WsWrite,
    out: &mut Outcome,
    resumed: bool,
) -> End {
    loop {
        let f = match next_text(ctx, rd, wr).await {
            Ok(Some(f)) => f,
            Ok(None) => return End::Stop,
            Err(why) => return End::Lost(why),
        };
        match wire::classify(Target::Switchboard, &f) {
            In::Message { .. } => {
                if let Some(seq) = wire::number_after(&f, SEQ) {
                    out.record(seq);
                    ctx.progress[i].store(out.max_seq, Ordering::Relaxed);
                    if resumed && out.first_message_us.is_none() {
                        out.first_message_us = since_kill(ctx);
                    }
                }
            }
            In::Gap => out.gaps += 1,
            _ => {}
        }
    }
}

fn since_kill(ctx: &Ctx) -> Option<u64> {
    ctx.killed_at.get().map(|t| t.elapsed().as_micros() as u64)
}

/// Waits, connects to the survivor (retrying), and resumes the room.
async fn reconnect(
    ctx: &Ctx,
    i: usize,
    room: &str,
    rng: &mut Rng,
    out: &mut Outcome,
    by_kill: bool,
) -> Option<(WsRead, WsWrite)> {
    let first = Duration::from_secs_f64(rng.unit() * ctx.backoff_max.as_secs_f64());
    if by_kill {
        out.backoff_us = Some(first.as_micros() as u64);
    }
    let mut wait = first;
    let mut attempt: u32 = 0;
    loop {
        if !pause(ctx, wait).await {
            return None;
        }
        attempt += 1;
        out.attempts += 1;
        let src = ctx.sources.addr(i + (attempt as usize - 1) * ctx.clients);
        let token = match ctx.tokens.for_user(&format!("{}{i}", ctx.user_prefix)) {
            Ok(t) => t,
            Err(e) => {
                out.error(format!("token: {e}"));
                return None;
            }
        };
        let conn = conn::connect(
            Target::Switchboard,
            &ctx.survivor,
            src,
            token.as_deref(),
            HANDSHAKE_TIMEOUT,
        )
        .await;
        let ceiling = (ctx.backoff_max.as_secs_f64() * 2f64.powi(attempt.min(16) as i32))
            .min(BACKOFF_CAP.as_secs_f64());
        wait = Duration::from_secs_f64(rng.unit() * ceiling);
        let (mut rd, mut wr) = match conn {
            Ok(c) => c,
            Err(e) => {
                out.error(connect_kind(&e));
                continue;
            }
        };
        if by_kill {
            out.connected_us = since_kill(ctx);
        }
        // Resume: every seq after the highest one seen.
        for n in 0..JOIN_ATTEMPTS {
            let id = 2 + u64::from(n);
            match call(
                &mut rd,
                &mut wr,
                id,
                wire::join_after(id, room, out.max_seq),
            )
            .await
            {
                Ok((true, _)) => {
                    if by_kill {
                        out.resumed_us = since_kill(ctx);
                    }
                    return Some((rd, wr));
                }
                Ok((false, reply)) => out.error(format!("resume join: {}", error_code(&reply))),
                Err(e) => {
                    out.error(format!("resume join: {e}"));
                    break;
                }
            }
            if !pause(ctx, Duration::from_millis(200)).await {
                return None;
            }
        }
    }
}

/// Sleeps unless the scenario stops first; false when it stopped.
async fn pause(ctx: &Ctx, d: Duration) -> bool {
    tokio::select! {
        _ = ctx.stop.cancelled() => false,
        _ = tokio::time::sleep_until(ctx.deadline.min(Instant::now() + d)) => Instant::now() < ctx.deadline,
    }
}

fn connect_kind(e: &ConnectError) -> String {
    format!("connect: {}", e.kind())
}

/// The error code of a failed reply, or `?`.
pub fn error_code(reply: &[u8]) -> String {
    const KEY: &[u8] = b"\"code\":\"";
    reply
        .windows(KEY.len())
        .position(|w| w == KEY)
        .map(|p| {
            let rest = &reply[p + KEY.len()..];
            let n = rest.iter().position(|c| *c == b'"').unwrap_or(0);
            String::from_utf8_lossy(&rest[..n]).into_owned()
        })
        .unwrap_or_else(|| "?".into())
}

/// Sends a request with numeric `id` and reads (answering pings, ignoring
/// pushes) until its reply: `(ok, reply frame)`.
pub async fn call(
    rd: &mut WsRead,
    wr: &mut WsWrite,
    id: u64,
    text: String,
) -> Result<(bool, Vec<u8>), String> {
    wr.write_frame(Frame::text(Payload::Owned(text.into_bytes())))
        .await
        .map_err(|e| format!("write: {e}"))?;
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut send_fn = no_obligations;
    loop {
        let frame = tokio::time::timeout_at(deadline, rd.read_frame(&mut send_fn))
            .await
            .map_err(|_| "no reply".to_owned())?
            .map_err(|e| format!("read: {e}"))?;
        match frame.opcode {
            OpCode::Text => {
                if let In::Reply { id: got, ok, .. } =
                    wire::classify(Target::Switchboard, &frame.payload)
                    && got == id
                {
                    return Ok((ok, frame.payload.to_vec()));
                }
            }
            OpCode::Ping => {
                let pong = Frame::pong(Payload::Owned(frame.payload.to_vec()));
                wr.write_frame(pong)
                    .await
                    .map_err(|e| format!("write: {e}"))?;
            }
            OpCode::Close => return Err(close_reason(&frame.payload)),
            _ => {}
        }
    }
}

fn close_reason(payload: &[u8]) -> String {
    let code = payload
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .unwrap_or(1005);
    format!("closed by server ({code})")
}

/// The next text frame (pings answered), `None` when the scenario stops,
/// or why the connection ended.
async fn next_text(
    ctx: &Ctx,
    rd: &mut WsRead,
    wr: &mut WsWrite,
) -> Result<Option<Vec<u8>>, String> {
    let mut send_fn = no_obligations;
    loop {
        let frame = tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep_until(ctx.deadline) => return Ok(None),
            f = rd.read_frame(&mut send_fn) => f,
        };
        let frame = frame.map_err(|e| match e {
            fastwebsockets::WebSocketError::UnexpectedEOF => "socket closed".to_owned(),
            e => format!("read: {e}"),
        })?;
        match frame.opcode {
            OpCode::Text => return Ok(Some(frame.payload.to_vec())),
            OpCode::Ping => {
                let pong = Frame::pong(Payload::Owned(frame.payload.to_vec()));
                wr.write_frame(pong)
                    .await
                    .map_err(|e| format!("write: {e}"))?;
            }
            OpCode::Close => return Err(close_reason(&frame.payload)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Outcome;

    #[test]
    fn receptions_are_tallied_per_seq() {
        let mut o = Outcome {
            base: 10,
            max_seq: 10,
            ..Outcome::default()
        };
        for s in [11, 12, 14, 13, 14, 9] {
            o.record(s);
        }
        assert_eq!(o.counts, vec![1, 1, 1, 2]);
        assert_eq!(o.max_seq, 14);
        // 13 after 14, and 9 (before the join).
        assert_eq!(o.out_of_order, 2);
        assert_eq!(
            super::error_code(br#"{"id":2,"ok":false,"error":{"code":"timeout","message":"x"}}"#),
            "timeout"
        );
    }
}
