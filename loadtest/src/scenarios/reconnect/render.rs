//! The `reconnect` section of the suite's Markdown report: the times from
//! the kill, the counts, the CPU of the window.

use std::fmt::Write as _;

use super::Report;

pub fn section(md: &mut String, x: &Report) {
    let _ = writeln!(
        md,
        "## Reconnect after a gateway kill (Switchboard only, no baseline)\n"
    );
    let _ = writeln!(md, "| figure | p50 | p99 | max |\n|---|---:|---:|---:|");
    for (label, l) in [
        ("kill → socket seen closed", &x.noticed),
        ("jittered wait drawn (policy)", &x.backoff),
        ("kill → `welcome` from the survivor", &x.connected),
        ("kill → resume `rooms.join` answered", &x.resumed_at),
        ("kill → first message after resume", &x.first_message),
    ] {
        let _ = writeln!(
            md,
            "| {label} | {:.0} ms | {:.0} ms | {:.0} ms |",
            l.p50_ms, l.p99_ms, l.max_ms
        );
    }
    let _ = writeln!(md, "\n| count | value |\n|---|---:|");
    for (label, v) in [
        ("members joined", x.clients_joined as u64),
        ("members on the killed gateway", x.killed_clients as u64),
        ("resumed on the survivor", x.resumed as u64),
        ("connect attempts after the kill", x.attempts),
        (
            "resumed without a message afterwards (join reply counted)",
            x.no_message_after_resume as u64,
        ),
        ("messages published", x.published),
        (
            "deliveries owed (every member, every seq after its join)",
            x.expected,
        ),
        ("delivered", x.delivered),
        ("missed", x.missed),
        ("received twice", x.duplicates),
        ("out of order", x.out_of_order),
        ("`gap` pushes", x.gaps),
        (
            "members short of the head when the drain ended",
            x.incomplete as u64,
        ),
    ] {
        let _ = writeln!(md, "| {label} | {v} |");
    }
    let _ = writeln!(
        md,
        "\nSeed of the backoff draws: {}. Errors: {:?}; unexpected drops: {:?}; publish errors: {:?}. Setup (connect, join, quiet) {:.1} s; drain {:.1} s.\n",
        x.seed, x.errors, x.unexpected_drops, x.publish_errors, x.setup_s, x.drain_s
    );
    let c = &x.cpu;
    let _ = writeln!(
        md,
        "CPU from the kill to the end of the drain ({:.1} s): surviving gateway {:.1} CPU-s, whole stack (gateway, workers, NATS, Redis) {:.1} CPU-s, load generator {:.1} CPU-s; other processes and hypervisor steal took {:.0} % of the machine.\n",
        c.wall_s,
        c.front_s,
        c.stack_s,
        c.client_s,
        crate::suite::noise_pct(c)
    );
}
