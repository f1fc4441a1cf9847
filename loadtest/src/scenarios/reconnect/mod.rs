//! `reconnect`: how long the clients of a gateway killed with SIGKILL take
//! to come back on the survivor and resume their rooms, and whether any
//! client, killed or not, misses a message or gets one twice.
//!
//! The scenario starts its own two gateway processes (and, given the
//! workers binary, a `presence` worker, so the cluster notices the death as
//! in production) against the NATS, Redis and rooms worker it is pointed
//! at. N members are spread over both gateways (member `i` on gateway
//! `i mod 2`, in room `(i / 2) mod M`, so both gateways hold members of
//! every room); one publisher per room, on the gateway that survives,
//! publishes at a steady rate. After a warm-up the other gateway is killed;
//! its members reconnect as [`member`] describes. Publishing goes on for a
//! while, then stops; once every member has the room's head seq (or the
//! drain time is over) the receptions are counted against the heads.

pub mod member;
pub mod render;
mod tally;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use switchboard_test_harness::{GatewayChild, WorkersChild};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::member::Ctx;
use super::{HANDSHAKE_TIMEOUT, Spec, create_room, join_room};
use crate::conn::{self, Conn, Gen, Opts, Totals};
use crate::metrics::{CpuUse, Latency, Servers};
use crate::net::{PER_SOURCE_IP, Sources, WsUrl};
use crate::rng::Rng;
use crate::wire::{self, Target};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The gateway binary (two processes are started, one is killed).
    #[arg(long)]
    pub gateway_bin: PathBuf,
    /// The workers binary: a `presence` worker is started beside the
    /// gateways (it reaps the killed gateway's connections). Without it the
    /// services already running are used as they are.
    #[arg(long)]
    pub workers_bin: Option<PathBuf>,
    /// NATS the gateways use (loopback).
    #[arg(long)]
    pub nats_url: String,
    /// Redis the gateways use (loopback).
    #[arg(long)]
    pub redis_url: String,
    /// Pids of the rest of the stack (rooms worker, NATS, Redis), for CPU
    /// accounting and the quiet wait.
    #[arg(long = "stack-pid")]
    pub stack_pids: Vec<u32>,
    /// Room members, spread over both gateways.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Rooms (one publisher each).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Messages per second per room.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Upper end of the uniform random wait before the first reconnect, ms.
    #[arg(long, default_value_t = 1000)]
    pub backoff_ms: u64,
    /// Publishing before the kill, seconds.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Publishing after the kill, seconds.
    #[arg(long, default_value_t = 8.0)]
    pub after_kill: f64,
    /// Longest wait for every member to reach the head once publishing stops, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Seed of the backoff draws (default: fresh, printed in the report).
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value = "demo")]
    pub app: String,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The `reconnect` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    pub clients: usize,
    pub clients_joined: usize,
    pub rooms: usize,
    pub rate: f64,
    pub backoff_max_ms: u64,
    pub backoff_policy: String,
    pub seed: u64,
    pub warmup_s: f64,
    pub after_kill_s: f64,
    /// Members on the killed gateway that saw their socket close.
    pub killed_clients: usize,
    /// Of those, members that resumed on the survivor.
    pub resumed: usize,
    /// Reconnect attempts (a member's first try counts as one).
    pub attempts: u64,
    /// Kill → the member's socket seen closed.
    pub noticed: Latency,
    /// The drawn wait before the first reconnect.
    pub backoff: Latency,
    /// Kill → `welcome` from the survivor (the handshake done).
    #[serde(default)]
    pub connected: Latency,
    /// Kill → reply to the resume `rooms.join`.
    pub resumed_at: Latency,
    /// Kill → first message received after the resume: the headline figure.
    pub first_message: Latency,
    /// Resumed members that got no message after resuming (their time is
    /// the join reply's in `first_message`).
    pub no_message_after_resume: usize,
    /// Messages published (sum of the rooms' head seqs minus their seqs at
    /// the first join).
    pub published: u64,
    /// Deliveries owed: every joined member, every seq after its join up to
    /// the head.
    pub expected: u64,
    pub delivered: u64,
    /// Owed seqs never received, all members; then split.
    pub missed: u64,
    pub missed_killed: u64,
    pub missed_surviving: u64,
    /// Seqs received more than once (each extra reception counts).
    pub duplicates: u64,
    pub duplicates_killed: u64,
    pub duplicates_surviving: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    /// Members that had not reached the head when the drain ended.
    pub incomplete: usize,
    pub errors: BTreeMap<String, u64>,
    pub unexpected_drops: BTreeMap<String, u64>,
    pub publish_errors: BTreeMap<String, u64>,
    pub setup_s: f64,
    pub drain_s: f64,
    /// CPU from the kill to the end of the drain.
    pub cpu: CpuUse,
}

impl Report {
    /// The target: p99 of kill → first message after resume below 2 s.
    pub fn p99_met(&self) -> bool {
        self.first_message.count > 0 && self.first_message.p99_ms < 2000.0
    }
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    let r = run(&args).await?;
    print_summary(&r);
    super::emit(&r, args.json.as_deref())
}

pub fn print_summary(r: &Report) {
    eprintln!(
        "reconnect: {} of {} killed members resumed; kill → first message p50 {:.0} p99 {:.0} max {:.0} ms (backoff p99 {:.0} ms); missed {}, duplicates {}, gaps {}",
        r.resumed,
        r.killed_clients,
        r.first_message.p50_ms,
        r.first_message.p99_ms,
        r.first_message.max_ms,
        r.backoff.p99_ms,
        r.missed,
        r.duplicates,
        r.gaps
    );
}

/// Runs the scenario inside `make bench`'s suite: its own two gateways
/// beside the suite's stack (`back`: rooms worker, NATS, Redis), whose
/// gateway stays idle meanwhile.
pub async fn in_suite(s: &crate::suite::Args, back: &[u32]) -> anyhow::Result<Report> {
    let missing = |what: &str| anyhow::anyhow!("reconnect needs {what}");
    let a = Args {
        gateway_bin: s
            .sb_gateway_bin
            .clone()
            .ok_or_else(|| missing("--sb-gateway-bin"))?,
        workers_bin: s.sb_workers_bin.clone(),
        nats_url: s
            .sb_nats_url
            .clone()
            .ok_or_else(|| missing("--sb-nats-url"))?,
        redis_url: s
            .sb_redis_url
            .clone()
            .ok_or_else(|| missing("--sb-redis-url"))?,
        stack_pids: back.to_vec(),
        clients: s.reconnect_clients,
        rooms: s.reconnect_rooms,
        rate: s.reconnect_rate,
        backoff_ms: s.reconnect_backoff_ms,
        warmup: 3.0,
        after_kill: 8.0,
        drain: 10.0,
        seed: None,
        app: s.app.clone(),
        json: None,
    };
    run(&a).await
}

/// Runs the scenario: starts the gateways (and the presence worker), drives
/// the clients, stops what it started.
pub async fn run(args: &Args) -> anyhow::Result<Report> {
    crate::check_nats_url(&args.nats_url)?;
    anyhow::ensure!(args.rooms > 0 && args.clients > 0, "need rooms and clients");
    let need = args.clients + args.rooms + 64;
    let cap = super::connect::fd_capacity();
    anyhow::ensure!(
        need <= cap,
        "reconnect needs ~{need} sockets in this process but the open-file limit allows {cap}: raise `ulimit -n`"
    );
    let seed = args.seed.unwrap_or_else(Rng::fresh_seed);
    let dir = std::env::temp_dir().join(format!("sb-reconnect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut env = vec![
        ("SB_NATS__URL".to_owned(), args.nats_url.clone()),
        ("SB_REDIS__URL".to_owned(), args.redis_url.clone()),
        // The load generator drives users faster than people do.
        ("SB_LIMITS__ENABLED".to_owned(), "false".to_owned()),
    ];
    if std::env::var_os("SB_LOG__FILTER").is_none() {
        env.push(("SB_LOG__FILTER".into(), "warn".into()));
    }
    let started = Instant::now();
    let survivor = GatewayChild::start(
        "gateway-a",
        &args.gateway_bin,
        None,
        &env,
        &dir.join("gw-a.log"),
    )
    .await?;
    let mut doomed = GatewayChild::start(
        "gateway-b",
        &args.gateway_bin,
        None,
        &env,
        &dir.join("gw-b.log"),
    )
    .await?;
    let presence = match &args.workers_bin {
        Some(bin) => Some(WorkersChild::start(
            "presence",
            bin,
            &["presence"],
            &env,
            &dir.join("presence.log"),
        )?),
        None => None,
    };
    let mut back = args.stack_pids.clone();
    back.extend(presence.as_ref().map(|p| p.process.pid()));
    let servers = Servers {
        front: vec![survivor.process.pid(), doomed.process.pid()],
        back,
    };
    let spec = Spec::build(
        Target::Switchboard,
        &[survivor.ws_url(), doomed.ws_url()],
        servers.clone(),
        &args.app,
    )?;
    let r = drive(args, &spec, seed, started, &mut doomed).await;
    doomed.process.kill();
    drop(survivor);
    drop(presence);
    match &r {
        Ok(_) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(_) => eprintln!("reconnect: gateway logs kept in {}", dir.display()),
    }
    r
}

/// Opens every connection, runs the timeline and counts.
async fn drive(
    args: &Args,
    spec: &Spec,
    seed: u64,
    started: Instant,
    doomed: &mut GatewayChild,
) -> anyhow::Result<Report> {
    let (n, m) = (args.clients, args.rooms);
    let survivor = spec.urls[0].clone();
    let src_seed = Sources::random_seed();
    let first_block = Sources::new(src_seed, PER_SOURCE_IP);
    let pub_block = Sources::new(src_seed.wrapping_add(2), PER_SOURCE_IP);
    let rooms: Vec<String> = (0..m).map(|r| format!("{}-rc{r}", spec.run)).collect();
    let deadline = Instant::now() + Duration::from_secs(600);

    // Publishers, on the survivor: each creates and joins its room.
    let pub_stop = CancellationToken::new();
    let pub_opts = Opts {
        target: Target::Switchboard,
        stop: pub_stop.clone(),
        deadline,
        closed_loop: false,
    };
    let mut publishers: Vec<Conn> = Vec::with_capacity(m);
    for (r, room) in rooms.iter().enumerate() {
        let token = spec.tokens.for_user(&format!("{}-p{r}", spec.run))?;
        let (rd, wr) = conn::connect(
            Target::Switchboard,
            &survivor,
            pub_block.addr(r),
            token.as_deref(),
            HANDSHAKE_TIMEOUT,
        )
        .await
        .map_err(|e| anyhow::anyhow!("publisher {r}: {e}"))?;
        let mut c = Conn::spawn(rd, wr, &pub_opts);
        create_room(Target::Switchboard, &mut c, 1, room, 0).await?;
        join_room(Target::Switchboard, &mut c, 2, room).await?;
        publishers.push(c);
    }

    // Members: `i` on gateway `i mod 2`, in room `(i / 2) mod m`.
    let user_prefix = format!("{}-m", spec.run);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut opened = futures::stream::iter(0..n)
        .map(|i| {
            let url = &spec.urls[i % 2];
            let token = spec.tokens.for_user(&format!("{user_prefix}{i}"));
            async move {
                let r = match token {
                    Ok(t) => conn::connect(
                        Target::Switchboard,
                        url,
                        first_block.addr(i),
                        t.as_deref(),
                        HANDSHAKE_TIMEOUT,
                    )
                    .await
                    .map_err(|e| format!("connect: {}", e.kind())),
                    Err(e) => Err(format!("token: {e}")),
                };
                (i, r)
            }
        })
        .buffer_unordered(128);
    let mut conns = Vec::with_capacity(n);
    while let Some((i, r)) = opened.next().await {
        match r {
            Ok(c) => conns.push((i, c)),
            Err(kind) => *errors.entry(kind).or_default() += 1,
        }
    }
    drop(opened);
    anyhow::ensure!(!conns.is_empty(), "reconnect: no member could connect");
    let ctx = Arc::new(Ctx {
        survivor: survivor.clone(),
        sources: Sources::new(src_seed.wrapping_add(1), PER_SOURCE_IP),
        tokens: crate::tokens::Tokens::new(Target::Switchboard, &args.app)?,
        user_prefix,
        clients: n,
        seed,
        backoff_max: Duration::from_millis(args.backoff_ms),
        killed_at: std::sync::OnceLock::new(),
        progress: (0..n).map(|_| AtomicU64::new(u64::MAX)).collect(),
        join_gate: Semaphore::new(64),
        joined: AtomicUsize::new(0),
        stop: CancellationToken::new(),
        deadline,
    });
    let spawned = conns.len();
    let mut tasks = Vec::with_capacity(spawned);
    for (i, (rd, wr)) in conns {
        let ctx = ctx.clone();
        let room = (i / 2) % m;
        let name = rooms[room].clone();
        tasks.push(tokio::spawn(async move {
            member::run(&ctx, i, room, name, i % 2 == 1, rd, wr).await
        }));
    }
    let join_deadline = Instant::now() + Duration::from_secs(60);
    while ctx.joined.load(Ordering::Acquire) < spawned && Instant::now() < join_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the member_joined storm settle before the clock starts.
    spec.servers.wait_quiet(0.1, Duration::from_secs(15)).await;
    let setup_s = started.elapsed().as_secs_f64();

    // Steady publishing; the kill after the warm-up.
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.01));
    let until = Instant::now() + Duration::from_secs_f64(args.warmup + args.after_kill);
    for (r, p) in publishers.iter().enumerate() {
        let room = rooms[r].clone();
        p.start(Gen::Rate {
            interval,
            phase: interval.mul_f64(r as f64 / m as f64),
            until,
            max_inflight: Some(16),
            make: Box::new(move |t| wire::publish(Target::Switchboard, &room, t, 0)),
        });
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    // CPU from the kill on: the survivor and the rest of the stack.
    let window = Servers {
        front: spec.servers.front.iter().take(1).copied().collect(),
        back: spec.servers.back.clone(),
    };
    let before = window.snapshot();
    let _ = ctx.killed_at.set(Instant::now());
    doomed.process.kill();
    eprintln!("   gateway {} killed (SIGKILL)", doomed.addr);

    tokio::time::sleep_until(until + Duration::from_secs(2)).await;
    pub_stop.cancel();
    let mut pub_totals = Totals::new();
    for p in publishers {
        let (r, w) = p.finish().await;
        pub_totals.add(r, w);
    }
    let heads = read_heads(&survivor, pub_block.addr(m + 1), spec, &rooms).await?;

    let drain_start = Instant::now();
    let drain_end = drain_start + Duration::from_secs_f64(args.drain);
    loop {
        let behind = (0..n).any(|i| {
            let p = ctx.progress[i].load(Ordering::Relaxed);
            p != u64::MAX && p < heads[(i / 2) % m]
        });
        if !behind || Instant::now() >= drain_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain_s = drain_start.elapsed().as_secs_f64();
    let after = window.snapshot();
    ctx.stop.cancel();
    let mut outcomes = Vec::with_capacity(spawned);
    for t in tasks {
        match t.await {
            Ok(o) => outcomes.push(o),
            Err(_) => *errors.entry("member task panicked".into()).or_default() += 1,
        }
    }
    let mut report = tally::tally(args, seed, &outcomes, &heads, errors);
    report.publish_errors = pub_totals.errors;
    for (k, v) in pub_totals.ended {
        *report
            .publish_errors
            .entry(format!("publisher: {k}"))
            .or_default() += v;
    }
    report.setup_s = setup_s;
    report.drain_s = drain_s;
    report.cpu = after.since(&before);
    Ok(report)
}

/// Each room's head seq, read with `rooms.info` on a fresh connection.
async fn read_heads(
    url: &WsUrl,
    src: std::net::SocketAddrV4,
    spec: &Spec,
    rooms: &[String],
) -> anyhow::Result<Vec<u64>> {
    let token = spec.tokens.for_user(&format!("{}-checker", spec.run))?;
    let (mut rd, mut wr) = conn::connect(
        Target::Switchboard,
        url,
        src,
        token.as_deref(),
        HANDSHAKE_TIMEOUT,
    )
    .await
    .map_err(|e| anyhow::anyhow!("checker: {e}"))?;
    let mut heads = Vec::with_capacity(rooms.len());
    for (r, room) in rooms.iter().enumerate() {
        let id = 10 + r as u64;
        let (ok, reply) = member::call(&mut rd, &mut wr, id, wire::room_info(id, room))
            .await
            .map_err(|e| anyhow::anyhow!("rooms.info {room}: {e}"))?;
        anyhow::ensure!(ok, "rooms.info {room}: {}", member::error_code(&reply));
        heads.push(wire::number_after(&reply, b"\"seq\":").unwrap_or(0));
    }
    Ok(heads)
}
