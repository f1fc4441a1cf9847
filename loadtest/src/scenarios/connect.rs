//! `connect`: ramp N authenticated connections, hold them, and report the
//! handshake rate and the server's resident memory per connection (RSS
//! delta of the front process(es) divided by the connections held).
//!
//! One process can hold only as many sockets as its open-file limit allows,
//! so above that the scenario re-runs this binary as `connect-child`
//! processes (each holding a share, each from its own source addresses) and
//! coordinates them over their stdin/stdout: a child prints `READY <json>`
//! once its share is up, holds until it reads a line (or its own deadline),
//! then prints `DONE <json>` and exits.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Common, Spec, emit, open_many};
use crate::conn::Opts;
use crate::metrics::{CpuUse, Latency, histogram};
use crate::net::Sources;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// How long to hold the connections once all are up, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub hold_secs: f64,
    /// Client processes (0: as many as the open-file limit requires).
    #[arg(long, default_value_t = 0)]
    pub procs: usize,
    /// Connections per 127.x.y.z source address (binding many sockets to
    /// one address makes the kernel's port search slow).
    #[arg(long, default_value_t = crate::net::PER_SOURCE_IP)]
    pub per_source_ip: usize,
}

/// The `connect` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    pub requested: usize,
    pub established: usize,
    pub failed: usize,
    pub errors: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    pub client_procs: usize,
    pub ramp_s: f64,
    /// Successful handshakes per second over the ramp.
    pub handshake_rate: f64,
    pub handshake_latency: Latency,
    pub rss_before_kib: u64,
    pub rss_held_kib: u64,
    /// (held − before) / established.
    pub rss_per_conn_kib: Option<f64>,
    pub ramp_cpu: CpuUse,
    pub hold_s: f64,
    /// Connections still open at the end of the hold.
    pub held_at_end: usize,
    /// Connections that ended during the hold, by reason.
    pub dropped: BTreeMap<String, u64>,
}

/// What one process (this one or a child) reports after its ramp.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ShareReady {
    established: usize,
    failed: usize,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    /// Handshake latency histogram as (µs, count) pairs.
    handshake: Vec<(u64, u64)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ShareDone {
    alive: usize,
    dropped: BTreeMap<String, u64>,
}

/// Most sockets this process may open (the soft open-file limit, minus slack).
pub fn fd_capacity() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1024);
    soft.saturating_sub(256).max(64)
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    let spec = Spec::new(&args.common)?;
    let json = args.common.json.clone();
    let report = run(&spec, &args).await?;
    print_summary(&report);
    emit(&report, json.as_deref())
}

pub fn print_summary(r: &Report) {
    eprintln!(
        "connect[{}]: {}/{} up in {:.1}s ({:.0}/s), {:.2} KiB RSS/conn, {} held at end, errors {:?}",
        r.target,
        r.established,
        r.requested,
        r.ramp_s,
        r.handshake_rate,
        r.rss_per_conn_kib.unwrap_or(f64::NAN),
        r.held_at_end,
        r.errors
    );
}

pub async fn run(spec: &Spec, args: &Args) -> anyhow::Result<Report> {
    let n = args.connections;
    let cap = fd_capacity();
    let procs = if args.procs > 0 {
        args.procs
    } else {
        n.div_ceil(cap).max(1)
    };
    let seed = Sources::random_seed();
    let hold = Duration::from_secs_f64(args.hold_secs.max(0.0));
    spec.servers.wait_quiet(0.05, Duration::from_secs(10)).await;
    let before = spec.servers.snapshot();
    let started = Instant::now();

    let (ready, done, ramp_s, held_snap, ramp_cpu) = if procs <= 1 {
        let sources = Sources::new(seed, args.per_source_ip);
        let stop = CancellationToken::new();
        let opts = Opts {
            target: spec.target,
            stop: stop.clone(),
            deadline: Instant::now() + Duration::from_secs(3600) + hold,
            closed_loop: false,
        };
        let opened = open_many(
            spec,
            n,
            0,
            sources,
            args.concurrency,
            &format!("{}-c", spec.run),
            &opts,
        )
        .await;
        let ramp_s = started.elapsed().as_secs_f64();
        let ramp_cpu = spec.servers.snapshot().since(&before);
        let ready = ShareReady {
            established: opened.established(),
            failed: n - opened.established(),
            errors: opened.errors.clone(),
            first_error: opened.first_error.clone(),
            handshake: pairs_of(&opened.handshake),
        };
        // Let the servers finish their per-connection work before sampling.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let held_snap = spec.servers.snapshot();
        tokio::time::sleep(hold.saturating_sub(Duration::from_secs(1))).await;
        let conns: Vec<_> = opened.conns.into_iter().flatten().collect();
        let alive = conns.iter().filter(|c| c.alive()).count();
        stop.cancel();
        let totals = crate::conn::Totals::collect(conns).await;
        let done = ShareDone {
            alive,
            dropped: totals.ended,
        };
        (vec![ready], vec![done], ramp_s, held_snap, ramp_cpu)
    } else {
        run_children(spec, args, procs, seed, hold, started, &before).await?
    };

    let mut handshake = histogram();
    let mut errors = BTreeMap::new();
    let mut established = 0;
    let mut first_error = None;
    for r in &ready {
        established += r.established;
        for (v, c) in &r.handshake {
            handshake.saturating_record_n(*v, *c);
        }
        for (k, v) in &r.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
        if first_error.is_none() {
            first_error.clone_from(&r.first_error);
        }
    }
    let mut dropped = BTreeMap::new();
    let mut held_at_end = 0;
    for d in &done {
        held_at_end += d.alive;
        for (k, v) in &d.dropped {
            *dropped.entry(k.clone()).or_insert(0) += v;
        }
    }
    let delta = held_snap.front_rss_kib as f64 - before.front_rss_kib as f64;
    Ok(Report {
        target: spec.target.name().to_owned(),
        requested: n,
        established,
        failed: n - established,
        errors,
        first_error,
        client_procs: procs,
        ramp_s,
        handshake_rate: if ramp_s > 0.0 {
            established as f64 / ramp_s
        } else {
            0.0
        },
        handshake_latency: Latency::of(&handshake),
        rss_before_kib: before.front_rss_kib,
        rss_held_kib: held_snap.front_rss_kib,
        rss_per_conn_kib: (established > 0 && !spec.servers.front.is_empty())
            .then(|| delta / established as f64),
        ramp_cpu,
        hold_s: hold.as_secs_f64(),
        held_at_end,
        dropped,
    })
}

fn pairs_of(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

type ChildrenOutcome = (
    Vec<ShareReady>,
    Vec<ShareDone>,
    f64,
    crate::metrics::Snapshot,
    CpuUse,
);

async fn run_children(
    spec: &Spec,
    args: &Args,
    procs: usize,
    seed: u64,
    hold: Duration,
    started: Instant,
    before: &crate::metrics::Snapshot,
) -> anyhow::Result<ChildrenOutcome> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let n = args.connections;
    let share = n.div_ceil(procs);
    // A child gives up by itself well after the parent would have.
    let child_limit = 600.0 + hold.as_secs_f64();
    let mut children = Vec::new();
    for p in 0..procs {
        let offset = p * share;
        let count = share.min(n.saturating_sub(offset));
        if count == 0 {
            break;
        }
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("connect-child")
            .arg("--target")
            .arg(spec.target.name())
            .arg("--app")
            .arg(&args.common.app)
            .arg("--connections")
            .arg(count.to_string())
            .arg("--offset")
            .arg(offset.to_string())
            .arg("--seed")
            .arg(seed.to_string())
            .arg("--per-source-ip")
            .arg(args.per_source_ip.to_string())
            .arg("--concurrency")
            .arg((args.concurrency / procs).max(8).to_string())
            .arg("--user-prefix")
            .arg(format!("{}-c", spec.run))
            .arg("--max-secs")
            .arg(format!("{child_limit}"));
        for u in &spec.urls {
            cmd.arg("--url").arg(&u.raw);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting a connect-child process")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let stdin = child.stdin.take().context("child stdin")?;
        children.push((child, BufReader::new(stdout).lines(), stdin));
    }
    let limit = Duration::from_secs_f64(child_limit);
    let mut ready = Vec::new();
    for (_, lines, _) in &mut children {
        let line = tokio::time::timeout(limit, lines.next_line())
            .await
            .context("a connect child did not finish its ramp")??
            .context("a connect child exited early")?;
        let json = line
            .strip_prefix("READY ")
            .with_context(|| format!("unexpected child output {line:?}"))?;
        ready.push(serde_json::from_str::<ShareReady>(json)?);
    }
    let ramp_s = started.elapsed().as_secs_f64();
    let ramp_cpu = spec.servers.snapshot().since(before);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held_snap = spec.servers.snapshot();
    tokio::time::sleep(hold.saturating_sub(Duration::from_secs(1))).await;
    for (_, _, stdin) in &mut children {
        let _ = stdin.write_all(b"stop\n").await;
        let _ = stdin.flush().await;
    }
    let mut done = Vec::new();
    for (mut child, mut lines, _) in children {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("a connect child did not stop")??
            .context("a connect child exited without a report")?;
        let json = line
            .strip_prefix("DONE ")
            .with_context(|| format!("unexpected child output {line:?}"))?;
        done.push(serde_json::from_str::<ShareDone>(json)?);
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    }
    Ok((ready, done, ramp_s, held_snap, ramp_cpu))
}

/// Arguments of a `connect-child` process (started by `connect`, not by hand).
#[derive(Debug, Clone, clap::Args)]
pub struct ChildArgs {
    #[arg(long, value_enum)]
    pub target: crate::wire::Target,
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    #[arg(long, default_value = "demo")]
    pub app: String,
    #[arg(long)]
    pub connections: usize,
    #[arg(long)]
    pub offset: usize,
    #[arg(long)]
    pub seed: u64,
    #[arg(long)]
    pub per_source_ip: usize,
    #[arg(long)]
    pub concurrency: usize,
    #[arg(long)]
    pub user_prefix: String,
    /// Exit after this long whatever happens.
    #[arg(long)]
    pub max_secs: f64,
}

pub async fn child(args: ChildArgs) -> anyhow::Result<()> {
    let spec = Spec::build(
        args.target,
        &args.urls,
        crate::metrics::Servers::default(),
        &args.app,
    )?;
    let max = Duration::from_secs_f64(args.max_secs.max(1.0));
    let stop = CancellationToken::new();
    let opts = Opts {
        target: spec.target,
        stop: stop.clone(),
        deadline: Instant::now() + max,
        closed_loop: false,
    };
    let opened = open_many(
        &spec,
        args.connections,
        args.offset,
        Sources::new(args.seed, args.per_source_ip),
        args.concurrency,
        &args.user_prefix,
        &opts,
    )
    .await;
    let ready = ShareReady {
        established: opened.established(),
        failed: args.connections - opened.established(),
        errors: opened.errors.clone(),
        first_error: opened.first_error.clone(),
        handshake: pairs_of(&opened.handshake),
    };
    println!("READY {}", serde_json::to_string(&ready)?);
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let _ = tokio::time::timeout_at(opts.deadline, stdin.next_line()).await;
    let conns: Vec<_> = opened.conns.into_iter().flatten().collect();
    let alive = conns.iter().filter(|c| c.alive()).count();
    stop.cancel();
    let totals = crate::conn::Totals::collect(conns).await;
    let done = ShareDone {
        alive,
        dropped: totals.ended,
    };
    println!("DONE {}", serde_json::to_string(&done)?);
    Ok(())
}
