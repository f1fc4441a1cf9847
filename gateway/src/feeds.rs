//! Interest-based fan-out with per-feed ordering.
//!
//! A gateway subscribes to a fan-out subject (a room, `sb.room.<t>.<r>`) only
//! while at least one of its connections is attached, so a broadcast costs one
//! NATS message per gateway, not per member. Each subscribed subject has one
//! feed task that owns the subscription and the member list.
//!
//! Sequenced pushes (`seq > 0`) are delivered strictly in seq order, once:
//! - duplicates (seq already delivered) are dropped;
//! - out-of-order arrivals (e.g. from two worker replicas) wait in a bounded
//!   reorder buffer; if the missing seqs do not arrive within
//!   `reorder_window_ms`, the feed asks the worker (`recover_subject`) for them;
//! - what the worker no longer holds is reported to members as a `gap` event
//!   with `"recovered": false`: never a silent hole.
//!
//! A member attached with `after_seq = L` receives every seq > L: when the
//! feed is already past L, the difference is replayed to that member alone.
//! A fresh feed catches up from history right after its subscription is
//! confirmed, which closes the race between a join and the SUB reaching NATS.
//!
//! That is the `LOG` mode (rooms). Two more modes share the machinery:
//! - `LATEST` (presence): each push is a whole state whose version is its seq;
//!   older versions are dropped, the latest is kept and handed to members who
//!   attach later, and a fresh feed fetches the current state after its SUB.
//! - `EVENTS` (app-wide broadcasts): pushes are delivered as they come.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use switchboard_proto::bus::{
    FeedMode, Interest, Push, ReplayBatch, ReplayItem, ReplayRequest, Reply,
};
use switchboard_shared::bus;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::outbox::Out;
use crate::protocol::push_frame;
use crate::registry::ConnHandle;

/// Tuning for feeds, from the gateway config.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    pub reorder_window: Duration,
    pub reorder_buffer: usize,
    pub request_timeout: Duration,
    pub gateway: String,
}

enum Cmd {
    Add {
        conn: Arc<ConnHandle>,
        after_seq: u64,
    },
    Remove {
        conn: u64,
    },
}

struct Entry {
    tx: mpsc::UnboundedSender<Cmd>,
    members: usize,
}

/// All feeds of one gateway.
pub struct Feeds {
    nats: async_nats::Client,
    cfg: FeedConfig,
    tasks: TaskTracker,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Feeds {
    /// Feeds whose tasks are spawned on `tasks`.
    pub fn new(nats: async_nats::Client, cfg: FeedConfig, tasks: TaskTracker) -> Self {
        Self {
            nats,
            cfg,
            tasks,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Number of subjects this gateway is subscribed to.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Attaches `conn` to the feed named by `interest`, subscribing when it is
    /// the first local member. Attaching twice is a no-op.
    pub fn attach(&self, conn: &Arc<ConnHandle>, interest: Interest) {
        if conn.cancel.is_cancelled() {
            return;
        }
        let Ok(mut mine) = conn.feeds.lock() else {
            return;
        };
        if !mine.insert(interest.subject.clone()) {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let entry = entries.entry(interest.subject.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let feed = Feed {
                nats: self.nats.clone(),
                cfg: self.cfg.clone(),
                tenant: conn.tenant.to_string(),
                mode: interest.mode(),
                interest: interest.clone(),
                next: None,
                last: None,
                pending: BTreeMap::new(),
                gap_since: None,
                members: HashMap::new(),
            };
            self.tasks.spawn(feed.run(rx));
            Entry { tx, members: 0 }
        });
        entry.members += 1;
        let _ = entry.tx.send(Cmd::Add {
            conn: conn.clone(),
            after_seq: interest.after_seq,
        });
    }

    /// Detaches `conn` from `subject`, unsubscribing after the last member.
    pub fn detach(&self, conn: &ConnHandle, subject: &str) {
        let Ok(mut mine) = conn.feeds.lock() else {
            return;
        };
        if !mine.remove(subject) {
            return;
        }
        self.detach_locked(conn.id, subject);
    }

    /// Detaches `conn` from everything (on disconnect).
    pub fn detach_all(&self, conn: &ConnHandle) {
        let subjects: Vec<String> = match conn.feeds.lock() {
            Ok(mut mine) => mine.drain().collect(),
            Err(_) => return,
        };
        for s in subjects {
            self.detach_locked(conn.id, &s);
        }
    }

    fn detach_locked(&self, conn: u64, subject: &str) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if let Some(entry) = entries.get_mut(subject) {
            let _ = entry.tx.send(Cmd::Remove { conn });
            entry.members = entry.members.saturating_sub(1);
            if entry.members == 0 {
                // Dropping the sender ends the feed task and its subscription.
                entries.remove(subject);
            }
        }
    }
}

struct Member {
    conn: Arc<ConnHandle>,
    /// First seq this member may receive.
    min_seq: u64,
}

struct Held {
    frame: Bytes,
    origin: Option<(String, u64)>,
    echo: bool,
}

struct Feed {
    nats: async_nats::Client,
    cfg: FeedConfig,
    tenant: String,
    mode: FeedMode,
    interest: Interest,
    /// Next seq to deliver; `None` until the first member is added.
    next: Option<u64>,
    /// `LATEST` mode: the newest state delivered, for members who come later.
    last: Option<(u64, Bytes)>,
    pending: BTreeMap<u64, Held>,
    gap_since: Option<Instant>,
    members: HashMap<u64, Member>,
}

impl Feed {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        let subject = self.interest.subject.clone();
        let mut sub = match self.nats.subscribe(subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(subject, error = %e, "feed subscription failed");
                return;
            }
        };
        // The server must have the SUB before the catch-up read, or a message
        // published in between would be neither live nor in the read.
        if let Err(e) = bus::sync(&self.nats).await {
            tracing::warn!(subject, error = %e, "could not confirm the subscription");
        }
        loop {
            let gap_deadline = self.gap_since.map(|t| t + self.cfg.reorder_window);
            tokio::select! {
                biased;
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Add { conn, after_seq }) => self.add(conn, after_seq).await,
                    Some(Cmd::Remove { conn }) => { self.members.remove(&conn); }
                    None => break,
                },
                msg = sub.next() => {
                    let Some(msg) = msg else { break };
                    match bus::decode::<Push>(&msg.payload) {
                        Ok(push) => self.on_push(push).await,
                        Err(e) => tracing::warn!(subject, error = %e, "malformed push dropped"),
                    }
                }
                _ = switchboard_shared::sleep_until_opt(gap_deadline), if gap_deadline.is_some() => self.recover_gap().await,
            }
        }
        let _ = sub.unsubscribe().await;
    }

    async fn add(&mut self, conn: Arc<ConnHandle>, after_seq: u64) {
        match self.mode {
            FeedMode::Log => self.add_log(conn, after_seq).await,
            FeedMode::Latest => self.add_latest(conn, after_seq).await,
            FeedMode::Events => {
                self.members.insert(conn.id, Member { conn, min_seq: 0 });
            }
        }
    }

    async fn add_latest(&mut self, conn: Arc<ConnHandle>, after_seq: u64) {
        let mut min_seq = after_seq + 1;
        if let Some((seq, frame)) = &self.last
            && *seq >= min_seq
        {
            conn.send_text(frame.clone());
            min_seq = seq + 1;
        }
        let fresh = self.next.is_none();
        self.members.insert(conn.id, Member { conn, min_seq });
        if fresh {
            // Whatever changed between the snapshot and the SUB.
            self.next = Some(after_seq + 1);
            if let Some(b) = self.replay(after_seq, 0).await
                && let Some(item) = b.items.into_iter().max_by_key(|i| i.seq)
            {
                self.on_latest(item.seq, item.frame);
            }
        }
    }

    fn on_latest(&mut self, seq: u64, frame: Bytes) {
        if self.next.is_some_and(|n| seq < n) {
            return; // an older state
        }
        let held = Held {
            frame,
            origin: None,
            echo: true,
        };
        self.deliver(seq, &held);
        self.next = Some(seq + 1);
        self.last = Some((seq, held.frame));
    }

    async fn add_log(&mut self, conn: Arc<ConnHandle>, after_seq: u64) {
        let first = after_seq + 1;
        match self.next {
            None => {
                // Fresh feed: deliver whatever was published since the join.
                self.next = Some(first);
                self.members.insert(
                    conn.id,
                    Member {
                        conn,
                        min_seq: first,
                    },
                );
                self.catch_up(after_seq, 0).await;
                self.drain_pending();
            }
            Some(next) if first < next => {
                // This member missed what the feed already delivered.
                let batch = self.replay(after_seq, next - 1).await;
                let mut expect = first;
                if let Some(b) = &batch {
                    if b.first_seq > expect && !b.gone {
                        conn.send_text(self.gap_frame(expect, b.first_seq.min(next) - 1));
                        expect = b.first_seq.min(next);
                    }
                    for item in &b.items {
                        if item.seq >= expect && item.seq < next {
                            if !self.is_own_without_echo(item, conn.id) {
                                conn.send_text(item.frame.clone());
                            }
                            expect = item.seq + 1;
                        }
                    }
                }
                if expect < next && batch.as_ref().is_none_or(|b| !b.gone) {
                    conn.send_text(self.gap_frame(expect, next - 1));
                }
                self.members.insert(
                    conn.id,
                    Member {
                        conn,
                        min_seq: next,
                    },
                );
            }
            Some(_) => {
                self.members.insert(
                    conn.id,
                    Member {
                        conn,
                        min_seq: first,
                    },
                );
            }
        }
    }

    async fn on_push(&mut self, push: Push) {
        let held = Held {
            frame: push.frame,
            origin: push.origin.map(|o| (o.gateway, o.conn)),
            echo: push.echo,
        };
        if push.seq == 0 || self.mode == FeedMode::Events {
            self.deliver(0, &held);
            return;
        }
        if self.mode == FeedMode::Latest {
            self.on_latest(push.seq, held.frame);
            return;
        }
        let Some(next) = self.next else {
            self.pending.entry(push.seq).or_insert(held);
            return;
        };
        if push.seq < next {
            return; // duplicate
        }
        if push.seq == next {
            self.deliver(push.seq, &held);
            self.next = Some(next + 1);
            self.drain_pending();
        } else {
            // The first copy of a seq wins; later ones are duplicates.
            self.pending.entry(push.seq).or_insert(held);
            if self.gap_since.is_none() {
                self.gap_since = Some(Instant::now());
            }
            if self.pending.len() > self.cfg.reorder_buffer {
                self.recover_gap().await;
            }
        }
    }

    fn drain_pending(&mut self) {
        while let Some(next) = self.next {
            let Some(held) = self.pending.remove(&next) else {
                break;
            };
            self.deliver(next, &held);
            self.next = Some(next + 1);
        }
        if let Some(next) = self.next {
            // Drop anything older than what has been delivered.
            while self
                .pending
                .first_key_value()
                .is_some_and(|(s, _)| *s < next)
            {
                self.pending.pop_first();
            }
        }
        if self.pending.is_empty() {
            self.gap_since = None;
        } else if self.gap_since.is_none() {
            self.gap_since = Some(Instant::now());
        }
    }

    /// The reorder window passed with seqs still missing: fetch them.
    async fn recover_gap(&mut self) {
        let Some(next) = self.next else { return };
        let Some(until) = self.pending.first_key_value().map(|(s, _)| s - 1) else {
            self.gap_since = None;
            return;
        };
        if until >= next {
            self.catch_up(next - 1, until).await;
        }
        self.drain_pending();
    }

    /// Delivers seqs in (after, until] (until 0 = head) from the worker's
    /// history to all members, reporting what cannot be recovered.
    async fn catch_up(&mut self, after: u64, until: u64) {
        let batch = self.replay(after, until).await;
        let Some(mut next) = self.next else { return };
        match batch {
            Some(b) if b.gone => {}
            Some(b) => {
                if b.first_seq > next {
                    let to = if until == 0 {
                        b.first_seq - 1
                    } else {
                        (b.first_seq - 1).min(until)
                    };
                    if to >= next {
                        self.deliver(0, &self.held_gap(next, to));
                        next = to + 1;
                    }
                }
                for item in b.items {
                    if item.seq == next {
                        // The sender of a message without `echo` is skipped
                        // here as on the live path.
                        let echo = item.no_echo_to.is_none();
                        self.deliver(
                            item.seq,
                            &Held {
                                frame: item.frame,
                                origin: item.no_echo_to.map(|o| (o.gateway, o.conn)),
                                echo,
                            },
                        );
                        next += 1;
                    }
                }
                if until > 0 && next <= until {
                    // The worker did not return everything asked for.
                    self.deliver(0, &self.held_gap(next, until));
                    next = until + 1;
                }
            }
            None => {
                if until > 0 && next <= until {
                    self.deliver(0, &self.held_gap(next, until));
                    next = until + 1;
                }
            }
        }
        self.next = Some(next);
    }

    async fn replay(&self, after: u64, until: u64) -> Option<ReplayBatch> {
        let req = ReplayRequest {
            tenant: self.tenant.clone(),
            key: self.interest.key.clone(),
            after_seq: after,
            until_seq: until,
        };
        let res = tokio::time::timeout(
            self.cfg.request_timeout,
            self.nats
                .request(self.interest.recover_subject.clone(), bus::encode(&req)),
        )
        .await;
        let msg = match res {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                tracing::warn!(subject = %self.interest.subject, error = %e, "replay request failed");
                return None;
            }
            Err(_) => {
                tracing::warn!(subject = %self.interest.subject, "replay request timed out");
                return None;
            }
        };
        let reply: Reply = bus::decode(&msg.payload).ok()?;
        if !reply.ok {
            tracing::warn!(subject = %self.interest.subject, error = ?reply.error, "replay refused");
            return None;
        }
        bus::decode(&reply.data).ok()
    }

    fn gap_frame(&self, from: u64, to: u64) -> Bytes {
        push_frame(
            "gap",
            &serde_json::json!({"room": self.interest.key, "from": from, "to": to, "recovered": false}),
        )
    }

    fn held_gap(&self, from: u64, to: u64) -> Held {
        Held {
            frame: self.gap_frame(from, to),
            origin: None,
            echo: true,
        }
    }

    /// Whether a replayed item was published by connection `conn` of this
    /// gateway without `echo`.
    fn is_own_without_echo(&self, item: &ReplayItem, conn: u64) -> bool {
        item.no_echo_to
            .as_ref()
            .is_some_and(|o| o.conn == conn && o.gateway == self.cfg.gateway)
    }

    fn deliver(&self, seq: u64, held: &Held) {
        for m in self.members.values() {
            if seq != 0 && seq < m.min_seq {
                continue;
            }
            if !held.echo
                && let Some((gw, conn)) = &held.origin
                && *conn == m.conn.id
                && *gw == self.cfg.gateway
            {
                continue;
            }
            m.conn.send(Out::Text(held.frame.clone()));
        }
    }
}
