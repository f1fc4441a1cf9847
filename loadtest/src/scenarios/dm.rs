//! `dm`: a messenger's shape. N users, each in K small rooms, all on the
//! gateway under test: `distinct` gives every user its own K rooms (N × K
//! rooms, one member each on this gateway; the other member of a
//! one-to-one room would be on another gateway or offline, which costs
//! this gateway the same), `shared` puts all N users in the same K rooms.
//! Reports the gateway's RSS per membership (RSS after the joins minus RSS
//! after the connections, over N × K), join throughput, and gateway CPU per
//! delivered message while members publish at a fixed rate into their rooms
//! (with `echo`, so each message of a one-member room is delivered once, to
//! its sender). The shared shape runs first: freed memory a process keeps
//! would otherwise make the second shape look cheaper than it is. RSS
//! figures are meaningful on a freshly started gateway
//! (`BENCH_SCENARIOS=dm make bench`).

use std::fmt::Write as _;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Common, Spec, create_room, emit, open_many, ratio};
use crate::conn::{Conn, Gen, Opts, Totals};
use crate::metrics::{CpuUse, Latency};
use crate::net::{PER_SOURCE_IP, Sources};
use crate::wire::{self, Target};

/// Target: gateway memory per membership of a room with no other local
/// member (KiB).
pub const DISTINCT_TARGET_KIB: f64 = 1.0;
/// Target: gateway memory per membership of a room shared by many local
/// members (KiB).
pub const SHARED_TARGET_KIB: f64 = 0.1;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Users (connections).
    #[arg(long, default_value_t = 500)]
    pub users: usize,
    /// Rooms per user.
    #[arg(long, default_value_t = 20)]
    pub rooms: usize,
    /// Messages per second into distinct rooms (all users together).
    #[arg(long, default_value_t = 500.0)]
    pub distinct_rate: f64,
    /// Messages per second into shared rooms (each reaches every user).
    #[arg(long, default_value_t = 10.0)]
    pub shared_rate: f64,
    /// Publishing time per shape, seconds.
    #[arg(long, default_value_t = 8.0)]
    pub duration: f64,
}

/// One shape's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Shape {
    pub shape: String,
    pub users: usize,
    pub rooms_per_user: usize,
    pub distinct_rooms: usize,
    pub memberships: u64,
    pub joins_failed: u64,
    pub rss_connected_kib: u64,
    pub rss_joined_kib: u64,
    pub rss_per_membership_kib: Option<f64>,
    pub target_kib: f64,
    pub met: Option<bool>,
    pub join_secs: f64,
    pub joins_per_s: f64,
    pub rate: f64,
    pub published: u64,
    pub delivered: u64,
    /// Gateway CPU microseconds per delivered message.
    pub front_cpu_us_per_delivery: Option<f64>,
    pub latency: Latency,
    pub gaps: u64,
    pub cpu: CpuUse,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    pub shared: Shape,
    pub distinct: Shape,
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    let spec = Spec::new(&args.common)?;
    let r = run(&spec, &args).await?;
    print_summary(&r);
    emit(&r, args.common.json.as_deref())
}

pub fn print_summary(r: &Report) {
    for s in [&r.shared, &r.distinct] {
        eprintln!(
            "dm[{} {}]: {} memberships, {:.2} KiB each ({}), {:.0} joins/s, {}/{} delivered, {:.1} gateway CPU-us per delivery",
            r.target,
            s.shape,
            s.memberships,
            s.rss_per_membership_kib.unwrap_or(f64::NAN),
            verdict(s.met),
            s.joins_per_s,
            s.delivered,
            s.published,
            s.front_cpu_us_per_delivery.unwrap_or(f64::NAN),
        );
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "MET",
        Some(false) => "MISS",
        None => "n/a",
    }
}

pub async fn run(spec: &Spec, args: &Args) -> anyhow::Result<Report> {
    anyhow::ensure!(
        spec.target == Target::Switchboard,
        "dm runs against Switchboard only"
    );
    let shared = shape(spec, args, false).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let distinct = shape(spec, args, true).await?;
    Ok(Report {
        target: spec.target.name().to_owned(),
        shared,
        distinct,
    })
}

/// A publish with `echo`, so the sender gets its message too.
fn publish_echo(room: &str, t_us: u64) -> String {
    let mut s = wire::publish(Target::Switchboard, room, t_us, 0);
    // `…,"data":{…}}}`: close the request's data with `echo`.
    s.truncate(s.len().saturating_sub(2));
    s.push_str(",\"echo\":true}}");
    s
}

async fn shape(spec: &Spec, args: &Args, distinct: bool) -> anyhow::Result<Shape> {
    let target = spec.target;
    let name = if distinct { "distinct" } else { "shared" };
    let (n, k) = (args.users.max(1), args.rooms.max(1));
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let drain = Duration::from_secs(2);
    let stop = CancellationToken::new();
    let opts = Opts {
        target,
        stop: stop.clone(),
        deadline: Instant::now() + Duration::from_secs(600) + duration + drain,
        closed_loop: false,
    };
    let room_of = |user: usize, i: usize| {
        if distinct {
            format!("{}-dm{user}-{i}", spec.run)
        } else {
            format!("{}-dms-{i}", spec.run)
        }
    };
    spec.servers.wait_quiet(0.05, Duration::from_secs(15)).await;
    let opened = open_many(
        spec,
        n,
        0,
        Sources::new(Sources::random_seed(), PER_SOURCE_IP),
        64,
        &format!("{}-{name}", spec.run),
        &opts,
    )
    .await;
    let conns: Vec<(usize, Conn)> = opened
        .conns
        .into_iter()
        .enumerate()
        .filter_map(|(i, c)| c.map(|c| (i, c)))
        .collect();
    anyhow::ensure!(!conns.is_empty(), "dm: no connection could be opened");
    // Rooms first (they cost the gateway nothing to keep).
    let conns: Vec<(usize, Conn)> = futures::stream::iter(conns.into_iter().enumerate())
        .map(|(idx, (u, mut c))| {
            let rooms: Vec<String> = if distinct || idx == 0 {
                (0..k).map(|i| room_of(u, i)).collect()
            } else {
                Vec::new()
            };
            async move {
                for (i, room) in rooms.iter().enumerate() {
                    if let Err(e) = create_room(target, &mut c, 1 + i as u64, room, 0).await {
                        eprintln!("dm: {e}");
                    }
                }
                (u, c)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    spec.servers.wait_quiet(0.05, Duration::from_secs(20)).await;
    let connected = spec.servers.snapshot().front_rss_kib;

    let t0 = Instant::now();
    let joined: Vec<(usize, Conn, u64, u64)> = futures::stream::iter(conns)
        .map(|(u, mut c)| {
            let rooms: Vec<String> = (0..k).map(|i| room_of(u, i)).collect();
            async move {
                let (mut ok, mut failed) = (0, 0);
                for (i, room) in rooms.iter().enumerate() {
                    match super::join_room(target, &mut c, 100 + i as u64, room).await {
                        Ok(()) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (u, c, ok, failed)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let join_secs = t0.elapsed().as_secs_f64();
    let memberships: u64 = joined.iter().map(|j| j.2).sum();
    let joins_failed: u64 = joined.iter().map(|j| j.3).sum();
    // Let the member_joined pushes of the shared rooms settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    spec.servers.wait_quiet(0.05, Duration::from_secs(20)).await;
    let after_joins = spec.servers.snapshot().front_rss_kib;
    let per = ratio(
        after_joins.saturating_sub(connected) as f64,
        memberships as f64,
    );
    let target_kib = if distinct {
        DISTINCT_TARGET_KIB
    } else {
        SHARED_TARGET_KIB
    };

    // Publishing at a fixed rate, spread over the users (distinct) or over
    // a few of them (shared, where each message reaches every user).
    let rate = if distinct {
        args.distinct_rate
    } else {
        args.shared_rate
    }
    .max(0.001);
    let publishers = (rate.ceil() as usize).clamp(1, joined.len());
    let interval = Duration::from_secs_f64(publishers as f64 / rate);
    let before = spec.servers.snapshot();
    let start = Instant::now();
    let until = start + duration;
    let mut conns = Vec::with_capacity(joined.len());
    for (idx, (u, c, _, _)) in joined.into_iter().enumerate() {
        if idx < publishers {
            let rooms: Vec<String> = (0..k).map(|i| room_of(u, i)).collect();
            let mut next = idx;
            c.start(Gen::Rate {
                interval,
                phase: interval.mul_f64(idx as f64 / publishers as f64),
                until,
                max_inflight: Some(16),
                make: Box::new(move |t| {
                    next += 1;
                    publish_echo(&rooms[next % rooms.len()], t)
                }),
            });
        }
        conns.push(c);
    }
    tokio::time::sleep_until(until + drain).await;
    let after = spec.servers.snapshot();
    stop.cancel();
    let t = Totals::collect(conns).await;
    let delivered = t.messages.len();
    let cpu = after.since(&before);
    Ok(Shape {
        shape: name.to_owned(),
        users: n,
        rooms_per_user: k,
        distinct_rooms: if distinct { n * k } else { k },
        memberships,
        joins_failed,
        rss_connected_kib: connected,
        rss_joined_kib: after_joins,
        rss_per_membership_kib: per,
        target_kib,
        met: per.map(|p| p <= target_kib),
        join_secs,
        joins_per_s: memberships as f64 / join_secs.max(1e-9),
        rate,
        published: t.sent,
        delivered,
        front_cpu_us_per_delivery: ratio(cpu.front_s * 1e6, delivered as f64),
        latency: Latency::of(&t.messages),
        gaps: t.gaps,
        cpu,
    })
}

/// The report's section for `dm`.
pub fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## dm: memory per room membership\n");
    let _ = writeln!(
        md,
        "{} users on one gateway, each in {} rooms: `distinct` (every user has its own rooms: {} rooms with one member on this gateway; the other member of a one-to-one room would be on another gateway or offline) and `shared` (every user in the same {} rooms). RSS per membership = (gateway RSS after the joins − after the connections) / memberships. Publishing with `echo` at a fixed rate, so each message is delivered at least to its sender.\n",
        r.distinct.users,
        r.distinct.rooms_per_user,
        r.distinct.distinct_rooms,
        r.shared.rooms_per_user
    );
    let _ = writeln!(
        md,
        "| shape | memberships | RSS per membership | target | verdict | joins/s | msg/s | delivered | gateway CPU µs per delivery | p50 ms | p99 ms |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for s in [&r.distinct, &r.shared] {
        let _ = writeln!(
            md,
            "| {} | {} | {} KiB | ≤ {} KiB | {} | {:.0} | {} | {} | {} | {:.2} | {:.2} |",
            s.shape,
            s.memberships,
            s.rss_per_membership_kib
                .map_or("n/a".into(), |v| format!("{v:.2}")),
            s.target_kib,
            verdict(s.met),
            s.joins_per_s,
            s.rate,
            s.delivered,
            s.front_cpu_us_per_delivery
                .map_or("n/a".into(), |v| format!("{v:.1}")),
            s.latency.p50_ms,
            s.latency.p99_ms,
        );
    }
    let _ = writeln!(
        md,
        "\nPeers: none for this shape. The Socket.IO peer was not run with it; a Sockudo peer does not exist in the bench yet.\n"
    );
    md
}
