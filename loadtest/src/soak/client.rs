//! One soak client: a user in one room who publishes numbered messages,
//! checks every message it receives (per room, seqs strictly increasing, so
//! no duplicate and no reordering; a skipped seq is recorded for the end
//! check against history), maybe watches other users' presence, and comes
//! back after any disconnect like a client SDK: a uniform random wait in
//! `[0, 1 s)`, then any gateway, failed attempts backing off with full
//! jitter up to 5 s, then `rooms.join` with `after` = the last seq seen.
//!
//! Some clients leave for good: at a set time (clean close) or at the first
//! connection loss after the warm-up (they never come back, as a device
//! that died with its gateway).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_test_harness::client::{Ws, connect_raw};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::state::{Ack, CONNECTING, Hole, LEFT, LIVE, Leaver, Shared};
use crate::rng::Rng;

/// The longest wait between two failed connection attempts.
const BACKOFF_CAP_MS: u64 = 5_000;
/// A handshake that takes longer (a paused gateway) is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A request unanswered this long is given up (the gateway answers
/// `timeout` after 5 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(12);

/// Refusals a fault explains: a dependency down, a request lost with a
/// worker, a connection the cluster already forgot. Others are printed.
const EXPECTED_REFUSALS: [&str; 5] = [
    "unavailable",
    "service_unavailable",
    "timeout",
    "not_member",
    "rate_limited",
];

/// What one client does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub room: usize,
    /// Mean wait between publishes.
    pub publish_every: Duration,
    /// Leave (clean close) at this time from the start.
    pub leave_at: Option<Duration>,
    /// Leave at the first connection loss after the warm-up.
    pub abandon_after: Option<Duration>,
    /// Users whose presence it watches.
    pub watch: Vec<usize>,
}

enum End {
    Stop,
    Left,
    Lost(String),
}

#[derive(Debug, Clone, Copy)]
enum Req {
    Join,
    Publish(u64),
    Subscribe,
}

/// Per-client state that outlives a connection.
struct Client {
    i: usize,
    plan: Plan,
    /// Highest seq seen in the room (None before the first join).
    last: Option<u64>,
    next_n: u64,
    next_id: u64,
    pending: HashMap<String, (Req, Instant)>,
    joined: bool,
}

pub async fn run(sh: std::sync::Arc<Shared>, i: usize, plan: Plan, first_delay: Duration) {
    let mut rng = Rng::derive(sh.seed, 1_000 + i as u64);
    let mut c = Client {
        i,
        plan,
        last: None,
        next_n: 1,
        next_id: 1,
        pending: HashMap::new(),
        joined: false,
    };
    let mut wait = first_delay;
    let mut failures: u32 = 0;
    loop {
        if !sleep_unless_stopped(&sh, wait).await {
            return;
        }
        if c.leave_due(&sh) {
            c.leave(&sh, "closed");
            return;
        }
        let url = &sh.urls[rng.below(sh.urls.len() as u64) as usize];
        let ws = match connect(&sh, url, i).await {
            Ok(ws) => ws,
            Err(_) => {
                sh.counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                let ceiling = (1_000u64 << failures.min(8)).min(BACKOFF_CAP_MS);
                wait = rng.millis(0, ceiling);
                continue;
            }
        };
        failures = 0;
        sh.counters.connects.fetch_add(1, Ordering::Relaxed);
        let end = c.session(&sh, ws, &mut rng).await;
        c.drop_pending(&sh);
        match end {
            End::Stop | End::Left => return,
            End::Lost(_why) => {
                sh.set_state(i, CONNECTING);
                if c.plan
                    .abandon_after
                    .is_some_and(|t| sh.start.elapsed() >= t)
                {
                    c.leave(&sh, "connection lost, never came back");
                    return;
                }
                wait = rng.millis(0, 1_000);
            }
        }
    }
}

async fn sleep_unless_stopped(sh: &Shared, d: Duration) -> bool {
    tokio::select! {
        _ = sh.stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

async fn connect(sh: &Shared, url: &str, i: usize) -> Result<Ws, String> {
    let token = sh
        .tokens
        .for_user(&Shared::user(i))
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let auth = format!("Bearer {token}");
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        connect_raw(url, &[("Authorization", &auth)]),
    )
    .await
    {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

impl Client {
    fn leave_due(&self, sh: &Shared) -> bool {
        self.plan.leave_at.is_some_and(|t| sh.start.elapsed() >= t)
    }

    fn leave(&mut self, sh: &Shared, how: &'static str) {
        sh.set_state(self.i, LEFT);
        sh.with(|l| {
            l.leavers.push(Leaver {
                client: self.i,
                at: Instant::now(),
                how,
            })
        });
    }

    /// Publishes whose reply will never come: their outcome is unknown.
    fn drop_pending(&mut self, sh: &Shared) {
        let room = self.plan.room;
        let lost: Vec<u64> = self
            .pending
            .drain()
            .filter_map(|(_, (r, _))| match r {
                Req::Publish(n) => Some(n),
                _ => None,
            })
            .collect();
        if !lost.is_empty() {
            sh.counters
                .pending
                .fetch_sub(lost.len() as i64, Ordering::Relaxed);
            sh.with(|l| l.unknown.extend(lost.iter().map(|n| (room, self.i, *n))));
        }
        self.joined = false;
    }

    async fn send(&mut self, ws: &mut Ws, req: Req, op: &str, data: Value) -> bool {
        let id = format!("r{}", self.next_id);
        self.next_id += 1;
        let frame = json!({"id": id, "op": op, "data": data}).to_string();
        // Pending before the write: a publish whose write fails is left to
        // `drop_pending`, like any unanswered one.
        self.pending.insert(id, (req, Instant::now()));
        ws.send(Message::text(frame)).await.is_ok()
    }

    async fn join(&mut self, sh: &Shared, ws: &mut Ws) -> bool {
        let room = &sh.rooms[self.plan.room];
        let data = match self.last {
            Some(after) => json!({"room": room, "after": after}),
            None => json!({"room": room}),
        };
        self.send(ws, Req::Join, "rooms.join", data).await
    }

    async fn session(&mut self, sh: &Shared, mut ws: Ws, rng: &mut Rng) -> End {
        if !self.join(sh, &mut ws).await {
            return End::Lost("write failed".into());
        }
        if !self.plan.watch.is_empty() {
            let users: Vec<String> = self.plan.watch.iter().map(|u| Shared::user(*u)).collect();
            if !self
                .send(
                    &mut ws,
                    Req::Subscribe,
                    "presence.subscribe",
                    json!({"users": users}),
                )
                .await
            {
                return End::Lost("write failed".into());
            }
        }
        let mean = self.plan.publish_every.as_millis() as u64;
        let mut next_pub = Instant::now() + rng.millis(mean / 2, mean * 3 / 2);
        let leave_at = self.plan.leave_at.map(|t| sh.start + t);
        let mut rejoin_at: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let publishing = self.joined && !sh.publishing.is_cancelled();
            tokio::select! {
                _ = sh.stop.cancelled() => {
                    let _ = ws.close(None).await;
                    return End::Stop;
                }
                _ = sleep_opt(leave_at), if leave_at.is_some() => {
                    let _ = ws.close(None).await;
                    self.drop_pending(sh);
                    self.leave(sh, "closed");
                    return End::Left;
                }
                _ = tokio::time::sleep_until(next_pub), if publishing => {
                    next_pub = Instant::now() + rng.millis(mean / 2, mean * 3 / 2);
                    if sh.publishing.is_cancelled() {
                        continue;
                    }
                    let n = self.next_n;
                    self.next_n += 1;
                    // With echo, so the sender checks its own messages' order too.
                    let data = json!({"room": sh.rooms[self.plan.room], "data": {"c": self.i, "n": n}, "echo": true});
                    sh.counters.published.fetch_add(1, Ordering::Relaxed);
                    sh.counters.pending.fetch_add(1, Ordering::Relaxed);
                    if !self.send(&mut ws, Req::Publish(n), "rooms.publish", data).await {
                        return End::Lost("write failed".into());
                    }
                }
                _ = sleep_opt(rejoin_at), if rejoin_at.is_some() => {
                    rejoin_at = None;
                    if !self.join(sh, &mut ws).await {
                        return End::Lost("write failed".into());
                    }
                }
                _ = tick.tick() => self.expire(sh),
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = match serde_json::from_str(t.as_str()) {
                            Ok(v) => v,
                            Err(e) => {
                                sh.violation("protocol", format!("u{}: bad JSON from the server: {e}", self.i));
                                continue;
                            }
                        };
                        if let Some(retry) = self.handle(sh, &v) {
                            rejoin_at = Some(Instant::now() + retry);
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        return End::Lost(format!("closed ({})", f.map_or(1005, |f| u16::from(f.code))));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return End::Lost(e.to_string()),
                    None => return End::Lost("ended".into()),
                },
            }
        }
    }

    /// Requests unanswered for too long: their outcome is unknown.
    fn expire(&mut self, sh: &Shared) {
        let now = Instant::now();
        let old: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) > REQUEST_TIMEOUT)
            .map(|(id, _)| id.clone())
            .collect();
        for id in old {
            if let Some((Req::Publish(n), _)) = self.pending.remove(&id) {
                sh.counters.pending.fetch_sub(1, Ordering::Relaxed);
                sh.with(|l| l.unknown.push((self.plan.room, self.i, n)));
            }
        }
    }

    /// Handles one frame; returns a delay after which to join again when a
    /// join failed.
    fn handle(&mut self, sh: &Shared, v: &Value) -> Option<Duration> {
        if let Some(id) = v.get("id").and_then(Value::as_str) {
            let (req, _) = self.pending.remove(id)?;
            let ok = v["ok"] == json!(true);
            let code = v["error"]["code"].as_str().unwrap_or("?").to_owned();
            match req {
                Req::Join if ok => {
                    let seq = v["data"]["seq"].as_u64().unwrap_or(0);
                    if self.last.is_none() {
                        self.last = Some(seq);
                        sh.progress[self.i].store(seq, Ordering::Relaxed);
                    }
                    self.joined = true;
                    sh.set_state(self.i, LIVE);
                }
                Req::Join => {
                    sh.counters.join_errors.fetch_add(1, Ordering::Relaxed);
                    return Some(Duration::from_millis(500));
                }
                Req::Publish(n) => {
                    sh.counters.pending.fetch_sub(1, Ordering::Relaxed);
                    let seq = v["data"]["seq"].as_u64();
                    match (ok, seq) {
                        (true, Some(seq)) => {
                            sh.counters.acked.fetch_add(1, Ordering::Relaxed);
                            sh.with(|l| {
                                l.acked.push(Ack {
                                    room: self.plan.room,
                                    seq,
                                    client: self.i,
                                    n,
                                })
                            });
                        }
                        _ => {
                            if !EXPECTED_REFUSALS.contains(&code.as_str()) {
                                sh.note(format!(
                                    "u{}: rooms.publish answered {code}: {}",
                                    self.i, v["error"]["message"]
                                ));
                            }
                            sh.with(|l| {
                                *l.refused.entry(code).or_default() += 1;
                                l.unknown.push((self.plan.room, self.i, n));
                            });
                        }
                    }
                }
                Req::Subscribe if ok => {
                    if let Some(users) = v["data"]["users"].as_array() {
                        for p in users {
                            self.see_presence(sh, p);
                        }
                    }
                }
                Req::Subscribe => {}
            }
            return None;
        }
        let data = &v["data"];
        match v["event"].as_str() {
            Some("message") => self.message(sh, data),
            Some("gap") => {
                let (from, to) = (
                    data["from"].as_u64().unwrap_or(0),
                    data["to"].as_u64().unwrap_or(0),
                );
                sh.with(|l| {
                    l.gaps.push(Hole {
                        room: self.plan.room,
                        client: self.i,
                        from,
                        to,
                    })
                });
                if let Some(last) = self.last.as_mut() {
                    *last = (*last).max(to);
                }
            }
            Some("presence") => self.see_presence(sh, data),
            _ => {}
        }
        None
    }

    fn message(&mut self, sh: &Shared, data: &Value) {
        let room = &sh.rooms[self.plan.room];
        let seq = data["seq"].as_u64().unwrap_or(0);
        if data["room"].as_str() != Some(room.as_str()) {
            sh.violation(
                "protocol",
                format!("u{}: a message of another room: {data}", self.i),
            );
            return;
        }
        let Some(last) = self.last else {
            // The first join was answered with an error (`timeout`) but took
            // effect: its messages start here.
            self.last = Some(seq);
            sh.progress[self.i].store(seq, Ordering::Relaxed);
            sh.counters.delivered.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if seq <= last {
            sh.violation(
                "order",
                format!(
                    "u{}: seq {seq} of {room} after seq {last} (duplicate or out of order)",
                    self.i
                ),
            );
            return;
        }
        if seq > last + 1 {
            sh.with(|l| {
                l.holes.push(Hole {
                    room: self.plan.room,
                    client: self.i,
                    from: last + 1,
                    to: seq - 1,
                })
            });
        }
        self.last = Some(seq);
        sh.progress[self.i].store(seq, Ordering::Relaxed);
        sh.counters.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Keeps the newest version of a watched user's presence.
    fn see_presence(&self, sh: &Shared, p: &Value) {
        let Some(user) = p["user"].as_str().and_then(Shared::client_of) else {
            return;
        };
        if !self.plan.watch.contains(&user) {
            return;
        }
        let ver = p["ver"].as_u64().unwrap_or(0);
        let status = p["status"].as_str().unwrap_or("?").to_owned();
        let mut view = match sh.views[self.i].lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        let newer = view.get(&user).is_none_or(|(v, _)| ver >= *v);
        if newer {
            view.insert(user, (ver, status));
        }
    }
}

async fn sleep_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::Shared;

    #[test]
    fn user_ids_round_trip() {
        assert_eq!(Shared::client_of(&Shared::user(42)), Some(42));
        assert_eq!(Shared::client_of("checker"), None);
    }
}
