//! Per-connection state shared between a socket's tasks, the NATS router and
//! the room feeds, and the registry that maps connection ids to it.
//!
//! Invariant: a connection's outbound queue is bounded. Anything that cannot
//! be queued at once marks the client as a slow reader and disconnects it, so
//! a client that stops reading can never grow the gateway's memory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bytes::Bytes;
use switchboard_shared::ids::{TenantId, UserId};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A frame or command for a connection's writer.
#[derive(Debug)]
pub enum Out {
    /// A text frame (JSON), possibly shared by many connections.
    Text(Bytes),
    /// A pong answering the client's ping.
    Pong(Bytes),
    /// Echo of the client's close frame (raw payload); the writer stops after.
    CloseEcho(Bytes),
    /// Close with a code and reason; the writer stops after.
    Close(u16, &'static str),
}

/// The bounded outbound queue of one connection. It allocates nothing while
/// empty, so an idle connection holds no queue memory, and gives its buffer
/// back once a burst has drained.
#[derive(Debug)]
pub struct Outbox {
    items: Mutex<VecDeque<Out>>,
    ready: Notify,
    cap: usize,
}

/// The queue already holds `cap` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Outbox {
    pub fn new(cap: usize) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            cap,
        }
    }

    pub fn push(&self, out: Out) -> Result<(), Full> {
        {
            let Ok(mut q) = self.items.lock() else {
                return Err(Full);
            };
            if q.len() >= self.cap {
                return Err(Full);
            }
            q.push_back(out);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// The next frame, waiting for one. Cancel-safe: a frame is only taken
    /// when this returns it.
    pub async fn pop(&self) -> Out {
        loop {
            if let Ok(mut q) = self.items.lock()
                && let Some(out) = q.pop_front()
            {
                if q.is_empty() && q.capacity() > 16 {
                    *q = VecDeque::new();
                }
                return out;
            }
            // A push between the check and here leaves a permit behind, so
            // no wake-up is lost.
            self.ready.notified().await;
        }
    }

    pub fn len(&self) -> usize {
        self.items.lock().map(|q| q.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How and why the gateway ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

/// One in-flight request: the client's id (raw JSON) awaiting a reply.
#[derive(Debug)]
struct Pending {
    id: Box<str>,
}

/// State of one WebSocket connection.
#[derive(Debug)]
pub struct ConnHandle {
    pub id: u64,
    pub tenant: TenantId,
    pub user: UserId,
    pub grants: Vec<String>,
    pub outbox: Outbox,
    /// Fires when the gateway decides to drop the connection.
    pub cancel: CancellationToken,
    close: Mutex<Option<CloseReason>>,
    inflight: Mutex<Inflight>,
    /// Fan-out subjects this connection is attached to.
    pub feeds: Mutex<HashSet<String>>,
    /// Milliseconds since gateway start when the client last sent anything.
    pub last_seen: AtomicU64,
}

#[derive(Debug, Default)]
struct Inflight {
    next: u32,
    pending: HashMap<u32, Pending>,
}

impl ConnHandle {
    pub fn new(
        id: u64,
        tenant: TenantId,
        user: UserId,
        grants: Vec<String>,
        queue: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            tenant,
            user,
            grants,
            outbox: Outbox::new(queue),
            cancel: CancellationToken::new(),
            close: Mutex::new(None),
            inflight: Mutex::new(Inflight::default()),
            feeds: Mutex::new(HashSet::new()),
            last_seen: AtomicU64::new(0),
        })
    }

    /// Queues a frame. A full queue means a slow reader: the connection is
    /// closed with 1008. Returns false when the frame was not queued.
    pub fn send(&self, out: Out) -> bool {
        if self.cancel.is_cancelled() {
            return false;
        }
        match self.outbox.push(out) {
            Ok(()) => true,
            Err(Full) => {
                self.kill(CloseReason {
                    code: 1008,
                    reason: "slow consumer: outbound queue full",
                });
                false
            }
        }
    }

    pub fn send_text(&self, frame: Bytes) -> bool {
        self.send(Out::Text(frame))
    }

    /// Ends the connection with `reason` (the first reason wins).
    pub fn kill(&self, reason: CloseReason) {
        if let Ok(mut c) = self.close.lock()
            && c.is_none()
        {
            *c = Some(reason);
        }
        self.cancel.cancel();
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close.lock().ok().and_then(|c| *c)
    }

    /// Registers a request; `None` when `max` are already in flight.
    pub fn begin_request(&self, id: &str, max: usize) -> Option<u32> {
        let mut f = self.inflight.lock().ok()?;
        if f.pending.len() >= max {
            return None;
        }
        loop {
            f.next = f.next.wrapping_add(1);
            let n = f.next;
            if let std::collections::hash_map::Entry::Vacant(e) = f.pending.entry(n) {
                e.insert(Pending { id: id.into() });
                return Some(n);
            }
        }
    }

    /// Takes a request's client id once its reply (or timeout) arrives;
    /// `None` if it was already answered.
    pub fn finish_request(&self, req: u32) -> Option<Box<str>> {
        self.inflight
            .lock()
            .ok()?
            .pending
            .remove(&req)
            .map(|p| p.id)
    }

    pub fn inflight(&self) -> usize {
        self.inflight.lock().map(|f| f.pending.len()).unwrap_or(0)
    }

    pub fn touch(&self, now_ms: u64) {
        self.last_seen.store(now_ms, Ordering::Relaxed);
    }
}

/// Live connections of this gateway by id.
#[derive(Debug, Default)]
pub struct Registry {
    conns: RwLock<HashMap<u64, Arc<ConnHandle>>>,
    next_id: AtomicU64,
}

impl Registry {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn insert(&self, h: Arc<ConnHandle>) {
        if let Ok(mut m) = self.conns.write() {
            m.insert(h.id, h);
        }
    }

    pub fn remove(&self, id: u64) {
        if let Ok(mut m) = self.conns.write() {
            m.remove(&id);
        }
    }

    pub fn get(&self, id: u64) -> Option<Arc<ConnHandle>> {
        self.conns.read().ok()?.get(&id).cloned()
    }

    pub fn len(&self) -> usize {
        self.conns.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn all(&self) -> Vec<Arc<ConnHandle>> {
        self.conns
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// Milliseconds since `start`.
pub fn elapsed_ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(queue: usize) -> Arc<ConnHandle> {
        let t = TenantId::parse("t").unwrap_or_else(|e| panic!("{e}"));
        let u = UserId::parse("u").unwrap_or_else(|e| panic!("{e}"));
        ConnHandle::new(1, t, u, vec![], queue)
    }

    #[test]
    fn a_full_queue_kills_the_connection() {
        let h = handle(2);
        assert!(h.send_text(Bytes::from_static(b"1")));
        assert!(h.send_text(Bytes::from_static(b"2")));
        assert!(!h.cancel.is_cancelled());
        assert!(!h.send_text(Bytes::from_static(b"3")));
        assert!(h.cancel.is_cancelled());
        assert_eq!(h.close_reason().map(|r| r.code), Some(1008));
    }

    #[tokio::test]
    async fn the_outbox_hands_frames_out_in_order_and_frees_its_buffer() {
        let h = handle(64);
        for i in 0..40u8 {
            assert!(h.send_text(Bytes::from(vec![i])));
        }
        for i in 0..40u8 {
            match h.outbox.pop().await {
                Out::Text(b) => assert_eq!(b.as_ref(), [i]),
                other => panic!("{other:?}"),
            }
        }
        assert!(h.outbox.is_empty());
        assert_eq!(h.outbox.items.lock().map(|q| q.capacity()).unwrap_or(1), 0);
        // A frame pushed while the writer waits wakes it.
        let waiter = {
            let h = h.clone();
            tokio::spawn(async move { h.outbox.pop().await })
        };
        tokio::task::yield_now().await;
        h.send_text(Bytes::from_static(b"late"));
        assert!(matches!(waiter.await, Ok(Out::Text(b)) if b.as_ref() == b"late"));
    }

    #[test]
    fn inflight_is_bounded_and_answered_once() {
        let h = handle(2);
        let a = h.begin_request("\"a\"", 2);
        let b = h.begin_request("\"b\"", 2);
        assert!(a.is_some() && b.is_some() && a != b);
        assert_eq!(h.begin_request("\"c\"", 2), None);
        let a = a.unwrap_or_default();
        assert_eq!(h.finish_request(a).as_deref(), Some("\"a\""));
        assert_eq!(h.finish_request(a), None);
        assert!(h.begin_request("\"c\"", 2).is_some());
    }
}
