//! `soak` (`make soak`): a whole cluster on loopback — NATS, a durable
//! Redis, two gateway processes, two worker processes — under steady load
//! for a bounded time while a seeded schedule injects faults, with an
//! invariant checker running throughout and at the end. It prints a summary
//! and fails on any violation.
//!
//! Load: clients in rooms publishing numbered messages ([`client`]), some
//! of them watching other users' presence, some leaving for good, and a
//! backend sending notifications through `sb.api.notifications.send`.
//! Faults: [`faults`]. Checks while running: per-room order on every
//! client (no duplicate, no reordering), no process exiting unless the
//! schedule killed it; at the end: [`check`].

mod check;
mod client;
mod cluster;
mod faults;
mod state;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::sync::Mutex;

use self::cluster::{Cluster, Timing};
use self::state::Shared;
use crate::rng::Rng;
use crate::tokens::Tokens;
use crate::wire::Target;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub gateway_bin: PathBuf,
    #[arg(long)]
    pub workers_bin: PathBuf,
    /// Seconds of load (the end checks come after, at most about a minute).
    #[arg(long, default_value_t = 180)]
    pub seconds: u64,
    /// Seed of the fault schedule and of every client's choices (default:
    /// fresh; printed, so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    #[arg(long, default_value_t = 20)]
    pub rooms: usize,
    /// Clients that also watch other users' presence.
    #[arg(long, default_value_t = 10)]
    pub watchers: usize,
    /// Mean seconds between one client's publishes.
    #[arg(long, default_value_t = 3.0)]
    pub publish_every: f64,
    /// Notifications sent per second by the backend.
    #[arg(long, default_value_t = 2.0)]
    pub notification_rate: f64,
    /// Keep the processes' logs even when nothing was violated.
    #[arg(long)]
    pub keep_logs: bool,
    /// Also write the summary to this file.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    #[arg(long, default_value = "demo")]
    pub app: String,
}

/// No faults in the first seconds (the load settles).
const WARMUP: Duration = Duration::from_secs(15);

pub async fn main(args: Args) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(Rng::fresh_seed);
    let total = Duration::from_secs(args.seconds.max(30));
    let timing = Timing::SOAK;
    let bound = Duration::from_millis(timing.presence_bound_ms());
    // Faults end early enough for everything to converge before the end.
    let cooldown = bound + Duration::from_secs(10);
    let plan = faults::plan(seed, total, WARMUP, cooldown, timing);
    eprintln!(
        "soak: seed {seed} (repeat with `make soak SOAK_SEED={seed}`), {} s of load, {} clients in {} rooms, {} faults planned:",
        total.as_secs(),
        args.clients,
        args.rooms,
        plan.len()
    );
    for p in &plan {
        eprintln!("  {}", p.describe());
    }
    anyhow::ensure!(
        args.rooms > 0 && args.clients >= args.rooms,
        "need at least one client per room"
    );

    let dir = std::env::temp_dir().join(format!("sb-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cluster = Cluster::start(&args.gateway_bin, &args.workers_bin, timing, &dir).await?;
    eprintln!("soak: cluster up (logs in {})", dir.display());
    let urls = cluster.urls();
    let nats_url = cluster.nats_url();
    let cluster = Arc::new(Mutex::new(cluster));

    let rooms: Vec<String> = (0..args.rooms).map(|r| format!("r{r}")).collect();
    let sh = Arc::new(Shared::new(
        urls,
        Tokens::new(Target::Switchboard, &args.app)?,
        rooms.clone(),
        args.clients,
        seed,
    ));
    let mut setup = check::Checker::connect(&sh, "setup").await?;
    for room in &rooms {
        setup.call("rooms.create", json!({"room": room})).await?;
    }
    setup.close().await;

    // Clients: room i mod R; a tenth leave at a random time, a twentieth
    // at their first connection loss; `watchers` of them watch 30 users.
    let mut rng = Rng::derive(seed, 1);
    let fault_end = total.saturating_sub(cooldown);
    let rooms_of: Vec<usize> = (0..args.clients).map(|i| i % args.rooms).collect();
    let watch_every = (args.clients / args.watchers.max(1)).max(1);
    let mut watchers = Vec::new();
    let mut tasks = Vec::new();
    for (i, room) in rooms_of.iter().enumerate() {
        let roll = rng.below(20);
        let watch: Vec<usize> = if args.watchers > 0 && i % watch_every == 0 {
            (0..30)
                .map(|_| rng.below(args.clients as u64) as usize)
                .filter(|u| *u != i)
                .collect()
        } else {
            Vec::new()
        };
        if !watch.is_empty() {
            watchers.push((i, watch.clone()));
        }
        let plan = client::Plan {
            room: *room,
            publish_every: Duration::from_secs_f64(args.publish_every.max(0.1)),
            leave_at: (roll < 2)
                .then(|| rng.millis(WARMUP.as_millis() as u64, fault_end.as_millis() as u64)),
            abandon_after: (roll == 2).then_some(WARMUP),
            watch,
        };
        let first = rng.millis(0, 5_000);
        tasks.push(tokio::spawn(client::run(sh.clone(), i, plan, first)));
    }
    let backend = tokio::spawn(notifications(
        sh.clone(),
        nats_url,
        args.clients,
        args.notification_rate,
        seed,
    ));
    let monitor = tokio::spawn(monitor(sh.clone(), cluster.clone()));
    let status = tokio::spawn(status_line(sh.clone()));
    let injected = faults::run(cluster.clone(), plan, sh.start).await;
    tokio::time::sleep_until(sh.start + total).await;

    // End of load: the checks.
    eprintln!("[{:>6.1} s] load over; checking", sh.elapsed_s());
    sh.publishing.cancel();
    backend.abort();
    check::settle(&sh, Duration::from_secs(15)).await;
    let mut ch = check::Checker::connect(&sh, "checker").await?;
    let heads = check::heads(&mut ch, &sh).await?;
    check::tails(&sh, &rooms_of, &heads, Duration::from_secs(15)).await;
    let hist = check::history(&mut ch, &sh, &heads).await?;
    let presence_s = check::presence(&mut ch, &sh, &watchers, bound).await?;
    ch.close().await;
    let notified = check::notifications(&sh).await?;
    sh.stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    monitor.abort();
    status.abort();
    // The monitor holds the cluster: let it go before the processes are stopped.
    let _ = monitor.await;
    // A last look for crashes.
    for c in cluster.lock().await.crashes() {
        sh.violation("crash", c);
    }
    let restarts = cluster.lock().await.restarts;
    let text = summary(
        &args, seed, total, &injected, &heads, &hist, presence_s, notified, restarts, &sh,
    );
    println!("{text}");
    if let Some(p) = &args.summary {
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    let violations = sh.violations();
    drop(cluster);
    if violations > 0 {
        eprintln!("soak: logs kept in {}", dir.display());
        anyhow::bail!("{violations} violation(s)");
    }
    if args.keep_logs {
        eprintln!("soak: logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// A backend sending notifications to random users over NATS.
async fn notifications(sh: Arc<Shared>, url: String, users: usize, rate: f64, seed: u64) {
    let Ok(nats) = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url.as_str())
        .await
    else {
        sh.violation("setup", "the backend could not connect to NATS".into());
        return;
    };
    let mut rng = Rng::derive(seed, 2);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.01)));
    let mut k = 0u64;
    loop {
        tick.tick().await;
        k += 1;
        let user = rng.below(users as u64) as usize;
        let body = json!({"app": "demo", "to": {"user": Shared::user(user)}, "type": "soak", "content": {"k": k}});
        sh.counters
            .notifications_sent
            .fetch_add(1, Ordering::Relaxed);
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            nats.request("sb.api.notifications.send", body.to_string().into()),
        )
        .await;
        let id = match reply {
            Ok(Ok(m)) => serde_json::from_slice::<serde_json::Value>(&m.payload)
                .ok()
                .filter(|v| v["ok"] == json!(true))
                .and_then(|v| v["id"].as_str().map(str::to_owned)),
            _ => None,
        };
        match id {
            Some(id) => sh.with(|l| l.notifications.push((user, id))),
            None => sh.with(|l| l.notifications_unknown += 1),
        }
    }
}

/// Every half second: processes that ended without the schedule.
async fn monitor(sh: Arc<Shared>, cluster: Arc<Mutex<Cluster>>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let crashed = cluster.lock().await.crashes();
        for c in crashed {
            sh.violation("crash", c);
        }
    }
}

async fn status_line(sh: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let c = &sh.counters;
        let live = (0..sh.state.len())
            .filter(|i| sh.state_of(*i) == state::LIVE)
            .count();
        eprintln!(
            "[{:>6.1} s] {live} live, published {} (acked {}), delivered {}, connects {} ({} failed), violations {}",
            sh.elapsed_s(),
            c.published.load(Ordering::Relaxed),
            c.acked.load(Ordering::Relaxed),
            c.delivered.load(Ordering::Relaxed),
            c.connects.load(Ordering::Relaxed),
            c.connect_failures.load(Ordering::Relaxed),
            sh.violations()
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn summary(
    args: &Args,
    seed: u64,
    total: Duration,
    injected: &[faults::Injected],
    heads: &[u64],
    hist: &check::HistoryStats,
    presence_s: f64,
    notified: usize,
    restarts: u32,
    sh: &Shared,
) -> String {
    let c = &sh.counters;
    let mut s = String::new();
    let _ = writeln!(s, "== soak summary ==");
    let _ = writeln!(
        s,
        "seed {seed} · {} s of load · {} clients in {} rooms ({} watching presence) · cluster: NATS, durable Redis, 2 gateways, 2 worker processes",
        total.as_secs(),
        args.clients,
        args.rooms,
        args.watchers
    );
    let _ = writeln!(
        s,
        "faults injected: {} ({} restarts)",
        injected.len(),
        restarts
    );
    for f in injected {
        let _ = writeln!(
            s,
            "  [{:>6.1} s → {:>6.1} s] {}{}",
            f.started_s,
            f.recovered_s,
            f.planned.what(),
            f.error
                .as_ref()
                .map_or(String::new(), |e| format!(" — FAILED: {e}"))
        );
    }
    let (acked, unknown, refused, gaps, notif_unknown) = sh.with(|l| {
        (
            l.acked.len(),
            l.unknown.len(),
            l.refused.clone(),
            l.gaps.len(),
            l.notifications_unknown,
        )
    });
    let leavers = sh.with(|l| {
        let mut by: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for v in &l.leavers {
            *by.entry(v.how).or_default() += 1;
        }
        by
    });
    let _ = writeln!(
        s,
        "messages: {} published, {acked} acknowledged, {unknown} without a known outcome ({} of them stored, {} not; refusals {refused:?}); history holds {} (heads sum {}); {} deliveries checked in order; {gaps} gap pushes",
        c.published.load(Ordering::Relaxed),
        hist.unknown_stored,
        hist.unknown_absent,
        hist.messages,
        heads.iter().sum::<u64>(),
        c.delivered.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        s,
        "connections: {} opened, {} attempts failed, {} join errors; users who left for good: {leavers:?}",
        c.connects.load(Ordering::Relaxed),
        c.connect_failures.load(Ordering::Relaxed),
        c.join_errors.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        s,
        "notifications: {} sent, {notified} acknowledged and found in their users' lists, {notif_unknown} without a known outcome",
        c.notifications_sent.load(Ordering::Relaxed)
    );
    let _ = writeln!(s, "presence converged {presence_s:.1} s into the end check");
    let notes = sh.with(|l| l.notes.clone());
    let _ = writeln!(s, "notes (no invariant broken): {}", notes.len());
    for n in notes.iter().take(10) {
        let _ = writeln!(s, "  {n}");
    }
    let violations = sh.with(|l| l.violations.clone());
    let mut kinds: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for (k, _) in &violations {
        *kinds.entry(k).or_default() += 1;
    }
    let _ = writeln!(s, "violations: {} {kinds:?}", violations.len());
    for (k, d) in violations.iter().take(30) {
        let _ = writeln!(s, "  {k}: {d}");
    }
    let _ = writeln!(
        s,
        "result: {}",
        if violations.is_empty() {
            "PASS"
        } else {
            "FAIL"
        }
    );
    s
}
