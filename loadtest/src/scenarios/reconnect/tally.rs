//! Folds the members' outcomes into the `reconnect` report: receptions
//! counted against the rooms' heads, the times from the kill as histograms.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use super::member::{self, Outcome};
use super::{Args, Report};
use crate::metrics::{CpuUse, Latency, histogram};
use crate::wire::Target;

/// Counts receptions against the heads and folds the members' times.
pub(super) fn tally(
    args: &Args,
    seed: u64,
    outcomes: &[Outcome],
    heads: &[u64],
    mut errors: BTreeMap<String, u64>,
) -> Report {
    let (mut noticed, mut backoff, mut resumed_at, mut first) =
        (histogram(), histogram(), histogram(), histogram());
    let mut connected = histogram();
    let rec = |h: &mut Histogram<u64>, us: u64| h.saturating_record(us.max(1));
    let mut r = Report {
        target: Target::Switchboard.name().to_owned(),
        clients: args.clients,
        clients_joined: 0,
        rooms: args.rooms,
        rate: args.rate,
        backoff_max_ms: args.backoff_ms,
        backoff_policy: format!(
            "first reconnect after a uniform random wait in [0, {} ms) from the close; each failed attempt then waits uniform [0, min({} s, {} ms × 2^attempt))",
            args.backoff_ms,
            member::BACKOFF_CAP.as_secs(),
            args.backoff_ms
        ),
        seed,
        warmup_s: args.warmup,
        after_kill_s: args.after_kill,
        killed_clients: 0,
        resumed: 0,
        attempts: 0,
        noticed: Latency::default(),
        backoff: Latency::default(),
        connected: Latency::default(),
        resumed_at: Latency::default(),
        first_message: Latency::default(),
        no_message_after_resume: 0,
        published: heads.iter().sum(),
        expected: 0,
        delivered: 0,
        missed: 0,
        missed_killed: 0,
        missed_surviving: 0,
        duplicates: 0,
        duplicates_killed: 0,
        duplicates_surviving: 0,
        out_of_order: 0,
        gaps: 0,
        incomplete: 0,
        errors: BTreeMap::new(),
        unexpected_drops: BTreeMap::new(),
        publish_errors: BTreeMap::new(),
        setup_s: 0.0,
        drain_s: 0.0,
        cpu: CpuUse::default(),
    };
    for o in outcomes {
        for (k, v) in &o.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.unexpected_drops {
            *r.unexpected_drops.entry(k.clone()).or_default() += v;
        }
        r.attempts += u64::from(o.attempts);
        if !o.joined {
            continue;
        }
        r.clients_joined += 1;
        let head = heads.get(o.room).copied().unwrap_or(0);
        let owed = head.saturating_sub(o.base);
        let (mut missed, mut dups) = (0u64, 0u64);
        for k in 0..owed as usize {
            match o.counts.get(k).copied().unwrap_or(0) {
                0 => missed += 1,
                c => {
                    r.delivered += 1;
                    dups += u64::from(c - 1);
                }
            }
        }
        r.expected += owed;
        r.missed += missed;
        r.duplicates += dups;
        if o.on_killed {
            r.missed_killed += missed;
            r.duplicates_killed += dups;
        } else {
            r.missed_surviving += missed;
            r.duplicates_surviving += dups;
        }
        r.out_of_order += o.out_of_order;
        r.gaps += o.gaps;
        if o.max_seq < head {
            r.incomplete += 1;
        }
        if let Some(us) = o.noticed_us {
            r.killed_clients += 1;
            rec(&mut noticed, us);
            if let Some(b) = o.backoff_us {
                rec(&mut backoff, b);
            }
            if let Some(c) = o.connected_us {
                rec(&mut connected, c);
            }
            if let Some(j) = o.resumed_us {
                r.resumed += 1;
                rec(&mut resumed_at, j);
                let f = o.first_message_us.unwrap_or_else(|| {
                    r.no_message_after_resume += 1;
                    j
                });
                rec(&mut first, f);
            }
        }
    }
    r.noticed = Latency::of(&noticed);
    r.backoff = Latency::of(&backoff);
    r.connected = Latency::of(&connected);
    r.resumed_at = Latency::of(&resumed_at);
    r.first_message = Latency::of(&first);
    r.errors = errors;
    r
}
