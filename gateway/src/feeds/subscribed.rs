//! Feeds with a NATS subscription of their own: `LATEST` (presence: each
//! push is a whole state versioned by its seq; older versions are dropped,
//! the latest is kept for members who attach later, and a fresh feed fetches
//! the current state after its SUB) and `EVENTS` (app-wide broadcasts,
//! delivered as they come). Each subscribed subject has one task that owns
//! the subscription and the member list while a local connection follows it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use switchboard_proto::bus::{FeedMode, Interest, Push, ReplayBatch, ReplayRequest};
use switchboard_shared::bus;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::FeedConfig;
use crate::outbox::Out;
use crate::registry::ConnHandle;

enum Cmd {
    Add {
        conn: Arc<ConnHandle>,
        after_seq: u64,
    },
    Remove {
        conn: u64,
    },
}

/// The handle of one subscribed feed's task.
pub(super) struct Entry {
    tx: mpsc::UnboundedSender<Cmd>,
    members: usize,
}

impl Entry {
    /// Starts the task of the feed named by `interest`, whose first member
    /// is `conn`.
    pub(super) fn spawn(
        tasks: &TaskTracker,
        nats: async_nats::Client,
        cfg: FeedConfig,
        conn: &ConnHandle,
        interest: Interest,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let feed = Feed {
            nats,
            cfg,
            tenant: conn.tenant.to_string(),
            mode: interest.mode(),
            interest,
            next: None,
            last: None,
            members: HashMap::new(),
        };
        tasks.spawn(feed.run(rx));
        Self { tx, members: 0 }
    }

    pub(super) fn add(&mut self, conn: Arc<ConnHandle>, after_seq: u64) {
        self.members += 1;
        let _ = self.tx.send(Cmd::Add { conn, after_seq });
    }

    /// Removes a member; true when it was the last one.
    pub(super) fn remove(&mut self, conn: u64) -> bool {
        let _ = self.tx.send(Cmd::Remove { conn });
        self.members = self.members.saturating_sub(1);
        self.members == 0
    }
}

struct Member {
    conn: Arc<ConnHandle>,
    /// First seq this member may receive.
    min_seq: u64,
}

struct Feed {
    nats: async_nats::Client,
    cfg: FeedConfig,
    tenant: String,
    mode: FeedMode,
    interest: Interest,
    /// Next version to deliver; `None` until the first member is added.
    next: Option<u64>,
    /// `LATEST` mode: the newest state delivered, for members who come later.
    last: Option<(u64, Bytes)>,
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
                        Ok(push) => self.on_push(push),
                        Err(e) => tracing::warn!(subject, error = %e, "malformed push dropped"),
                    }
                }
            }
        }
        let _ = sub.unsubscribe().await;
    }

    async fn add(&mut self, conn: Arc<ConnHandle>, after_seq: u64) {
        if self.mode != FeedMode::Latest {
            self.members.insert(conn.id, Member { conn, min_seq: 0 });
            return;
        }
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
            if let Some(b) = self.replay(after_seq).await
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
        self.deliver(seq, &frame, None);
        self.next = Some(seq + 1);
        self.last = Some((seq, frame));
    }

    fn on_push(&mut self, push: Push) {
        if push.seq == 0 || self.mode == FeedMode::Events {
            let skip = push
                .origin
                .filter(|o| !push.echo && o.gateway == self.cfg.gateway)
                .map(|o| o.conn);
            self.deliver(0, &push.frame, skip);
            return;
        }
        self.on_latest(push.seq, push.frame);
    }

    async fn replay(&self, after: u64) -> Option<ReplayBatch> {
        let req = ReplayRequest {
            tenant: self.tenant.clone(),
            key: self.interest.key.clone(),
            after_seq: after,
            until_seq: 0,
        };
        super::replay(
            &self.nats,
            self.cfg.request_timeout,
            &self.interest.recover_subject,
            req,
        )
        .await
    }

    /// Sends `frame` to every member that may receive `seq` (0: all), except
    /// the connection `skip` (a sender that asked not to get it back).
    fn deliver(&self, seq: u64, frame: &Bytes, skip: Option<u64>) {
        for m in self.members.values() {
            if (seq != 0 && seq < m.min_seq) || skip == Some(m.conn.id) {
                continue;
            }
            m.conn.send(Out::Text(frame.clone()));
        }
    }
}
