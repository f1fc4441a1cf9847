//! The suite's report: one table of figures (Switchboard, B1, B2, Socket.IO)
//! with ratios, the targets from the issue evaluated against the figures
//! (reported, never asserted), and the product floors for `pairs`. Rendered
//! as aligned text for the terminal and as Markdown for `loadtest/results/`.
//!
//! Ratio columns: "SB ÷ B1" and "SB ÷ B2" put Switchboard over a baseline;
//! "SIO ÷ SB" puts the peer over Switchboard (for costs, how many times more
//! the peer spends).

use std::fmt::Write as _;

use crate::scenarios::pairs;
use crate::suite::Suite;

const TARGETS: [&str; 4] = ["switchboard", "b1", "b2", "socketio"];
const HEADERS: [&str; 4] = ["Switchboard", "B1 wire", "B2 relay", "Socket.IO+Redis"];

struct Row {
    label: String,
    vals: [Option<f64>; 4],
    digits: usize,
}

fn row(label: &str, digits: usize, f: impl Fn(&str) -> Option<f64>) -> Row {
    Row {
        label: label.to_owned(),
        vals: TARGETS.map(&f),
        digits,
    }
}

fn rows(s: &Suite) -> Vec<Row> {
    let r = &s.results;
    let c = |t: &str| r.connect.get(t);
    let p = |t: &str| r.pairs.get(t);
    let f = |t: &str| r.fanout.get(t);
    let q = |t: &str| r.rtt_closed.get(t);
    let o = |t: &str| r.rtt_open.get(t);
    let mut v = vec![
        row("connect: connections held", 0, |t| {
            c(t).map(|x| x.held_at_end as f64)
        }),
        row("connect: handshakes/s", 0, |t| {
            c(t).map(|x| x.handshake_rate)
        }),
        row("connect: handshake p99 ms", 2, |t| {
            c(t).map(|x| x.handshake_latency.p99_ms)
        }),
        row("connect: server RSS KiB/conn", 2, |t| {
            c(t).and_then(|x| x.rss_per_conn_kib)
        }),
        row("pairs: sessions", 0, |t| p(t).map(|x| x.sessions as f64)),
        row("pairs: delivered % (worst round)", 2, |t| {
            p(t).and_then(|x| x.delivered_ratio).map(|x| x * 100.0)
        }),
        row("pairs: latency p50 ms", 2, |t| {
            p(t).map(|x| x.latency.p50_ms)
        }),
        row("pairs: latency p95 ms", 2, |t| {
            p(t).map(|x| x.latency.p95_ms)
        }),
        row("pairs: latency p99 ms", 2, |t| {
            p(t).map(|x| x.latency.p99_ms)
        }),
        row("pairs: latency max ms", 2, |t| {
            p(t).map(|x| x.latency.max_ms)
        }),
        row("pairs: front CPU-s per 1M delivered", 1, |t| {
            p(t).and_then(|x| x.front_cpu_s_per_m)
        }),
        row("pairs: server CPU-s per 1M delivered", 1, |t| {
            p(t).and_then(|x| x.stack_cpu_s_per_m)
        }),
        row("fanout: delivered % (worst round)", 2, |t| {
            f(t).and_then(|x| x.delivered_ratio).map(|x| x * 100.0)
        }),
        row("fanout: deliveries/s (wall)", 0, |t| {
            f(t).map(|x| x.deliveries_per_s)
        }),
        row("fanout: deliveries per front CPU-s", 0, |t| {
            f(t).and_then(|x| x.deliveries_per_front_cpu_s)
        }),
        row("fanout: latency p50 ms", 2, |t| {
            f(t).map(|x| x.latency.p50_ms)
        }),
        row("fanout: latency p99 ms", 2, |t| {
            f(t).map(|x| x.latency.p99_ms)
        }),
        row("fanout: front CPU-s per 1M delivered", 2, |t| {
            f(t).and_then(|x| x.front_cpu_s_per_m)
        }),
        row("fanout: server CPU-s per 1M delivered", 2, |t| {
            f(t).and_then(|x| x.stack_cpu_s_per_m)
        }),
        row("rtt closed: req/s", 0, |t| q(t).map(|x| x.throughput)),
        row("rtt closed: p50 ms", 3, |t| q(t).map(|x| x.latency.p50_ms)),
        row("rtt closed: p99 ms", 3, |t| q(t).map(|x| x.latency.p99_ms)),
        row("rtt closed: server CPU-s per 1M", 1, |t| {
            q(t).and_then(|x| x.stack_cpu_s_per_m)
        }),
    ];
    if let Some(rate) = s.params.rtt_open_rate {
        v.push(row(&format!("rtt open @{rate:.0}/s: p50 ms"), 3, |t| {
            o(t).map(|x| x.latency.p50_ms)
        }));
        v.push(row(&format!("rtt open @{rate:.0}/s: p99 ms"), 3, |t| {
            o(t).map(|x| x.latency.p99_ms)
        }));
    }
    if let Some(i) = &r.rtt_info {
        let pick = |t: &str, x: f64| (t == "switchboard").then_some(x);
        v.push(row("rtt rooms.info (Redis) req/s", 0, |t| {
            pick(t, i.throughput)
        }));
        v.push(row("rtt rooms.info (Redis) p99 ms", 3, |t| {
            pick(t, i.latency.p99_ms)
        }));
    }
    if let Some(m) = &r.matchmaking {
        let pick = |t: &str, x: f64| (t == "switchboard").then_some(x);
        let w = m.waiting;
        v.push(row(
            &format!("matchmaking: tickets/s matched, {w} waiting"),
            0,
            |t| pick(t, m.tickets_per_s),
        ));
        v.push(row(
            &format!("matchmaking: newcomer pair p50 ms, {w} waiting"),
            1,
            |t| pick(t, m.newcomer_latency.p50_ms),
        ));
        v.push(row(
            &format!("matchmaking: newcomer pair max ms, {w} waiting"),
            1,
            |t| pick(t, m.newcomer_latency.max_ms),
        ));
    }
    if let Some(x) = &r.reconnect {
        let pick = |t: &str, v: f64| (t == "switchboard").then_some(v);
        let k = x.killed_clients;
        v.push(row(
            &format!("reconnect: kill → first message p50 ms ({k} clients)"),
            0,
            |t| pick(t, x.first_message.p50_ms),
        ));
        v.push(row(
            &format!("reconnect: kill → first message p99 ms ({k} clients)"),
            0,
            |t| pick(t, x.first_message.p99_ms),
        ));
        v.push(row("reconnect: messages missed (all clients)", 0, |t| {
            pick(t, x.missed as f64)
        }));
        v.push(row("reconnect: duplicates (all clients)", 0, |t| {
            pick(t, x.duplicates as f64)
        }));
    }
    // Scenarios that did not run leave no empty rows.
    v.retain(|r| r.vals.iter().any(Option::is_some));
    v
}

fn num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => {
            if digits == 0 && x.abs() >= 10_000.0 {
                // Thousands separators for big counts.
                let s = format!("{:.0}", x);
                let mut out = String::new();
                for (i, ch) in s.chars().enumerate() {
                    if i > 0 && (s.len() - i) % 3 == 0 && ch != '-' {
                        out.push(',');
                    }
                    out.push(ch);
                }
                out
            } else {
                format!("{x:.digits$}")
            }
        }
        _ => "–".to_owned(),
    }
}

fn times(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => {
            format!("{:.2}×", a / b)
        }
        _ => "–".to_owned(),
    }
}

fn cells(r: &Row) -> Vec<String> {
    let [sb, b1, b2, sio] = r.vals;
    let mut out = vec![r.label.clone()];
    out.extend(r.vals.iter().map(|v| num(*v, r.digits)));
    out.push(times(sb, b1));
    out.push(times(sb, b2));
    out.push(times(sio, sb));
    out
}

fn header() -> Vec<String> {
    let mut h = vec!["metric".to_owned()];
    h.extend(HEADERS.iter().map(|s| (*s).to_owned()));
    h.extend(["SB ÷ B1", "SB ÷ B2", "SIO ÷ SB"].map(str::to_owned));
    h
}

/// The figures as an aligned text table.
pub fn table(s: &Suite) -> String {
    let mut lines = vec![header()];
    lines.extend(rows(s).iter().map(cells));
    let cols = lines[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (n, l) in lines.iter().enumerate() {
        for (i, c) in l.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if i == 0 {
                let _ = write!(out, "{c}{}", " ".repeat(pad));
            } else {
                let _ = write!(out, "  {}{c}", " ".repeat(pad));
            }
        }
        out.push('\n');
        if n == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (cols - 1)));
            out.push('\n');
        }
    }
    out.push('\n');
    let worst = worst_noise(s);
    if worst > crate::suite::NOISE_LIMIT_PCT {
        let _ = writeln!(
            out,
            "WARNING: other processes and the hypervisor took up to {worst:.0} % of the machine during a kept measuring window; figures are noisy (see the report's Noise section).\n"
        );
    }
    for c in checks(s) {
        let _ = writeln!(
            out,
            "{:<4} {}: {} (goal {})",
            verdict(c.met),
            c.name,
            c.measured,
            c.goal
        );
    }
    out
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "MET",
        Some(false) => "MISS",
        None => "n/a",
    }
}

/// One target from the issue, evaluated.
pub struct Check {
    pub name: &'static str,
    pub measured: String,
    pub goal: String,
    pub met: Option<bool>,
}

pub fn checks(s: &Suite) -> Vec<Check> {
    let r = &s.results;
    let mut out = Vec::new();
    let rss = r
        .connect
        .get("switchboard")
        .and_then(|c| c.rss_per_conn_kib);
    out.push(Check {
        name: "idle authenticated connection RSS",
        measured: rss.map_or("not measured".into(), |v| format!("{v:.2} KiB/conn")),
        goal: "≤ 8 KiB (Centrifugo documents ~30 KB)".into(),
        met: rss.map(|v| v <= 8.0),
    });
    let fan = r
        .fanout
        .get("switchboard")
        .and_then(|f| f.deliveries_per_front_cpu_s);
    out.push(Check {
        name: "fan-out deliveries per gateway core",
        measured: fan.map_or("not measured".into(), |v| {
            format!("{} /s per core", num(Some(v), 0))
        }),
        goal: "≥ 300,000/s".into(),
        met: fan.map(|v| v >= 300_000.0),
    });
    let sb = r.rtt_closed.get("switchboard").map(|x| x.throughput);
    let b2 = r.rtt_closed.get("b2").map(|x| x.throughput);
    let share = match (sb, b2) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    out.push(Check {
        name: "rtt throughput vs B2 (closed loop, same concurrency)",
        measured: share.map_or("not measured".into(), |v| {
            format!("{:.1} % of B2", v * 100.0)
        }),
        goal: "≥ 85 %".into(),
        met: share.map(|v| v >= 0.85),
    });
    let p99 = match (r.rtt_open.get("switchboard"), r.rtt_open.get("b2")) {
        (Some(a), Some(b)) if b.latency.p99_ms > 0.0 => Some((a.latency.p99_ms, b.latency.p99_ms)),
        _ => None,
    };
    out.push(Check {
        name: "rtt p99 vs B2 at the same offered load",
        measured: p99.map_or("not measured".into(), |(a, b)| {
            format!("{a:.3} ms vs {b:.3} ms = {:.2}×", a / b)
        }),
        goal: "≤ 1.5×".into(),
        met: p99.map(|(a, b)| a <= 1.5 * b),
    });
    for (name, sb, sio) in [
        (
            "server CPU per delivered message vs Socket.IO (pairs)",
            r.pairs.get("switchboard").and_then(|x| x.stack_cpu_s_per_m),
            r.pairs.get("socketio").and_then(|x| x.stack_cpu_s_per_m),
        ),
        (
            "server CPU per delivered message vs Socket.IO (fanout)",
            r.fanout
                .get("switchboard")
                .and_then(|x| x.stack_cpu_s_per_m),
            r.fanout.get("socketio").and_then(|x| x.stack_cpu_s_per_m),
        ),
    ] {
        let x = match (sb, sio) {
            (Some(a), Some(b)) if a > 0.0 => Some((a, b, b / a)),
            _ => None,
        };
        out.push(Check {
            name,
            measured: x.map_or("not measured".into(), |(a, b, k)| {
                if k >= 1.0 {
                    format!("{a:.1} vs {b:.1} CPU-s per 1M: {k:.2}× less")
                } else {
                    format!("{a:.1} vs {b:.1} CPU-s per 1M: {:.2}× more", 1.0 / k)
                }
            }),
            goal: "≥ 10× less".into(),
            met: x.map(|(_, _, k)| k >= 10.0),
        });
    }
    if let Some(x) = &r.reconnect {
        out.push(Check {
            name: "reconnect after a gateway kill: kill → first message after resume, p99",
            measured: format!(
                "{:.0} ms over {} of {} killed clients ({} ms jittered backoff: its p99 {:.0} ms)",
                x.first_message.p99_ms,
                x.resumed,
                x.killed_clients,
                x.backoff_max_ms,
                x.backoff.p99_ms
            ),
            goal: "< 2 s".into(),
            met: Some(x.p99_met() && x.resumed == x.killed_clients),
        });
        out.push(Check {
            name: "reconnect: messages missed, all clients",
            measured: format!(
                "{} of {} owed ({} on the killed gateway, {} on the survivor)",
                x.missed, x.expected, x.missed_killed, x.missed_surviving
            ),
            goal: "0".into(),
            met: Some(x.missed == 0 && x.expected > 0),
        });
        out.push(Check {
            name: "reconnect: messages received twice, all clients",
            measured: format!(
                "{} ({} on the killed gateway, {} on the survivor)",
                x.duplicates, x.duplicates_killed, x.duplicates_surviving
            ),
            goal: "0".into(),
            met: Some(x.duplicates == 0),
        });
    }
    let big = r
        .connect
        .get("switchboard")
        .filter(|c| c.requested >= 100_000);
    out.push(Check {
        name: "100k concurrent connections held without errors",
        measured: match (big, r.connect.get("switchboard")) {
            (Some(c), _) => format!(
                "{} of {} held to the end on {} gateway process(es), {} errors",
                c.held_at_end,
                c.requested,
                s.params.sb_gateways_for_connect,
                c.failed as u64 + c.dropped.values().sum::<u64>()
            ),
            (None, Some(c)) => format!("not run at this size (N = {})", c.requested),
            (None, None) => "not run".into(),
        },
        goal: "100,000 held, 0 errors".into(),
        met: big.map(|c| c.held_at_end == c.requested && c.failed == 0 && c.dropped.is_empty()),
    });
    out
}

/// Noise of one scenario × target: the share of the machine (percent) that
/// went to other processes or to the hypervisor (steal) during the kept
/// measuring windows, and how many windows had to be run again.
#[derive(Debug, Clone, Copy)]
struct Noise {
    median: f64,
    max: f64,
    retries: u64,
}

fn noise(s: &Suite) -> Vec<(String, [Option<Noise>; 4])> {
    let mut out = Vec::new();
    let n = s.machine.nproc.max(1) as f64;
    out.push((
        "connect (ramp)".to_owned(),
        TARGETS.map(|t| {
            s.results.connect.get(t).and_then(|c| {
                let w = &c.ramp_cpu;
                (w.wall_s > 0.0).then(|| {
                    let p = 100.0 * (w.foreign_s + w.steal_s) / (w.wall_s * n);
                    Noise {
                        median: p,
                        max: p,
                        retries: 0,
                    }
                })
            })
        }),
    ));
    for (scenario, label) in [
        ("pairs", "pairs"),
        ("fanout", "fanout"),
        ("rtt_closed", "rtt closed"),
        ("rtt_info", "rtt rooms.info"),
        ("rtt_open", "rtt open"),
    ] {
        out.push((
            label.to_owned(),
            TARGETS.map(|t| {
                let runs = s.runs.get(&format!("{scenario}/{t}"))?;
                let mut v: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r["noise_pct"].as_f64())
                    .collect();
                if v.is_empty() {
                    return None;
                }
                v.sort_by(f64::total_cmp);
                let retries = runs
                    .iter()
                    .filter_map(|r| r["attempts"].as_u64())
                    .map(|a| a.saturating_sub(1))
                    .sum();
                Some(Noise {
                    median: v[(v.len() - 1) / 2],
                    max: v[v.len() - 1],
                    retries,
                })
            }),
        ));
    }
    out
}

/// The noisiest kept window, percent of the machine.
pub fn worst_noise(s: &Suite) -> f64 {
    noise(s)
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().map(|n| n.max))
        .fold(0.0, f64::max)
}

/// The whole report as Markdown.
pub fn markdown(s: &Suite) -> String {
    let mut md = String::new();
    let m = &s.machine;
    let p = &s.params;
    let _ = writeln!(md, "# Switchboard benchmark: {}\n", s.name);
    let _ = writeln!(
        md,
        "Run {} at commit `{}` by `loadtest/bench.sh` (`make bench`).{}\n",
        s.date,
        s.commit,
        if s.note.is_empty() {
            String::new()
        } else {
            format!(" {}", s.note)
        }
    );
    if !s.dirty.is_empty() {
        let _ = writeln!(
            md,
            "The binaries were built from the working tree, which had uncommitted changes in: {}.\n",
            s.dirty
                .iter()
                .map(|d| format!("`{d}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(md, "## Machine\n");
    let _ = writeln!(md, "- CPUs: {} (`nproc`), {}", m.nproc, m.cpu_model);
    let _ = writeln!(md, "- Memory: {} GiB", m.mem_total_gib);
    let _ = writeln!(md, "- Kernel: {}", m.kernel);
    let _ = writeln!(md, "- Open files limit (soft/hard): {}", m.nofile_limit);
    let _ = writeln!(
        md,
        "- Everything (servers, NATS, Redis, Node and the load generator) shares these CPUs.\n"
    );
    let _ = writeln!(md, "## Shapes\n");
    let r = &s.results;
    let traffic = !(r.pairs.is_empty() && r.fanout.is_empty() && r.rtt_closed.is_empty());
    if traffic {
        let _ = writeln!(
            md,
            "- Rounds of `pairs`, `fanout` and `rtt`: {} (`BENCH_REPEAT`).",
            p.repeat
        );
    }
    if !r.connect.is_empty() {
        let _ = writeln!(
            md,
            "- `connect`: {} connections to Switchboard ({} gateway process(es)), {} to each baseline and the peer; held {} s.",
            p.connections, p.sb_gateways_for_connect, p.peer_connections, p.hold_secs
        );
    }
    if !r.pairs.is_empty() {
        let _ = writeln!(
            md,
            "- `pairs`: {} couples in two-member rooms, each side sending {} msg/s for {} s.",
            p.pairs, p.pair_rate, p.duration
        );
    }
    if !r.fanout.is_empty() {
        let _ = writeln!(
            md,
            "- `fanout`: one room, {} members, one publisher at {} msg/s for {} s.",
            p.fanout_members, p.fanout_rate, p.duration
        );
    }
    if !r.rtt_closed.is_empty() {
        let _ = writeln!(
            md,
            "- `rtt`: {} connections, closed loop with {} request(s) outstanding on each (enough to saturate the servers), {} s; then open loop at {} req/s (half the smaller of Switchboard's and B2's closed-loop throughputs, so neither is overloaded) for Switchboard and B2. Switchboard's op is `rooms.echo`, which the rooms worker answers (`unknown_op`) without Redis: the same gateway → NATS → worker → NATS → gateway path as B2. `rooms.info` (two Redis round trips) is reported separately.",
            p.rtt_connections,
            p.rtt_window,
            p.duration,
            p.rtt_open_rate.map_or("–".into(), |r| format!("{r:.0}"))
        );
    }
    if let Some(m) = &r.matchmaking {
        let _ = writeln!(
            md,
            "- `matchmaking` (Switchboard only): {} tickets nobody can match are seeded straight into Redis in the service's layout; {} compatible pairs then join one after the other over WebSockets (`matchmaking.join` → both `match_found`); then {} compatible tickets are added at once and the queue is polled until they are all matched, each pair into a room made by the rooms service (at most 60 s).",
            m.waiting, m.newcomer_pairs, m.compatible
        );
    }
    if let Some(x) = &r.reconnect {
        let _ = writeln!(
            md,
            "- `reconnect` (Switchboard only, no baseline: B1, B2 and the peer have no resume): {} clients over two gateway processes, in {} rooms (members of every room on both gateways), one publisher per room on the surviving gateway at {} msg/s; one gateway SIGKILLed after {} s of publishing, {} s more publishing after the kill. Reconnect policy: {}.",
            x.clients, x.rooms, x.rate, x.warmup_s, x.after_kill_s, x.backoff_policy
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "## Results\n");
    if p.repeat > 1 {
        let _ = writeln!(
            md,
            "`pairs`, `fanout` and `rtt` figures are per-field medians of {} rounds, the targets interleaved within each round; `connect` ran once, against freshly started servers. Every run is in the JSON file.\n",
            p.repeat
        );
    }
    let h = header();
    let _ = writeln!(md, "| {} |", h.join(" | "));
    let _ = writeln!(
        md,
        "|{}",
        h.iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for r in rows(s) {
        let _ = writeln!(md, "| {} |", cells(&r).join(" | "));
    }
    let _ = writeln!(
        md,
        "\n*Front* is the process holding the sockets (gateway, B1, B2 relay, Node). *Server CPU* is every server-side process of the target: Switchboard = gateway + rooms worker + NATS + Redis; B2 = relay + echo worker + NATS; Socket.IO = Node + Redis. CPU is `utime + stime` from `/proc/<pid>/stat` over the measuring window; RSS is `VmRSS` from `/proc/<pid>/status`.\n"
    );
    if let Some(m) = &r.matchmaking {
        let _ = writeln!(md, "## Matchmaking with {} tickets waiting\n", m.waiting);
        let _ = writeln!(md, "| figure | value |\n|---|---:|");
        let _ = writeln!(
            md,
            "| tickets per second matched with {} waiting | {:.0} |",
            m.waiting, m.tickets_per_s
        );
        let _ = writeln!(
            md,
            "| compatible tickets matched | {} of {} in {:.2} s{} |",
            m.matched,
            m.compatible,
            m.drain_s,
            if m.drained { "" } else { " (time limit)" }
        );
        let _ = writeln!(
            md,
            "| newcomer pair matched (second join → both `match_found`), p50 / max | {:.1} / {:.1} ms ({} of {} pairs) |",
            m.newcomer_latency.p50_ms,
            m.newcomer_latency.max_ms,
            m.newcomer_matched,
            m.newcomer_pairs
        );
        let _ = writeln!(
            md,
            "| server CPU per million tickets matched | {} |",
            m.stack_cpu_s_per_m
                .map_or("–".into(), |x| format!("{x:.0} CPU-s"))
        );
        let _ = writeln!(md, "| seeding the waiting tickets | {:.2} s |\n", m.seed_s);
    }
    if let Some(x) = &r.reconnect {
        crate::scenarios::reconnect::render::section(&mut md, x);
    }
    let _ = writeln!(md, "## Targets (reported, not asserted)\n");
    let _ = writeln!(
        md,
        "| target | measured | goal | verdict |\n|---|---|---|---|"
    );
    for c in checks(s) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.name,
            c.measured,
            c.goal,
            verdict(c.met)
        );
    }
    let _ = writeln!(
        md,
        "\n## Product floors for `pairs` (p95 < {} ms, > {} % delivered, > {} sessions)\n",
        pairs::FLOOR_P95_MS,
        pairs::FLOOR_DELIVERED * 100.0,
        pairs::FLOOR_SESSIONS
    );
    let _ = writeln!(
        md,
        "| system | sessions | delivered | p95 | floors |\n|---|---:|---:|---:|---|"
    );
    for (i, t) in TARGETS.iter().enumerate() {
        if let Some(r) = s.results.pairs.get(*t) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2} ms | {} |",
                HEADERS[i],
                r.sessions,
                r.delivered_ratio
                    .map_or("–".into(), |x| format!("{:.2} %", x * 100.0)),
                r.latency.p95_ms,
                if r.floors.all_met { "met" } else { "MISSED" }
            );
        }
    }
    let _ = writeln!(
        md,
        "\n## Noise: the machine's other load during the measuring windows\n\nShare of the machine that went to processes outside the measured system and the load generator, plus hypervisor steal, during the kept windows: median over rounds (max). A window above {:.0} % was run again (up to {} times) and the quietest attempt kept; retries are counted. Connect ramps include the load generator's child processes when there are any.\n",
        crate::suite::NOISE_LIMIT_PCT,
        crate::suite::NOISY_RETRIES
    );
    let _ = writeln!(
        md,
        "| window | {} |\n|---|---:|---:|---:|---:|",
        HEADERS.join(" | ")
    );
    for (label, vals) in noise(s) {
        let cells: Vec<String> = vals
            .iter()
            .map(|v| {
                v.map_or("–".into(), |n| {
                    let retries = if n.retries > 0 {
                        format!(", {} retried", n.retries)
                    } else {
                        String::new()
                    };
                    format!("{:.0} % ({:.0} %){retries}", n.median, n.max)
                })
            })
            .collect();
        let _ = writeln!(md, "| {label} | {} |", cells.join(" | "));
    }
    if let Some(dm) = &s.results.dm {
        let _ = writeln!(md, "\n{}", crate::scenarios::dm::markdown(dm));
    }
    if !s.results.failures.is_empty() {
        let _ = writeln!(md, "\n## Failures\n");
        for (k, v) in &s.results.failures {
            let _ = writeln!(md, "- `{k}`: {v}");
        }
    }
    let _ = writeln!(
        md,
        "\nRaw figures (errors, CPU breakdowns, every percentile): `{}.json`.",
        s.name
    );
    md
}
