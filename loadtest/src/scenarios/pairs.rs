//! `pairs`: P couples, each in its own two-member room, both sides publishing
//! at a set rate (the swipe-sync case). Reports delivery latency, the
//! delivered/sent ratio and server CPU per million delivered messages, and
//! checks the floors a product team asked for: p95 < 500 ms, more than 95 %
//! delivered, more than 100 concurrent sessions.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Common, Spec, create_room, emit, join_room, open_many, ratio};
use crate::conn::{Conn, Gen, Opts, Totals};
use crate::metrics::{CpuUse, Latency, per_million};
use crate::net::{PER_SOURCE_IP, Sources};
use crate::wire;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Couples (sessions); each is two connections in one room.
    #[arg(long, default_value_t = 250)]
    pub pairs: usize,
    /// Messages per second sent by each side.
    #[arg(long, default_value_t = 4.0)]
    pub rate: f64,
    /// Sending time, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Time allowed after sending stops for deliveries to arrive, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
}

/// The floors the product team asked for.
pub const FLOOR_P95_MS: f64 = 500.0;
pub const FLOOR_DELIVERED: f64 = 0.95;
pub const FLOOR_SESSIONS: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Floors {
    pub p95_under_500ms: bool,
    pub delivered_over_95pct: bool,
    pub sessions_over_100: bool,
    pub all_met: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    pub pairs: usize,
    pub sessions: usize,
    pub rate_per_side: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub delivered: u64,
    pub delivered_ratio: Option<f64>,
    pub latency: Latency,
    /// Switchboard only: publish request → reply.
    pub publish_ack: Latency,
    pub publish_errors: BTreeMap<String, u64>,
    pub skipped_inflight: u64,
    pub gaps: u64,
    pub connection_errors: BTreeMap<String, u64>,
    pub cpu: CpuUse,
    pub front_cpu_s_per_m: Option<f64>,
    pub stack_cpu_s_per_m: Option<f64>,
    pub floors: Floors,
}

impl Floors {
    pub fn of(latency: &Latency, delivered_ratio: Option<f64>, sessions: usize) -> Self {
        let p95 = latency.count > 0 && latency.p95_ms < FLOOR_P95_MS;
        let delivered = delivered_ratio.is_some_and(|r| r > FLOOR_DELIVERED);
        let sessions = sessions > FLOOR_SESSIONS;
        Self {
            p95_under_500ms: p95,
            delivered_over_95pct: delivered,
            sessions_over_100: sessions,
            all_met: p95 && delivered && sessions,
        }
    }
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    let spec = Spec::new(&args.common)?;
    let r = run(&spec, &args).await?;
    eprintln!(
        "pairs[{}]: {} sessions, {}/{} delivered, p50 {:.2} ms p95 {:.2} ms p99 {:.2} ms max {:.2} ms, floors met: {}",
        r.target,
        r.sessions,
        r.delivered,
        r.sent,
        r.latency.p50_ms,
        r.latency.p95_ms,
        r.latency.p99_ms,
        r.latency.max_ms,
        r.floors.all_met
    );
    emit(&r, args.common.json.as_deref())
}

pub async fn run(spec: &Spec, args: &Args) -> anyhow::Result<Report> {
    let target = spec.target;
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let drain = Duration::from_secs_f64(args.drain.max(0.0));
    let stop = CancellationToken::new();
    let opts = Opts {
        target,
        stop: stop.clone(),
        deadline: Instant::now() + Duration::from_secs(300) + duration + drain,
        closed_loop: false,
    };
    spec.servers.wait_quiet(0.05, Duration::from_secs(15)).await;
    let opened = open_many(
        spec,
        args.pairs * 2,
        0,
        Sources::new(Sources::random_seed(), PER_SOURCE_IP),
        64,
        &format!("{}-p", spec.run),
        &opts,
    )
    .await;
    let mut connection_errors = opened.errors.clone();
    let mut conns = opened.conns;

    // Set up the couples: room 2i holds connections 2i and 2i+1.
    let mut couples: Vec<(usize, Conn, Conn)> = Vec::new();
    let mut it = conns.drain(..);
    let mut i = 0;
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        if let (Some(a), Some(b)) = (a, b) {
            couples.push((i, a, b));
        }
        i += 1;
    }
    drop(it);
    let run = spec.run.clone();
    let set_up: Vec<_> = futures::stream::iter(couples)
        .map(|(i, mut a, mut b)| {
            let room = format!("{run}-p{i}");
            async move {
                let r = async {
                    create_room(target, &mut a, 1, &room, 2).await?;
                    join_room(target, &mut a, 2, &room).await?;
                    join_room(target, &mut b, 3, &room).await
                }
                .await;
                (i, room, a, b, r)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut ready = Vec::new();
    let mut failed = Vec::new();
    for (i, room, a, b, r) in set_up {
        match r {
            Ok(()) => ready.push((i, room, a, b)),
            Err(e) => {
                *connection_errors
                    .entry(format!(
                        "setup: {}",
                        e.to_string().chars().take(60).collect::<String>()
                    ))
                    .or_insert(0) += 1;
                failed.push(a);
                failed.push(b);
            }
        }
    }
    let sessions = ready.len();
    // member_joined pushes and other setup traffic settle before measuring.
    tokio::time::sleep(Duration::from_millis(300)).await;
    spec.servers.wait_quiet(0.05, Duration::from_secs(10)).await;

    let before = spec.servers.snapshot();
    let start = Instant::now();
    let until = start + duration;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let total = (sessions * 2).max(1) as f64;
    let max_inflight = target.publish_replies().then_some(48);
    let mut all = Vec::new();
    for (k, (i, room, a, b)) in ready.into_iter().enumerate() {
        for (side, c) in [(0u32, a), (1u32, b)] {
            // Spread the first sends over one interval.
            let slot = (2 * k + side as usize) as f64 / total;
            let sender = (2 * i) as u32 + side;
            let room = room.clone();
            c.start(Gen::Rate {
                interval,
                phase: interval.mul_f64(slot),
                until,
                max_inflight,
                make: Box::new(move |t| wire::publish(target, &room, t, sender)),
            });
            all.push(c);
        }
    }
    tokio::time::sleep_until(until + drain).await;
    let after = spec.servers.snapshot();
    stop.cancel();
    for c in failed {
        c.abort();
    }
    let t: Totals = Totals::collect(all).await;
    for (k, v) in &t.ended {
        *connection_errors.entry(k.clone()).or_insert(0) += v;
    }
    let delivered = t.messages.len();
    let latency = Latency::of(&t.messages);
    let delivered_ratio = ratio(delivered as f64, t.sent as f64);
    let floors = Floors::of(&latency, delivered_ratio, sessions);
    let cpu = after.since(&before);
    Ok(Report {
        target: target.name().to_owned(),
        pairs: args.pairs,
        sessions,
        rate_per_side: args.rate,
        duration_s: duration.as_secs_f64(),
        sent: t.sent,
        delivered,
        delivered_ratio,
        latency,
        publish_ack: Latency::of(&t.replies),
        publish_errors: t.errors.clone(),
        skipped_inflight: t.skipped,
        gaps: t.gaps,
        connection_errors,
        front_cpu_s_per_m: per_million(cpu.front_s, delivered),
        stack_cpu_s_per_m: per_million(cpu.stack_s, delivered),
        cpu,
        floors,
    })
}
