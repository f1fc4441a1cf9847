//! `fanout`: one room with M members and one publisher at a set rate.
//! Reports deliveries per second, latency percentiles, and deliveries per
//! second of front-process CPU (the "per gateway core" figure: the client
//! shares the machine, so wall-clock throughput alone would undersell it).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Common, Spec, create_room, emit, join_room, open_many, ratio};
use crate::conn::{Gen, Opts, Totals};
use crate::metrics::{CpuUse, Latency, per_million};
use crate::net::{PER_SOURCE_IP, Sources};
use crate::wire;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Receiving members (the publisher comes on top).
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Messages per second from the publisher.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Publishing time, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Time allowed after publishing stops for deliveries, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    pub members: usize,
    pub members_joined: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub published: u64,
    pub expected: u64,
    pub delivered: u64,
    pub delivered_ratio: Option<f64>,
    /// Deliveries per wall-clock second of publishing.
    pub deliveries_per_s: f64,
    /// Deliveries per CPU-second of the front process ("per core").
    pub deliveries_per_front_cpu_s: Option<f64>,
    pub latency: Latency,
    pub publish_errors: BTreeMap<String, u64>,
    pub skipped_inflight: u64,
    pub gaps: u64,
    pub connection_errors: BTreeMap<String, u64>,
    pub cpu: CpuUse,
    pub front_cpu_s_per_m: Option<f64>,
    pub stack_cpu_s_per_m: Option<f64>,
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    let spec = Spec::new(&args.common)?;
    let r = run(&spec, &args).await?;
    eprintln!(
        "fanout[{}]: {}/{} delivered, {:.0}/s, {:.0}/front-cpu-s, p50 {:.2} ms p99 {:.2} ms",
        r.target,
        r.delivered,
        r.expected,
        r.deliveries_per_s,
        r.deliveries_per_front_cpu_s.unwrap_or(0.0),
        r.latency.p50_ms,
        r.latency.p99_ms
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
        args.members + 1,
        0,
        Sources::new(Sources::random_seed(), PER_SOURCE_IP),
        64,
        &format!("{}-f", spec.run),
        &opts,
    )
    .await;
    let mut connection_errors = opened.errors.clone();
    let mut conns: Vec<_> = opened.conns.into_iter().flatten().collect();
    anyhow::ensure!(!conns.is_empty(), "fanout: no connection could be opened");
    let mut publisher = conns.remove(0);
    let room = format!("{}-fan", spec.run);
    create_room(target, &mut publisher, 1, &room, 0).await?;
    join_room(target, &mut publisher, 2, &room).await?;
    let joined: Vec<_> = futures::stream::iter(conns)
        .map(|mut c| {
            let room = room.clone();
            async move {
                let r = join_room(target, &mut c, 3, &room).await;
                (c, r)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut members = Vec::new();
    let mut members_joined = 0;
    for (c, r) in joined {
        if r.is_ok() {
            members_joined += 1;
        }
        if let Err(e) = r {
            *connection_errors
                .entry(format!(
                    "join: {}",
                    e.to_string().chars().take(60).collect::<String>()
                ))
                .or_insert(0) += 1;
        }
        members.push(c);
    }
    // Let the member_joined storm (Switchboard tells every member about every
    // join) finish before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    spec.servers.wait_quiet(0.05, Duration::from_secs(20)).await;

    let before = spec.servers.snapshot();
    let start = Instant::now();
    let until = start + duration;
    let room_for_pub = room.clone();
    publisher.start(Gen::Rate {
        interval: Duration::from_secs_f64(1.0 / args.rate.max(0.001)),
        phase: Duration::ZERO,
        until,
        max_inflight: target.publish_replies().then_some(48),
        make: Box::new(move |t| wire::publish(target, &room_for_pub, t, 0)),
    });
    tokio::time::sleep_until(until + drain).await;
    let after = spec.servers.snapshot();
    stop.cancel();
    let (pr, pw) = publisher.finish().await;
    let mut pub_totals = Totals::new();
    pub_totals.add(pr, pw);
    let t = Totals::collect(members).await;
    for (k, v) in t.ended.iter().chain(&pub_totals.ended) {
        *connection_errors.entry(k.clone()).or_insert(0) += v;
    }
    let published = pub_totals.sent;
    let expected = published * members_joined as u64;
    let delivered = t.messages.len();
    let cpu = after.since(&before);
    Ok(Report {
        target: target.name().to_owned(),
        members: args.members,
        members_joined,
        rate: args.rate,
        duration_s: duration.as_secs_f64(),
        published,
        expected,
        delivered,
        delivered_ratio: ratio(delivered as f64, expected as f64),
        deliveries_per_s: delivered as f64 / duration.as_secs_f64(),
        deliveries_per_front_cpu_s: ratio(delivered as f64, cpu.front_s),
        latency: Latency::of(&t.messages),
        publish_errors: pub_totals.errors.clone(),
        skipped_inflight: pub_totals.skipped,
        gaps: t.gaps,
        connection_errors,
        front_cpu_s_per_m: per_million(cpu.front_s, delivered),
        stack_cpu_s_per_m: per_million(cpu.stack_s, delivered),
        cpu,
    })
}
