//! One load-generating client connection, run as two tasks:
//!
//! - the **reader** classifies every frame (see [`crate::wire`]), records
//!   message and reply latencies in its own HDR histograms, answers
//!   heartbeats through the writer, hands setup replies to the scenario, and
//!   releases the next request in closed-loop mode;
//! - the **writer** owns the write half: it sends setup requests and pongs,
//!   and generates traffic at a set rate or closed-loop once started.
//!
//! Both stop on the scenario's cancellation token or at a hard deadline,
//! whichever comes first, so no connection outlives its scenario.
//!
//! Connecting ([`connect`]) includes each target's own session start:
//! Switchboard's `welcome` push, Socket.IO's Engine.IO open and namespace
//! connect with the token.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload};
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Samples, histogram, now_us};
use crate::net::{self, ConnectError, WsRead, WsUrl, WsWrite, no_obligations};
use crate::wire::{self, In, SETUP_ID_LIMIT, Target};

/// Opens a session with `target`: the WebSocket upgrade plus the target's own
/// start (welcome, Engine.IO/Socket.IO connect).
pub async fn connect(
    target: Target,
    url: &WsUrl,
    src: SocketAddrV4,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(WsRead, WsWrite), ConnectError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if target == Target::Switchboard {
        if let Some(b) = &bearer {
            headers.push(("Authorization", b));
        }
        headers.push(("Sec-WebSocket-Protocol", "switchboard.v1"));
    }
    let (mut rd, mut wr, _protocol) = net::open(url, src, &headers, timeout).await?;
    match target {
        Target::Switchboard => {
            let f = next_text(&mut rd, deadline).await?;
            if wire::event_name(&f) != Some(b"welcome".as_slice()) {
                return Err(ConnectError::Protocol(format!(
                    "expected welcome, got {}",
                    String::from_utf8_lossy(&f)
                )));
            }
        }
        Target::Socketio => {
            let f = next_text(&mut rd, deadline).await?;
            if !f.starts_with(b"0{") {
                return Err(ConnectError::Protocol("expected an Engine.IO open".into()));
            }
            let connect = match token {
                Some(t) => format!("40{{\"token\":\"{t}\"}}"),
                None => "40".to_owned(),
            };
            send_text(&mut wr, connect.into_bytes())
                .await
                .map_err(|e| ConnectError::Protocol(e.to_string()))?;
            loop {
                let f = next_text(&mut rd, deadline).await?;
                if f.starts_with(b"40") {
                    break;
                }
                if f.starts_with(b"44") {
                    return Err(ConnectError::Protocol(format!(
                        "socket.io refused: {}",
                        String::from_utf8_lossy(&f)
                    )));
                }
                if f.as_slice() == b"2" {
                    send_text(&mut wr, b"3".to_vec())
                        .await
                        .map_err(|e| ConnectError::Protocol(e.to_string()))?;
                }
            }
        }
        Target::B1 | Target::B2 => {}
    }
    Ok((rd, wr))
}

/// Reads the next text frame (answering nothing), with a deadline.
async fn next_text(rd: &mut WsRead, deadline: Instant) -> Result<Vec<u8>, ConnectError> {
    let mut send_fn = no_obligations;
    loop {
        let frame = tokio::time::timeout_at(deadline, rd.read_frame(&mut send_fn))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(|e| ConnectError::Protocol(e.to_string()))?;
        match frame.opcode {
            OpCode::Text => return Ok(frame.payload.to_vec()),
            OpCode::Close => return Err(ConnectError::Protocol("closed by the server".into())),
            _ => {}
        }
    }
}

async fn send_text(wr: &mut WsWrite, text: Vec<u8>) -> Result<(), fastwebsockets::WebSocketError> {
    wr.write_frame(Frame::text(Payload::Owned(text))).await
}

/// Builds the frame of generated message number `n` stamped `t_us`.
pub type MakeFn = Box<dyn FnMut(u64) -> String + Send>;

/// Traffic a writer generates once started.
pub enum Gen {
    /// One message every `interval`, first after `phase`, until `until`.
    Rate {
        interval: Duration,
        phase: Duration,
        until: Instant,
        /// Skip a tick when this many requests await replies.
        max_inflight: Option<u64>,
        make: MakeFn,
    },
    /// `window` requests outstanding at all times, until `until`.
    Closed {
        window: usize,
        until: Instant,
        make: MakeFn,
    },
}

/// Commands for a writer.
pub enum Ctl {
    Text(String),
    Pong(Bytes),
    Start(Gen),
    /// A measured reply arrived (closed loop: send the next request).
    Next,
}

/// A reply the scenario waits for during setup.
#[derive(Debug)]
pub struct SetupReply {
    pub ok: bool,
    pub code: Option<String>,
}

/// What a reader saw.
pub struct ReadStats {
    /// Delivery latency of room messages (µs).
    pub messages: Samples,
    /// Latency of replies to generated requests (µs).
    pub replies: Samples,
    pub replies_ok: u64,
    /// Error replies by code.
    pub errors: BTreeMap<String, u64>,
    pub gaps: u64,
    /// Why the reader ended before it was told to, if it did.
    pub ended: Option<String>,
}

/// What a writer did.
#[derive(Debug, Default)]
pub struct WriteStats {
    pub sent: u64,
    /// Rate ticks skipped because too many requests awaited replies.
    pub skipped: u64,
    pub error: Option<String>,
}

/// Shared between a connection's two tasks.
#[derive(Default)]
struct Shared {
    /// Generated requests sent and not yet answered.
    inflight: AtomicU64,
}

/// A running client connection.
pub struct Conn {
    pub ctl: mpsc::UnboundedSender<Ctl>,
    pub setup: mpsc::UnboundedReceiver<SetupReply>,
    reader: JoinHandle<ReadStats>,
    writer: JoinHandle<WriteStats>,
}

/// Options for a connection's tasks.
#[derive(Clone)]
pub struct Opts {
    pub target: Target,
    pub stop: CancellationToken,
    /// Hard end, whatever happens.
    pub deadline: Instant,
    /// Closed loop: each measured reply releases the next request.
    pub closed_loop: bool,
}

impl Conn {
    pub fn spawn(rd: WsRead, wr: WsWrite, opts: &Opts) -> Self {
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (setup_tx, setup_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let reader = tokio::spawn(read_loop(
            rd,
            opts.clone(),
            ctl_tx.clone(),
            setup_tx,
            shared.clone(),
        ));
        let writer = tokio::spawn(write_loop(wr, opts.clone(), ctl_rx, shared));
        Self {
            ctl: ctl_tx,
            setup: setup_rx,
            reader,
            writer,
        }
    }

    /// Sends a setup request and waits for the next setup reply.
    pub async fn request(&mut self, text: String, timeout: Duration) -> anyhow::Result<SetupReply> {
        self.ctl
            .send(Ctl::Text(text))
            .map_err(|_| anyhow::anyhow!("connection writer is gone"))?;
        match tokio::time::timeout(timeout, self.setup.recv()).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => anyhow::bail!("connection closed during setup"),
            Err(_) => anyhow::bail!("no reply within {timeout:?}"),
        }
    }

    pub fn start(&self, gen_: Gen) -> bool {
        self.ctl.send(Ctl::Start(gen_)).is_ok()
    }

    /// Whether the reader is still running (the connection is alive).
    pub fn alive(&self) -> bool {
        !self.reader.is_finished()
    }

    /// Waits for both tasks (after the stop token fired or the deadline).
    pub async fn finish(self) -> (Option<ReadStats>, WriteStats) {
        let r = self.reader.await.ok();
        let w = self.writer.await.unwrap_or_default();
        (r, w)
    }

    pub fn abort(&self) {
        self.reader.abort();
        self.writer.abort();
    }
}

async fn read_loop(
    mut rd: WsRead,
    opts: Opts,
    ctl: mpsc::UnboundedSender<Ctl>,
    setup: mpsc::UnboundedSender<SetupReply>,
    shared: Arc<Shared>,
) -> ReadStats {
    let mut st = ReadStats {
        messages: Samples::default(),
        replies: Samples::default(),
        replies_ok: 0,
        errors: BTreeMap::new(),
        gaps: 0,
        ended: None,
    };
    let mut send_fn = no_obligations;
    loop {
        let frame = tokio::select! {
            biased;
            _ = opts.stop.cancelled() => return st,
            _ = tokio::time::sleep_until(opts.deadline) => return st,
            f = rd.read_frame(&mut send_fn) => f,
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                st.ended = Some(format!("read: {e}"));
                return st;
            }
        };
        match frame.opcode {
            OpCode::Text => {}
            OpCode::Ping => {
                let _ = ctl.send(Ctl::Pong(Bytes::copy_from_slice(&frame.payload)));
                continue;
            }
            OpCode::Close => {
                let code = frame
                    .payload
                    .get(..2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
                    .unwrap_or(1005);
                st.ended = Some(format!("closed by server ({code})"));
                return st;
            }
            _ => continue,
        }
        match wire::classify(opts.target, &frame.payload) {
            In::Message { t_us } => {
                st.messages.record(now_us().saturating_sub(t_us));
            }
            In::Reply { id, ok, code } if id < SETUP_ID_LIMIT => {
                let _ = setup.send(SetupReply {
                    ok,
                    code: code.map(|c| String::from_utf8_lossy(c).into_owned()),
                });
            }
            In::Reply { id, ok, code } => {
                st.replies.record(now_us().saturating_sub(id));
                let _ = shared
                    .inflight
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                        Some(v.saturating_sub(1))
                    });
                if ok {
                    st.replies_ok += 1;
                } else {
                    let code = code.map_or_else(
                        || "unknown".to_owned(),
                        |c| String::from_utf8_lossy(c).into_owned(),
                    );
                    *st.errors.entry(code).or_default() += 1;
                }
                if opts.closed_loop {
                    let _ = ctl.send(Ctl::Next);
                }
            }
            In::Gap => st.gaps += 1,
            In::Ping => {
                let _ = ctl.send(Ctl::Text("3".into()));
            }
            In::Closed => {
                st.ended = Some("session closed by server".into());
                return st;
            }
            In::Other => {}
        }
    }
}

/// Strictly increasing send stamps, so stamps double as unique request ids.
struct Stamps(u64);

impl Stamps {
    fn next(&mut self) -> u64 {
        self.0 = now_us().max(self.0 + 1);
        self.0
    }
}

async fn write_loop(
    mut wr: WsWrite,
    opts: Opts,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    shared: Arc<Shared>,
) -> WriteStats {
    let mut st = WriteStats::default();
    let mut stamps = Stamps(0);
    let mut gen_: Option<Gen> = None;
    let mut next_tick: Option<Instant> = None;
    loop {
        let tick = next_tick;
        let out: Option<Vec<u8>> = tokio::select! {
            biased;
            _ = opts.stop.cancelled() => return st,
            _ = tokio::time::sleep_until(opts.deadline) => return st,
            c = ctl.recv() => match c {
                None => return st,
                Some(Ctl::Text(t)) => Some(t.into_bytes()),
                Some(Ctl::Pong(p)) => {
                    if let Err(e) = wr.write_frame(Frame::pong(Payload::Owned(p.to_vec()))).await {
                        st.error = Some(format!("write: {e}"));
                        return st;
                    }
                    None
                }
                Some(Ctl::Start(g)) => {
                    let window = match &g {
                        Gen::Rate { phase, .. } => {
                            next_tick = Some(Instant::now() + *phase);
                            0
                        }
                        Gen::Closed { window, .. } => *window,
                    };
                    gen_ = Some(g);
                    for _ in 0..window {
                        let Some(Gen::Closed { until, make, .. }) = gen_.as_mut() else {
                            break;
                        };
                        if Instant::now() >= *until {
                            break;
                        }
                        let text = make(stamps.next());
                        if let Err(e) = send_text(&mut wr, text.into_bytes()).await {
                            st.error = Some(format!("write: {e}"));
                            return st;
                        }
                        st.sent += 1;
                    }
                    None
                }
                Some(Ctl::Next) => match gen_.as_mut() {
                    Some(Gen::Closed { until, make, .. }) if Instant::now() < *until => {
                        st.sent += 1;
                        Some(make(stamps.next()).into_bytes())
                    }
                    _ => None,
                },
            },
            _ = sleep_opt(tick), if tick.is_some() => {
                match gen_.as_mut() {
                    Some(Gen::Rate { interval, until, max_inflight, make, .. }) => {
                        let now = Instant::now();
                        if now >= *until {
                            next_tick = None;
                            None
                        } else {
                            // Keep the schedule, but never burst more than a
                            // second's worth after a stall.
                            let mut t = tick.unwrap_or(now) + *interval;
                            if t + Duration::from_secs(1) < now {
                                t = now + *interval;
                            }
                            next_tick = Some(t);
                            let busy = max_inflight
                                .is_some_and(|m| shared.inflight.load(Ordering::Relaxed) >= m);
                            if busy {
                                st.skipped += 1;
                                None
                            } else {
                                if max_inflight.is_some() {
                                    shared.inflight.fetch_add(1, Ordering::Relaxed);
                                }
                                st.sent += 1;
                                Some(make(stamps.next()).into_bytes())
                            }
                        }
                    }
                    _ => {
                        next_tick = None;
                        None
                    }
                }
            }
        };
        if let Some(text) = out
            && let Err(e) = send_text(&mut wr, text).await
        {
            st.error = Some(format!("write: {e}"));
            return st;
        }
    }
}

async fn sleep_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Merges readers' and writers' stats.
pub struct Totals {
    pub messages: Histogram<u64>,
    pub replies: Histogram<u64>,
    pub replies_ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub gaps: u64,
    pub sent: u64,
    pub skipped: u64,
    /// Connections whose reader or writer ended early, by reason.
    pub ended: BTreeMap<String, u64>,
}

impl Totals {
    pub fn new() -> Self {
        Self {
            messages: histogram(),
            replies: histogram(),
            replies_ok: 0,
            errors: BTreeMap::new(),
            gaps: 0,
            sent: 0,
            skipped: 0,
            ended: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, r: Option<ReadStats>, w: WriteStats) {
        if let Some(r) = r {
            r.messages.merge_into(&mut self.messages);
            r.replies.merge_into(&mut self.replies);
            self.replies_ok += r.replies_ok;
            for (k, v) in r.errors {
                *self.errors.entry(k).or_default() += v;
            }
            self.gaps += r.gaps;
            if let Some(e) = r.ended {
                *self.ended.entry(shorten(&e)).or_default() += 1;
            }
        } else {
            *self.ended.entry("reader panicked".into()).or_default() += 1;
        }
        self.sent += w.sent;
        self.skipped += w.skipped;
        if let Some(e) = w.error {
            *self.ended.entry(shorten(&e)).or_default() += 1;
        }
    }

    /// Collects every connection's stats.
    pub async fn collect(conns: Vec<Conn>) -> Self {
        let mut t = Self::new();
        for c in conns {
            let (r, w) = c.finish().await;
            t.add(r, w);
        }
        t
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}
