//! Interest-based fan-out with per-feed ordering: which connections of this
//! gateway follow which feed, and how each feed's pushes reach them.
//!
//! A worker's reply attaches a connection to a feed (`bus.Interest`) or
//! detaches it; the feed's mode says how its pushes are delivered:
//! - `LOG` (rooms, [`log`]): strict seq order, once; gaps filled from the
//!   worker's history (`recover_subject`) or reported as `gap` events. A
//!   room's pushes are addressed to this gateway (`sb.gw.<gw>.r.<t>.<r>`,
//!   handed over by the router), so a room feed is plain state in a map: no
//!   subscription, task or channel per room.
//! - `LATEST` (presence) and `EVENTS` (app-wide), [`subscribed`]: one NATS
//!   subscription and one task per subject while a local connection follows
//!   it.

mod log;
mod subscribed;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_proto::bus::{FeedMode, Interest, Push, ReplayBatch, ReplayRequest, Reply};
use switchboard_shared::bus;
use tokio_util::task::TaskTracker;

use crate::registry::ConnHandle;

/// Tuning for feeds, from the gateway config.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    pub reorder_window: Duration,
    pub reorder_buffer: usize,
    pub request_timeout: Duration,
    pub gateway: String,
}

/// All feeds of one gateway.
pub struct Feeds {
    nats: async_nats::Client,
    cfg: FeedConfig,
    tasks: TaskTracker,
    /// `LATEST` and `EVENTS` feeds, by subject.
    entries: Mutex<HashMap<String, subscribed::Entry>>,
    /// `LOG` feeds.
    logs: Arc<log::LogFeeds>,
}

impl Feeds {
    /// Feeds whose tasks are spawned on `tasks`.
    pub fn new(nats: async_nats::Client, cfg: FeedConfig, tasks: TaskTracker) -> Self {
        Self {
            logs: Arc::new(log::LogFeeds::new(nats.clone(), cfg.clone(), tasks.clone())),
            nats,
            cfg,
            tasks,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Number of feeds this gateway keeps.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0) + self.logs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Attaches `conn` to the feed named by `interest`, creating it when it
    /// is the first local member. Attaching twice is a no-op.
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
        if interest.mode() == FeedMode::Log {
            self.logs.attach(conn, interest);
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        entries
            .entry(interest.subject.clone())
            .or_insert_with(|| {
                subscribed::Entry::spawn(
                    &self.tasks,
                    self.nats.clone(),
                    self.cfg.clone(),
                    conn,
                    interest.clone(),
                )
            })
            .add(conn.clone(), interest.after_seq);
    }

    /// Detaches `conn` from `subject`, dropping the feed after the last
    /// member.
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
        if self.logs.detach(conn, subject) {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if let Some(entry) = entries.get_mut(subject)
            && entry.remove(conn)
        {
            // Dropping the sender ends the feed task and its subscription.
            entries.remove(subject);
        }
    }

    /// A push for the `LOG` feed named `subject` (a room's feed name), as
    /// addressed to this gateway.
    pub fn on_log_push(&self, subject: &str, push: Push) {
        self.logs.on_push(subject, push);
    }
}

/// Asks the worker at `recover` for the seqs of a feed in (after, until]
/// (until 0 = up to the head). `None` when it cannot answer.
async fn replay(
    nats: &async_nats::Client,
    timeout: Duration,
    recover: &str,
    req: ReplayRequest,
) -> Option<ReplayBatch> {
    let res =
        tokio::time::timeout(timeout, nats.request(recover.to_owned(), bus::encode(&req))).await;
    let msg = match res {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            tracing::warn!(key = %req.key, error = %e, "replay request failed");
            return None;
        }
        Err(_) => {
            tracing::warn!(key = %req.key, "replay request timed out");
            return None;
        }
    };
    let reply: Reply = bus::decode(&msg.payload).ok()?;
    if !reply.ok {
        tracing::warn!(key = %req.key, error = ?reply.error, "replay refused");
        return None;
    }
    bus::decode(&reply.data).ok()
}
