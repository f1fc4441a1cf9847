//! The in-memory half of a matching pass: given a window of waiting tickets
//! (oldest first), propose groups. Nothing here talks to Redis; proposals
//! are claimed atomically afterwards, so a proposal built from a stale
//! window is simply refused.
//!
//! Invariants:
//! - Tickets are taken as anchors oldest first, and each anchor takes the
//!   oldest compatible candidates: older tickets are served first.
//! - Every pair in a proposed group is [`compatible`] (mutually, with each
//!   side's relaxation at `now`), the group size fits every member's
//!   `[min, max]`, and no ticket is in two proposals.
//! - Work is bounded: candidates come from an index on the anchor's most
//!   selective equality term when it has one, and each anchor examines at
//!   most [`MAX_CHECKS_PER_ANCHOR`] candidates, so a pass over n tickets is
//!   O(n · MAX_CHECKS_PER_ANCHOR) at worst, with no Redis round trips.

use std::collections::HashMap;

use super::ticket::{Test, Ticket, compatible};

/// Most candidates one anchor examines in one pass.
pub const MAX_CHECKS_PER_ANCHOR: usize = 2048;

/// Proposes groups (indexes into `tickets`, anchor first) for a window
/// sorted oldest first.
pub fn propose(tickets: &[Ticket], now: u64, relax_after_secs: &[u64]) -> Vec<Vec<usize>> {
    let relaxed: Vec<usize> = tickets
        .iter()
        .map(|t| t.relaxed(now, relax_after_secs))
        .collect();
    // Posting lists: (key, value) → ticket indexes, ascending (= oldest first).
    let mut index: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, t) in tickets.iter().enumerate() {
        for (k, v) in &t.props {
            index.entry(v.index_key(k)).or_default().push(i);
        }
    }
    let mut taken = vec![false; tickets.len()];
    let mut groups = Vec::new();
    let mut candidates: Vec<usize> = Vec::new();
    for a in 0..tickets.len() {
        if taken[a] {
            continue;
        }
        let anchor = &tickets[a];
        candidates.clear();
        // Only younger tickets: an older one still free was an anchor
        // already and found nobody compatible (compatibility is symmetric).
        match narrowest(anchor, relaxed[a], &index) {
            Some(lists) => {
                for list in &lists {
                    let start = list.partition_point(|&i| i <= a);
                    candidates.extend(
                        list[start..]
                            .iter()
                            .copied()
                            .filter(|&i| !taken[i])
                            .take(MAX_CHECKS_PER_ANCHOR),
                    );
                }
                if lists.len() > 1 {
                    candidates.sort_unstable();
                    candidates.dedup();
                }
            }
            None => candidates.extend(
                (a + 1..tickets.len())
                    .filter(|&i| !taken[i])
                    .take(MAX_CHECKS_PER_ANCHOR),
            ),
        }
        candidates.truncate(MAX_CHECKS_PER_ANCHOR);
        let mut group = vec![a];
        let (mut lo, mut hi) = (anchor.min, anchor.max);
        for &c in &candidates {
            if group.len() as u32 >= hi {
                break;
            }
            let t = &tickets[c];
            let (nlo, nhi) = (lo.max(t.min), hi.min(t.max));
            if nlo > nhi || group.len() as u32 + 1 > nhi {
                continue;
            }
            if group
                .iter()
                .all(|&m| compatible(&tickets[m], relaxed[m], t, relaxed[c]))
            {
                group.push(c);
                (lo, hi) = (nlo, nhi);
            }
        }
        if group.len() as u32 >= lo && group.len() >= 2 {
            for &m in &group {
                taken[m] = true;
            }
            groups.push(group);
        }
    }
    groups
}

/// The posting lists for the anchor's most selective equality term in
/// force (every candidate must be in one of them), or `None` when it has
/// no such term.
fn narrowest<'a>(
    t: &Ticket,
    relaxed: usize,
    index: &'a HashMap<String, Vec<usize>>,
) -> Option<Vec<&'a [usize]>> {
    const EMPTY: &[usize] = &[];
    let mut best: Option<(usize, Vec<&'a [usize]>)> = None;
    for term in t.active_terms(relaxed) {
        let Test::In(values) = &term.test else {
            continue;
        };
        let lists: Vec<&[usize]> = values
            .iter()
            .map(|v| {
                index
                    .get(&v.index_key(&term.key))
                    .map_or(EMPTY, Vec::as_slice)
            })
            .collect();
        let size: usize = lists.iter().map(|l| l.len()).sum();
        if best.as_ref().is_none_or(|(s, _)| size < *s) {
            best = Some((size, lists));
        }
    }
    best.map(|(_, l)| l)
}

#[cfg(test)]
mod tests {
    use super::super::ticket::tests::ticket;
    use super::*;
    use serde_json::json;

    fn ids(tickets: &[Ticket], groups: &[Vec<usize>]) -> Vec<Vec<String>> {
        groups
            .iter()
            .map(|g| g.iter().map(|&i| tickets[i].id.clone()).collect())
            .collect()
    }

    #[test]
    fn oldest_compatible_tickets_pair_first() {
        let ts = vec![
            ticket(
                "a",
                1,
                json!({"props": {"region": "eu"}, "query": {"required": {"region": "eu"}}}),
            ),
            ticket("b", 2, json!({"props": {"region": "us"}})),
            ticket("c", 3, json!({"props": {"region": "eu"}})),
            ticket("d", 4, json!({"props": {"region": "eu"}})),
            ticket("e", 5, json!({"props": {"region": "us"}})),
        ];
        let g = propose(&ts, 10, &[]);
        assert_eq!(ids(&ts, &g), [["a", "c"], ["b", "d"]]);
    }

    #[test]
    fn incompatible_tickets_stay_and_relax_later() {
        let ts = vec![
            ticket(
                "a",
                0,
                json!({"props": {"language": "en"}, "query": {"optional": [{"language": "en"}]}}),
            ),
            ticket("b", 0, json!({"props": {"language": "de"}})),
        ];
        assert!(propose(&ts, 500, &[1]).is_empty());
        assert_eq!(ids(&ts, &propose(&ts, 1_000, &[1])), [["a", "b"]]);
    }

    #[test]
    fn groups_fit_every_members_size_and_are_pairwise_compatible() {
        let ts = vec![
            ticket("a", 0, json!({"min": 3, "max": 3, "props": {"x": 1}})),
            ticket("b", 1, json!({"max": 4, "props": {"x": 2}})),
            ticket("c", 2, json!({"props": {"x": 3}})),
            ticket(
                "d",
                3,
                json!({"min": 3, "max": 4, "props": {"x": 4}, "query": {"ranges": {"x": {"max": 2}}}}),
            ),
            ticket("e", 4, json!({"min": 3, "max": 4, "props": {"x": 2}})),
        ];
        // a wants exactly 3: b fits, c only wants pairs, d (x <= 2) accepts
        // a and b; e comes too late and cannot pair with c.
        let g = propose(&ts, 0, &[]);
        assert_eq!(ids(&ts, &g), [["a", "b", "d"]]);
    }

    #[test]
    fn a_large_window_is_matched_without_quadratic_blowup() {
        let n = 20_000;
        let ts: Vec<Ticket> = (0..n)
            .map(|i| {
                let region = ["eu", "us", "ap", "sa"][i % 4];
                ticket(
                    &format!("t{i:06}"),
                    i as u64,
                    json!({"props": {"region": region, "skill": (i % 100)}, "query": {"required": {"region": region}, "ranges": {"skill": {"min": 0, "max": 100}}}}),
                )
            })
            .collect();
        let started = std::time::Instant::now();
        let g = propose(&ts, n as u64, &[]);
        assert_eq!(g.len(), n / 2);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let mut seen = std::collections::HashSet::new();
        for grp in &g {
            for &i in grp {
                assert!(seen.insert(i), "ticket {i} in two groups");
            }
        }
    }
}
