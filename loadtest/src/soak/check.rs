//! The soak's end checks, once publishing has stopped and the faults are
//! over:
//!
//! - every client still connected reaches its room's head (a seq it lacks
//!   is still in history, so it is a loss);
//! - history, read back with `rooms.history`, holds every seq from 1 to the
//!   head, every acknowledged publish exactly at its seq and no publish
//!   twice; no client skipped (or was sent a `gap` for) a seq history has;
//! - presence converges within the documented bound: connected users
//!   online, users who left offline, watchers' views equal to the truth;
//! - every acknowledged notification is in its user's list (across Redis
//!   restarts).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_test_harness::client::{Ws, connect_raw};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::state::{LEFT, LIVE, Ledger, Shared};

/// A connection that sends one request at a time and skips pushes.
pub struct Checker {
    ws: Ws,
    next: u64,
}

impl Checker {
    /// Connects as `user` to the first gateway that accepts.
    pub async fn connect(sh: &Shared, user: &str) -> anyhow::Result<Self> {
        let token = sh.tokens.for_user(user)?.unwrap_or_default();
        let auth = format!("Bearer {token}");
        let mut last = String::new();
        for _ in 0..5 {
            for url in &sh.urls {
                match connect_raw(url, &[("Authorization", &auth)]).await {
                    Ok((ws, _)) => return Ok(Self { ws, next: 0 }),
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::bail!("checker {user} could not connect: {last}")
    }

    /// Sends a request and returns its `data`; an `unavailable` or
    /// `timeout` answer is retried a few times.
    pub async fn call(&mut self, op: &str, data: Value) -> anyhow::Result<Value> {
        let mut last = String::new();
        for _ in 0..5 {
            self.next += 1;
            let id = format!("c{}", self.next);
            let frame = json!({"id": id, "op": op, "data": data}).to_string();
            self.ws.send(Message::text(frame)).await?;
            let reply = self.reply(&id).await?;
            if reply["ok"] == json!(true) {
                return Ok(reply["data"].clone());
            }
            let code = reply["error"]["code"].as_str().unwrap_or("?").to_owned();
            if !matches!(
                code.as_str(),
                "unavailable" | "timeout" | "service_unavailable"
            ) {
                anyhow::bail!("{op}: {}", reply["error"]);
            }
            last = code;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::bail!("{op}: {last}")
    }

    async fn reply(&mut self, id: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow::anyhow!("no reply within 15 s"))?;
            match m {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str())?;
                    if v["id"] == json!(id) {
                        return Ok(v);
                    }
                }
                Some(Ok(Message::Close(f))) => anyhow::bail!("closed by the server: {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("connection ended"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Waits (at most `max`) until no publish awaits its reply.
pub async fn settle(sh: &Shared, max: Duration) {
    let deadline = Instant::now() + max;
    while sh.counters.pending.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each room's head seq.
pub async fn heads(ch: &mut Checker, sh: &Shared) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    for room in &sh.rooms {
        let info = ch.call("rooms.info", json!({"room": room})).await?;
        out.push(info["seq"].as_u64().unwrap_or(0));
    }
    Ok(out)
}

/// Waits (at most `max`) for every connected client to reach its room's
/// head; then each one short of it, and each client not connected, is a
/// violation.
pub async fn tails(sh: &Shared, rooms_of: &[usize], heads: &[u64], max: Duration) {
    let behind = |i: usize| {
        let p = sh.progress[i].load(Ordering::Relaxed);
        sh.state_of(i) == LIVE && p != u64::MAX && p < heads[rooms_of[i]]
    };
    let deadline = Instant::now() + max;
    while (0..rooms_of.len()).any(behind) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..rooms_of.len() {
        if behind(i) {
            sh.violation(
                "missed",
                format!(
                    "u{i}: has seqs up to {} of {} but the head is {} (still in history)",
                    sh.progress[i].load(Ordering::Relaxed),
                    sh.rooms[rooms_of[i]],
                    heads[rooms_of[i]]
                ),
            );
        } else if sh.state_of(i) != LIVE && sh.state_of(i) != LEFT {
            sh.violation(
                "not reconnected",
                format!("u{i} has no working connection at the end"),
            );
        }
    }
}

/// What the history read-back found besides violations.
#[derive(Debug, Default)]
pub struct HistoryStats {
    pub messages: u64,
    pub unknown_stored: u64,
    pub unknown_absent: u64,
}

/// Reads every room's whole history and checks it against the ledger.
pub async fn history(ch: &mut Checker, sh: &Shared, heads: &[u64]) -> anyhow::Result<HistoryStats> {
    // room → seq → (client, n)
    let mut stored: Vec<Stored> = Vec::new();
    for room in &sh.rooms {
        let mut map = BTreeMap::new();
        let mut after = 0u64;
        loop {
            let page = ch
                .call(
                    "rooms.history",
                    json!({"room": room, "after": after, "limit": 500}),
                )
                .await?;
            if page["not_recovered"] == json!(true) {
                sh.violation(
                    "history",
                    format!("{room}: history no longer starts at seq 1"),
                );
            }
            let msgs = page["messages"].as_array().cloned().unwrap_or_default();
            for m in &msgs {
                let seq = m["seq"].as_u64().unwrap_or(0);
                let key = (
                    m["data"]["c"].as_u64().unwrap_or(u64::MAX),
                    m["data"]["n"].as_u64().unwrap_or(0),
                );
                map.insert(seq, key);
                after = after.max(seq);
            }
            if page["more"] != json!(true) || msgs.is_empty() {
                break;
            }
        }
        stored.push(map);
    }
    let (st, found) = sh.with(|l| audit(&sh.rooms, &stored, heads, l));
    for (kind, detail) in found {
        sh.violation(kind, detail);
    }
    Ok(st)
}

/// One room's history: seq → (client, n) of the publish stored there.
pub type Stored = BTreeMap<u64, (u64, u64)>;

/// Checks the histories against what clients recorded: every seq up to the
/// head stored, no publish stored twice, every acknowledged publish at its
/// seq, no skipped or `gap`-reported seq that history holds.
pub fn audit(
    rooms: &[String],
    stored: &[Stored],
    heads: &[u64],
    l: &Ledger,
) -> (HistoryStats, Vec<(&'static str, String)>) {
    let mut st = HistoryStats::default();
    let mut out = Vec::new();
    for (r, map) in stored.iter().enumerate() {
        let room = &rooms[r];
        st.messages += map.len() as u64;
        let missing: Vec<u64> = (1..=heads[r]).filter(|s| !map.contains_key(s)).collect();
        if !missing.is_empty() {
            out.push((
                "history",
                format!(
                    "{room}: {} seqs up to the head {} are not in history (first {:?})",
                    missing.len(),
                    heads[r],
                    &missing[..missing.len().min(5)]
                ),
            ));
        }
        let mut seen: HashMap<(u64, u64), u64> = HashMap::new();
        for (seq, key) in map {
            if let Some(first) = seen.insert(*key, *seq) {
                out.push((
                    "stored twice",
                    format!("{room}: publish {key:?} (client, n) at seqs {first} and {seq}"),
                ));
            }
        }
    }
    for a in &l.acked {
        let want = (a.client as u64, a.n);
        match stored[a.room].get(&a.seq) {
            Some(got) if *got == want => {}
            got => out.push((
                "acknowledged publish lost",
                format!(
                    "{}: u{} publish #{} acknowledged at seq {} but history has {got:?} there",
                    rooms[a.room], a.client, a.n, a.seq
                ),
            )),
        }
    }
    for (room, client, n) in &l.unknown {
        if stored[*room].values().any(|k| *k == (*client as u64, *n)) {
            st.unknown_stored += 1;
        } else {
            st.unknown_absent += 1;
        }
    }
    for (kind, list) in [("missed", &l.holes), ("gap for a stored seq", &l.gaps)] {
        for h in list {
            let present = (h.from..=h.to)
                .filter(|s| stored[h.room].contains_key(s))
                .count();
            if present > 0 {
                out.push((
                    kind,
                    format!(
                        "u{}: seqs {}..={} of {} skipped, {present} of them in history",
                        h.client, h.from, h.to, rooms[h.room]
                    ),
                ));
            }
        }
    }
    (st, out)
}

/// Polls presence until it matches the clients' states: connected users
/// online, users who left offline (each by its leave time plus `bound`),
/// and every watcher's view equal to the truth. Returns how long it took.
pub async fn presence(
    ch: &mut Checker,
    sh: &Shared,
    watchers: &[(usize, Vec<usize>)],
    bound: Duration,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let n = sh.state.len();
    let leave_times: HashMap<usize, Instant> =
        sh.with(|l| l.leavers.iter().map(|v| (v.client, v.at)).collect());
    let expected = |i: usize| match sh.state_of(i) {
        LIVE => Some("online"),
        LEFT => Some("offline"),
        _ => None,
    };
    let mut overdue_reported = vec![false; n];
    let deadline = started + bound;
    loop {
        let mut truth: HashMap<usize, String> = HashMap::new();
        let users: Vec<String> = (0..n).map(Shared::user).collect();
        for chunk in users.chunks(500) {
            let r = ch.call("presence.get", json!({"users": chunk})).await?;
            for p in r["users"].as_array().cloned().unwrap_or_default() {
                if let Some(i) = p["user"].as_str().and_then(Shared::client_of) {
                    truth.insert(i, p["status"].as_str().unwrap_or("?").to_owned());
                }
            }
        }
        let now = Instant::now();
        let mut wrong = Vec::new();
        for (i, reported) in overdue_reported.iter_mut().enumerate() {
            let Some(want) = expected(i) else { continue };
            let got = truth.get(&i).map_or("?", String::as_str);
            if got == want {
                continue;
            }
            let overdue = leave_times.get(&i).is_some_and(|t| now > *t + bound);
            if overdue && !*reported {
                *reported = true;
                sh.violation(
                    "presence",
                    format!("u{i} left over {bound:?} ago but is still {got}"),
                );
            }
            wrong.push(format!("u{i} is {got}, expected {want}"));
        }
        for (w, watched) in watchers {
            if sh.state_of(*w) != LIVE {
                continue;
            }
            let view = match sh.views[*w].lock() {
                Ok(g) => g.clone(),
                Err(e) => e.into_inner().clone(),
            };
            for u in watched {
                let (Some(truth), Some(want)) = (truth.get(u), expected(*u)) else {
                    continue;
                };
                let seen = view.get(u).map_or("nothing", |(_, s)| s.as_str());
                if seen != truth || truth != want {
                    wrong.push(format!(
                        "watcher u{w} sees u{u} {seen}, presence says {truth}"
                    ));
                }
            }
        }
        if wrong.is_empty() {
            return Ok(started.elapsed().as_secs_f64());
        }
        if now >= deadline {
            for w in wrong.iter().take(20) {
                sh.violation("presence", format!("not converged within {bound:?}: {w}"));
            }
            return Ok(started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Lists each user's notifications (on a connection of their own) and
/// checks every acknowledged one is there. Returns how many were checked.
pub async fn notifications(sh: &Shared) -> anyhow::Result<usize> {
    let acked = sh.with(|l| l.notifications.clone());
    let mut by_user: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (u, id) in acked {
        by_user.entry(u).or_default().push(id);
    }
    let mut checked = 0;
    for (u, ids) in by_user {
        let mut ch = Checker::connect(sh, &Shared::user(u)).await?;
        let mut have = std::collections::HashSet::new();
        let mut offset = 0u64;
        loop {
            let page = ch
                .call(
                    "notifications.list",
                    json!({"offset": offset, "limit": 200}),
                )
                .await?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            offset += items.len() as u64;
            have.extend(
                items
                    .iter()
                    .filter_map(|n| n["id"].as_str().map(str::to_owned)),
            );
            if page["more"] != json!(true) || items.is_empty() {
                break;
            }
        }
        ch.close().await;
        for id in &ids {
            checked += 1;
            if !have.contains(id) {
                sh.violation(
                    "notification lost",
                    format!("u{u}: acknowledged notification {id} is not in the list"),
                );
            }
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::state::{Ack, Hole};

    #[test]
    fn the_audit_finds_lost_duplicated_and_skipped_messages() {
        let rooms = vec!["r0".to_owned()];
        // Seq 3 is missing; client 1's publish #1 is stored twice.
        let stored: Vec<Stored> = vec![[(1, (0, 1)), (2, (1, 1)), (4, (1, 1)), (5, (0, 2))].into()];
        let ack = |seq, client, n| Ack {
            room: 0,
            seq,
            client,
            n,
        };
        let l = Ledger {
            acked: vec![ack(1, 0, 1), ack(2, 1, 1), ack(5, 0, 9)],
            unknown: vec![(0, 0, 2), (0, 7, 7)],
            holes: vec![
                Hole {
                    room: 0,
                    client: 3,
                    from: 3,
                    to: 3,
                },
                Hole {
                    room: 0,
                    client: 4,
                    from: 4,
                    to: 4,
                },
            ],
            ..Ledger::default()
        };
        let (st, found) = audit(&rooms, &stored, &[5], &l);
        let kinds: Vec<&str> = found.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                "history",
                "stored twice",
                "acknowledged publish lost",
                "missed"
            ],
            "{found:?}"
        );
        assert!(found[3].1.contains("u4"), "{found:?}");
        assert_eq!(
            (st.messages, st.unknown_stored, st.unknown_absent),
            (4, 1, 1)
        );

        let clean = Ledger {
            acked: vec![ack(1, 0, 1)],
            ..Ledger::default()
        };
        let ok: Vec<Stored> = vec![[(1, (0, 1))].into()];
        assert!(audit(&rooms, &ok, &[1], &clean).1.is_empty());
    }
}
