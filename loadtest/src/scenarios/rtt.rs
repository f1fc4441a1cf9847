//! `rtt`: request → reply through a worker (Switchboard, B2) or the server
//! itself (B1 echo, Socket.IO ack). Closed loop by default (each connection
//! keeps `window` requests outstanding): throughput and latency
//! percentiles. With `--rate` it is open loop at a fixed offered load, which
//! is how tail latencies are compared between systems.
//!
//! For Switchboard the op is configurable. `rooms.echo` does not exist, so the
//! rooms worker answers it with `unknown_op` without touching Redis: the same
//! path as B2 (gateway → NATS → worker → NATS → gateway) with Switchboard's
//! envelope, auth context and routing. `rooms.info` adds the worker's two
//! Redis round trips.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Common, Spec, create_room, emit, open_many};
use crate::conn::{Gen, Opts, Totals};
use crate::metrics::{CpuUse, Latency, per_million};
use crate::net::{PER_SOURCE_IP, Sources};
use crate::wire::{self, Target};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Client connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Requests outstanding per connection (closed loop).
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// Open loop at this many requests per second in total (0: closed loop).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Measuring time, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Switchboard op to call.
    #[arg(long, default_value = "rooms.echo")]
    pub op: String,
    /// An error code that counts as the expected answer (`unknown_op` for
    /// `rooms.echo`).
    #[arg(long, default_value = "unknown_op")]
    pub expect_error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    pub op: String,
    pub mode: String,
    pub connections: usize,
    pub window: usize,
    pub offered_rate: Option<f64>,
    pub duration_s: f64,
    pub sent: u64,
    pub answered: u64,
    /// Answered requests per second.
    pub throughput: f64,
    pub latency: Latency,
    pub unexpected_errors: BTreeMap<String, u64>,
    pub skipped_inflight: u64,
    pub connection_errors: BTreeMap<String, u64>,
    pub cpu: CpuUse,
    pub front_cpu_s_per_m: Option<f64>,
    pub stack_cpu_s_per_m: Option<f64>,
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    let spec = Spec::new(&args.common)?;
    let r = run(&spec, &args).await?;
    eprintln!(
        "rtt[{} {} {}]: {:.0} req/s, p50 {:.3} ms p99 {:.3} ms, unexpected {:?}",
        r.target,
        r.op,
        r.mode,
        r.throughput,
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.unexpected_errors
    );
    emit(&r, args.common.json.as_deref())
}

pub async fn run(spec: &Spec, args: &Args) -> anyhow::Result<Report> {
    let target = spec.target;
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let closed = args.rate <= 0.0;
    let stop = CancellationToken::new();
    let opts = Opts {
        target,
        stop: stop.clone(),
        deadline: Instant::now() + Duration::from_secs(300) + duration,
        closed_loop: closed,
    };
    spec.servers.wait_quiet(0.05, Duration::from_secs(15)).await;
    let opened = open_many(
        spec,
        args.connections,
        0,
        Sources::new(Sources::random_seed(), PER_SOURCE_IP),
        64,
        &format!("{}-r", spec.run),
        &opts,
    )
    .await;
    let mut connection_errors = opened.errors.clone();
    let mut conns: Vec<_> = opened.conns.into_iter().flatten().collect();
    anyhow::ensure!(!conns.is_empty(), "rtt: no connection could be opened");
    let room = format!("{}-rtt", spec.run);
    if let Some(first) = conns.first_mut() {
        create_room(target, first, 1, &room, 0).await?;
    }
    let op = if target == Target::Switchboard {
        args.op.clone()
    } else {
        "echo".to_owned()
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let before = spec.servers.snapshot();
    let until = Instant::now() + duration;
    let n = conns.len();
    let per_conn = (args.rate.max(0.0) / n as f64).max(0.001);
    for (i, c) in conns.iter().enumerate() {
        let op = op.clone();
        let room = room.clone();
        let make: crate::conn::MakeFn = Box::new(move |t| wire::request(target, t, &op, &room));
        let g = if closed {
            Gen::Closed {
                window: args.window.max(1),
                until,
                make,
            }
        } else {
            let interval = Duration::from_secs_f64(1.0 / per_conn);
            Gen::Rate {
                interval,
                phase: interval.mul_f64(i as f64 / n as f64),
                until,
                max_inflight: Some(48),
                make,
            }
        };
        c.start(g);
    }
    tokio::time::sleep_until(until).await;
    let after = spec.servers.snapshot();
    // Replies to the last requests may still be on their way; they are not
    // counted (the window is over) but must not be cut mid-frame.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let t = Totals::collect(conns).await;
    for (k, v) in &t.ended {
        *connection_errors.entry(k.clone()).or_insert(0) += v;
    }
    let mut unexpected = t.errors.clone();
    let expected_errors = if target == Target::Switchboard {
        unexpected.remove(&args.expect_error).unwrap_or(0)
    } else {
        0
    };
    let answered = t.replies_ok + expected_errors;
    let cpu = after.since(&before);
    Ok(Report {
        target: target.name().to_owned(),
        op,
        mode: if closed { "closed" } else { "open" }.to_owned(),
        connections: n,
        window: args.window.max(1),
        offered_rate: (!closed).then_some(args.rate),
        duration_s: duration.as_secs_f64(),
        sent: t.sent,
        answered,
        throughput: answered as f64 / duration.as_secs_f64(),
        latency: Latency::of(&t.replies),
        unexpected_errors: unexpected,
        skipped_inflight: t.skipped,
        connection_errors,
        front_cpu_s_per_m: per_million(cpu.front_s, answered),
        stack_cpu_s_per_m: per_million(cpu.stack_s, answered),
        cpu,
    })
}
