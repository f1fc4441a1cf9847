//! `LOG` feeds (rooms): each room with a local member is plain state in one
//! map (members, next seq, a reorder buffer that is usually empty); no
//! subscription, task or channel per room. The room's pushes are addressed
//! to this gateway by the workers (the room's `gateways` hash in Redis) and
//! handed over by the router.
//!
//! Sequenced pushes (`seq > 0`) are delivered strictly in seq order, once:
//! - duplicates (seq already delivered) are dropped;
//! - out-of-order arrivals (e.g. from two worker replicas) wait in a bounded
//!   reorder buffer; if the missing seqs do not arrive within
//!   `reorder_window`, they are fetched from the worker (`recover_subject`);
//! - what the worker no longer holds is reported to members as a `gap` event
//!   with `"recovered": false`: never a silent hole.
//!
//! The async work runs in short-lived tasks (on the gateway's tracker) that
//! lock the state when their answer is in, checking the feed is still the
//! one they were started for (`LogFeed::id`):
//! - a fresh feed catches up from history from its first member's cursor to
//!   the head; live pushes meanwhile wait in the reorder buffer. This closes
//!   the race between a join and the first push addressed to this gateway;
//! - gap recovery after `reorder_window` (or at once when the buffer is full);
//! - a member attaching with a cursor older than what the feed delivered
//!   gets the difference replayed to it alone; its live frames meanwhile are
//!   held (bounded) and sent after the replay, so its order holds. When the
//!   hold overflows, what it dropped is fetched by another round.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use switchboard_proto::bus::{ConnRef, Interest, Push, ReplayBatch, ReplayRequest};
use tokio_util::task::TaskTracker;

use super::FeedConfig;
use crate::outbox::Out;
use crate::protocol::push_frame;
use crate::registry::ConnHandle;

/// Every `LOG` feed of the gateway, by feed name (`Interest::subject`).
pub(super) struct LogFeeds {
    nats: async_nats::Client,
    cfg: FeedConfig,
    tasks: TaskTracker,
    /// Feed ids and replay rounds.
    ids: AtomicU64,
    /// Recover subjects, shared by the feeds that name them (one in practice).
    recover: Mutex<Vec<Arc<str>>>,
    feeds: Mutex<HashMap<String, LogFeed>>,
}

/// Async work on a feed, started under the lock and finished under it.
#[derive(Debug, Clone, Copy)]
enum Job {
    /// Deliver (after, until] (until 0 = the head) from history to the feed.
    Feed { until: u64 },
    /// Replay (after, upto] to one member, round `round`.
    Member { conn: u64, round: u64, upto: u64 },
}

struct LogFeed {
    /// Tells this feed from a later one of the same name.
    id: u64,
    /// `Interest::key`, passed back in replay requests (the room id).
    key: Box<str>,
    recover: Arc<str>,
    /// Next seq to deliver: every seq below it has been delivered to the
    /// live members, reported as a gap, or is being caught up (`busy`).
    next: u64,
    /// Highest seq seen live; a push dropped by a full buffer is still known.
    head: u64,
    /// A catch-up or gap recovery is in flight.
    busy: bool,
    /// A reorder-window timer is armed.
    timer: bool,
    pending: BTreeMap<u64, Held>,
    members: Vec<Member>,
}

struct Held {
    frame: Bytes,
    /// The local connection that must not get it (a sender without `echo`).
    skip: Option<u64>,
}

struct Member {
    conn: Arc<ConnHandle>,
    /// First seq this member may receive.
    min_seq: u64,
    /// Set while the member's private replay is in flight.
    replay: Option<Box<Replaying>>,
}

/// A member's private replay in flight, and its live frames meanwhile.
struct Replaying {
    round: u64,
    held: Vec<Bytes>,
    /// The last seq the member has (or will have, once `held` is sent).
    last_seq: u64,
    /// Frames were dropped because `held` was full.
    overflow: bool,
}

impl LogFeeds {
    pub(super) fn new(nats: async_nats::Client, cfg: FeedConfig, tasks: TaskTracker) -> Self {
        Self {
            nats,
            cfg,
            tasks,
            ids: AtomicU64::new(1),
            recover: Mutex::new(Vec::new()),
            feeds: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.feeds.lock().map(|f| f.len()).unwrap_or(0)
    }

    fn new_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    fn intern(&self, s: &str) -> Arc<str> {
        let Ok(mut known) = self.recover.lock() else {
            return Arc::from(s);
        };
        if let Some(a) = known.iter().find(|a| ***a == *s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        if known.len() < 16 {
            known.push(a.clone());
        }
        a
    }

    /// Adds `conn` as a member with cursor `interest.after_seq`.
    pub(super) fn attach(self: &Arc<Self>, conn: &Arc<ConnHandle>, interest: Interest) {
        let Ok(mut feeds) = self.feeds.lock() else {
            return;
        };
        let after = interest.after_seq;
        let first = after + 1;
        if let Some(feed) = feeds.get_mut(&interest.subject) {
            if first < feed.next {
                // This member missed what the feed already delivered.
                let upto = feed.next - 1;
                let round = self.new_id();
                feed.members.push(Member {
                    conn: conn.clone(),
                    min_seq: feed.next,
                    replay: Some(Box::new(Replaying {
                        round,
                        held: Vec::new(),
                        last_seq: upto,
                        overflow: false,
                    })),
                });
                let job = Job::Member {
                    conn: conn.id,
                    round,
                    upto,
                };
                self.spawn(&interest.subject, feed, after, job);
            } else {
                feed.members.push(Member {
                    conn: conn.clone(),
                    min_seq: first,
                    replay: None,
                });
            }
            return;
        }
        // A fresh feed: deliver whatever was published since the member's
        // cursor; pushes arriving meanwhile wait in the buffer.
        let feed = LogFeed {
            id: self.new_id(),
            key: interest.key.into_boxed_str(),
            recover: self.intern(&interest.recover_subject),
            next: first,
            head: after,
            busy: true,
            timer: false,
            pending: BTreeMap::new(),
            members: vec![Member {
                conn: conn.clone(),
                min_seq: first,
                replay: None,
            }],
        };
        self.spawn(&interest.subject, &feed, after, Job::Feed { until: 0 });
        feeds.insert(interest.subject, feed);
    }

    /// Removes `conn` from the feed `subject`, dropping the feed after its
    /// last member. False when there is no such `LOG` feed.
    pub(super) fn detach(&self, conn: u64, subject: &str) -> bool {
        let Ok(mut feeds) = self.feeds.lock() else {
            return false;
        };
        let Some(feed) = feeds.get_mut(subject) else {
            return false;
        };
        feed.members.retain(|m| m.conn.id != conn);
        if feed.members.is_empty() {
            feeds.remove(subject);
        }
        true
    }

    /// A push addressed to this gateway for the feed `subject`.
    pub(super) fn on_push(self: &Arc<Self>, subject: &str, push: Push) {
        let Ok(mut feeds) = self.feeds.lock() else {
            return;
        };
        // No local feed: nobody here follows the room any more (the room's
        // gateways still listed this one), or a member's join was answered
        // and its feed is not made yet. Dropping is safe: a feed made later
        // catches up from the room's history, which holds every sequenced
        // message before its push is sent.
        let Some(feed) = feeds.get_mut(subject) else {
            return;
        };
        let skip = self.local_conn(push.origin.filter(|_| !push.echo));
        let seq = push.seq;
        if seq == 0 {
            feed.deliver(&self.cfg, 0, &push.frame, skip);
            return;
        }
        if seq < feed.next {
            return; // a duplicate
        }
        feed.head = feed.head.max(seq);
        if !feed.busy && seq == feed.next {
            feed.deliver(&self.cfg, seq, &push.frame, skip);
            feed.next += 1;
            feed.drain(&self.cfg);
        } else if feed.pending.len() <= 2 * self.cfg.reorder_buffer {
            // The first copy of a seq wins; later ones are duplicates.
            feed.pending.entry(seq).or_insert(Held {
                frame: push.frame,
                skip,
            });
        }
        // (Beyond twice the buffer a push is dropped: `head` remembers it and
        // the recovery fetches it from history.)
        self.schedule(subject, feed);
    }

    /// The local connection `origin` names, if it is one of this gateway's.
    fn local_conn(&self, origin: Option<ConnRef>) -> Option<u64> {
        origin
            .filter(|o| o.gateway == self.cfg.gateway)
            .map(|o| o.conn)
    }

    /// Starts a recovery, or arms the reorder-window timer, when seqs are
    /// missing and nothing is in flight.
    fn schedule(self: &Arc<Self>, subject: &str, feed: &mut LogFeed) {
        if feed.busy || feed.missing().is_none() {
            return;
        }
        if feed.pending.len() > self.cfg.reorder_buffer {
            self.recover(subject, feed);
        } else if !feed.timer {
            feed.timer = true;
            let me = self.clone();
            let subject = subject.to_owned();
            let id = feed.id;
            self.tasks.spawn(async move {
                tokio::time::sleep(me.cfg.reorder_window).await;
                let Ok(mut feeds) = me.feeds.lock() else {
                    return;
                };
                if let Some(feed) = feeds.get_mut(&subject).filter(|f| f.id == id) {
                    feed.timer = false;
                    me.recover(&subject, feed);
                }
            });
        }
    }

    /// Fetches the missing seqs from history.
    fn recover(self: &Arc<Self>, subject: &str, feed: &mut LogFeed) {
        if feed.busy {
            return; // `schedule` runs again when the work in flight ends
        }
        if let Some(until) = feed.missing() {
            feed.busy = true;
            self.spawn(subject, feed, feed.next - 1, Job::Feed { until });
        }
    }

    /// Runs `job` (a replay of seqs after `after`) in a task that applies
    /// its answer under the lock.
    fn spawn(self: &Arc<Self>, subject: &str, feed: &LogFeed, after: u64, job: Job) {
        let Some(tenant) = feed.members.first().map(|m| m.conn.tenant.to_string()) else {
            return;
        };
        let until = match job {
            Job::Feed { until } => until,
            Job::Member { upto, .. } => upto,
        };
        let req = ReplayRequest {
            tenant,
            key: feed.key.to_string(),
            after_seq: after,
            until_seq: until,
        };
        let me = self.clone();
        let subject = subject.to_owned();
        let (id, recover) = (feed.id, feed.recover.clone());
        self.tasks.spawn(async move {
            let batch = super::replay(&me.nats, me.cfg.request_timeout, &recover, req).await;
            me.finish(&subject, id, after, job, batch);
        });
    }

    fn finish(
        self: &Arc<Self>,
        subject: &str,
        id: u64,
        after: u64,
        job: Job,
        batch: Option<ReplayBatch>,
    ) {
        let Ok(mut feeds) = self.feeds.lock() else {
            return;
        };
        let Some(feed) = feeds.get_mut(subject).filter(|f| f.id == id) else {
            return; // the feed ended meanwhile
        };
        match job {
            Job::Feed { until } => {
                feed.catch_up(&self.cfg, batch, until);
                feed.busy = false;
                feed.head = feed.head.max(feed.next - 1);
                feed.drain(&self.cfg);
                self.schedule(subject, feed);
            }
            Job::Member { conn, round, upto } => {
                let next_round = self.new_id();
                if let Some((after, upto)) =
                    feed.end_replay(&self.cfg, conn, round, after, upto, batch, next_round)
                {
                    let job = Job::Member {
                        conn,
                        round: next_round,
                        upto,
                    };
                    self.spawn(subject, feed, after, job);
                }
            }
        }
    }
}

impl LogFeed {
    /// The last missing seq when `next` has not arrived but later ones have.
    fn missing(&self) -> Option<u64> {
        let until = match self.pending.first_key_value() {
            Some((s, _)) => s - 1,
            None => self.head,
        };
        (until >= self.next).then_some(until)
    }

    /// Delivers what the buffer holds from `next` on, and drops what is
    /// older.
    fn drain(&mut self, cfg: &FeedConfig) {
        while let Some(held) = self.pending.remove(&self.next) {
            self.deliver(cfg, self.next, &held.frame, held.skip);
            self.next += 1;
        }
        while self
            .pending
            .first_key_value()
            .is_some_and(|(s, _)| *s < self.next)
        {
            self.pending.pop_first();
        }
    }

    /// Delivers seqs in (next - 1, until] (until 0 = head) from `batch` to
    /// all members, reporting what cannot be recovered.
    fn catch_up(&mut self, cfg: &FeedConfig, batch: Option<ReplayBatch>, until: u64) {
        let mut next = self.next;
        if batch.as_ref().is_some_and(|b| b.gone) {
            return; // the room is gone: nothing more will come
        }
        if let Some(b) = batch {
            if b.first_seq > next {
                let to = if until == 0 {
                    b.first_seq - 1
                } else {
                    (b.first_seq - 1).min(until)
                };
                if to >= next {
                    let gap = gap_frame(&self.key, next, to);
                    self.deliver(cfg, 0, &gap, None);
                    next = to + 1;
                }
            }
            for item in b.items {
                if item.seq == next {
                    // The sender of a message without `echo` is skipped
                    // here as on the live path.
                    let skip = item
                        .no_echo_to
                        .filter(|o| o.gateway == cfg.gateway)
                        .map(|o| o.conn);
                    self.deliver(cfg, item.seq, &item.frame, skip);
                    next += 1;
                }
            }
        }
        if until > 0 && next <= until {
            // The worker did not return everything asked for.
            let gap = gap_frame(&self.key, next, until);
            self.deliver(cfg, 0, &gap, None);
            next = until + 1;
        }
        self.next = next;
    }

    /// Ends round `round` of member `conn`'s private replay of (after, upto]:
    /// sends it the replayed seqs then the frames held meanwhile. Returns
    /// the range of another round (numbered `next_round`) when the hold
    /// overflowed.
    #[allow(clippy::too_many_arguments)]
    fn end_replay(
        &mut self,
        cfg: &FeedConfig,
        conn: u64,
        round: u64,
        after: u64,
        upto: u64,
        batch: Option<ReplayBatch>,
        next_round: u64,
    ) -> Option<(u64, u64)> {
        let feed_next = self.next;
        let key: &str = &self.key;
        let gap = |from, to| gap_frame(key, from, to);
        let m = self.members.iter_mut().find(|m| m.conn.id == conn)?;
        if m.replay.as_ref().is_none_or(|r| r.round != round) {
            return None;
        }
        let r = m.replay.take()?;
        let end = upto + 1;
        let mut expect = after + 1;
        if let Some(b) = &batch {
            if b.first_seq > expect && !b.gone {
                m.conn.send_text(gap(expect, b.first_seq.min(end) - 1));
                expect = b.first_seq.min(end);
            }
            for item in &b.items {
                if item.seq >= expect && item.seq < end {
                    let own = item
                        .no_echo_to
                        .as_ref()
                        .is_some_and(|o| o.conn == conn && o.gateway == cfg.gateway);
                    if !own {
                        m.conn.send_text(item.frame.clone());
                    }
                    expect = item.seq + 1;
                }
            }
        }
        if expect < end && batch.as_ref().is_none_or(|b| !b.gone) {
            m.conn.send_text(gap(expect, upto));
        }
        for frame in r.held {
            m.conn.send_text(frame);
        }
        if r.overflow {
            // What the full hold dropped: everything the feed delivered
            // after the last frame held.
            let after = r.last_seq.max(upto);
            let upto = feed_next - 1;
            if upto > after {
                m.replay = Some(Box::new(Replaying {
                    round: next_round,
                    held: Vec::new(),
                    last_seq: upto,
                    overflow: false,
                }));
                return Some((after, upto));
            }
        }
        None
    }

    /// Sends `frame` to every member that may receive `seq` (0: all), except
    /// the connection `skip`; a member whose private replay is in flight
    /// holds it.
    fn deliver(&mut self, cfg: &FeedConfig, seq: u64, frame: &Bytes, skip: Option<u64>) {
        for m in &mut self.members {
            if (seq != 0 && seq < m.min_seq) || skip == Some(m.conn.id) {
                continue;
            }
            match m.replay.as_deref_mut() {
                None => {
                    m.conn.send(Out::Text(frame.clone()));
                }
                Some(r) if r.overflow => {}
                Some(r) if r.held.len() >= cfg.reorder_buffer.max(1) => r.overflow = true,
                Some(r) => {
                    r.held.push(frame.clone());
                    if seq != 0 {
                        r.last_seq = seq;
                    }
                }
            }
        }
    }
}

/// The `gap` event for seqs from..=to of the room `key`, which history no
/// longer holds.
fn gap_frame(key: &str, from: u64, to: u64) -> Bytes {
    push_frame(
        "gap",
        &serde_json::json!({"room": key, "from": from, "to": to, "recovered": false}),
    )
}
