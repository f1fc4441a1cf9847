//! Per-connection state shared between a socket's tasks, the NATS router and
//! the room feeds, and the registry that maps connection ids to it.
//!
//! Invariants: a frame that does not fit in a connection's bounded outbound
//! queue ([`crate::outbox`]) marks the client as a slow reader and ends the
//! connection (1008), so a client that stops reading can never grow the
//! gateway's memory. The per-connection quotas this gateway enforces
//! (presence subscriptions, signal rooms: `switchboard_shared::quotas`) are
//! counted here, so what one connection holds is bounded too.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bytes::Bytes;
use switchboard_shared::conn_events::Digest;
use switchboard_shared::ids::{TenantId, UserId};
use tokio_util::sync::CancellationToken;

use crate::outbox::{Full, Out, Outbox};
use crate::requests::Inflight;

/// How and why the gateway ends a connection. The reason is fixed text,
/// except for an operator's close ([`CloseReason::operator`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: Cow<'static, str>,
}

impl CloseReason {
    /// "No close frame": the peer is gone, just drop the socket.
    pub const NO_FRAME: u16 = 1006;
    /// Closed by an operator (admin API), with the operator's reason.
    pub const OPERATOR: u16 = 4000;
    /// The reason of an operator's close that gave none.
    pub const OPERATOR_DEFAULT: &'static str = "disconnected by the operator";
    /// Most bytes of reason text a close frame carries (125 minus the code).
    pub const MAX_REASON: usize = 123;

    pub const fn new(code: u16, reason: &'static str) -> Self {
        Self {
            code,
            reason: Cow::Borrowed(reason),
        }
    }

    /// An operator's close (4000): `reason` cut to [`Self::MAX_REASON`]
    /// bytes on a character boundary, or the default text when empty.
    pub fn operator(reason: &str) -> Self {
        let reason = reason.trim();
        if reason.is_empty() {
            return Self::new(Self::OPERATOR, Self::OPERATOR_DEFAULT);
        }
        let mut end = reason.len().min(Self::MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            code: Self::OPERATOR,
            reason: Cow::Owned(reason[..end].to_owned()),
        }
    }
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
    /// Requests awaiting their reply.
    pub requests: Inflight,
    /// Fan-out subjects this connection is attached to.
    pub feeds: Mutex<HashSet<String>>,
    /// Milliseconds since gateway start when the client last sent anything.
    pub last_seen: AtomicU64,
    /// Requests refused by a rate limit lately (sustained abuse closes).
    pub strikes: crate::limits::Strikes,
    /// Presence feeds this connection follows (`LATEST` subjects), for the
    /// `presence_subscriptions_per_connection` quota.
    watching: Mutex<HashSet<String>>,
    /// Room → when this connection last signalled there (typing, cursor;
    /// ms), for the `signal_rooms_per_connection` quota.
    signals: Mutex<HashMap<String, u64>>,
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
            requests: Inflight::default(),
            feeds: Mutex::new(HashSet::new()),
            last_seen: AtomicU64::new(0),
            strikes: crate::limits::Strikes::default(),
            watching: Mutex::new(HashSet::new()),
            signals: Mutex::new(HashMap::new()),
        })
    }

    /// Counts presence feeds about to be attached; false (nothing counted)
    /// when the connection would follow more than `max` (0: no limit).
    pub fn watch<'a>(&self, subjects: impl IntoIterator<Item = &'a str>, max: u64) -> bool {
        if max == 0 {
            return true;
        }
        let Ok(mut w) = self.watching.lock() else {
            return false;
        };
        let new: HashSet<&str> = subjects.into_iter().filter(|s| !w.contains(*s)).collect();
        if (w.len() + new.len()) as u64 > max {
            return false;
        }
        w.extend(new.into_iter().map(str::to_owned));
        true
    }

    /// A feed was detached: it no longer counts.
    pub fn unwatch(&self, subject: &str) {
        if let Ok(mut w) = self.watching.lock() {
            w.remove(subject);
        }
    }

    /// Records a typing indicator or cursor in `room` at `now_ms` (`active`
    /// false: a typing indicator ends there). False when that would make
    /// more than `max` rooms (0: no limit) with a signal in the last
    /// `window_ms`; nothing is recorded then.
    pub fn signal(&self, room: &str, active: bool, now_ms: u64, window_ms: u64, max: u64) -> bool {
        if max == 0 {
            return true;
        }
        let Ok(mut m) = self.signals.lock() else {
            return false;
        };
        m.retain(|_, at| at.saturating_add(window_ms) > now_ms);
        if !active {
            m.remove(room);
            return true;
        }
        if let Some(at) = m.get_mut(room) {
            *at = now_ms;
            return true;
        }
        if m.len() as u64 >= max {
            return false;
        }
        m.insert(room.to_owned(), now_ms);
        true
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
                self.kill(CloseReason::new(1008, "slow consumer: outbound queue full"));
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
        self.close.lock().ok().and_then(|c| c.clone())
    }

    pub fn touch(&self, now_ms: u64) {
        self.last_seen.store(now_ms, Ordering::Relaxed);
    }
}

/// Live connections of this gateway by id.
///
/// Ids are allocated under the same lock that inserts them, so at any moment
/// every id up to [`Page::high_water`] has been inserted: an id at most
/// that which is not here is closed. The registry also keeps the
/// [`Digest`] of its connections, which the heartbeat announces: a
/// connection is in it from just before its `CONNECTED` is published until
/// just before its `DISCONNECTED` is.
#[derive(Debug, Default)]
pub struct Registry {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    conns: HashMap<u64, Arc<ConnHandle>>,
    digest: Digest,
    last_id: u64,
}

/// A page of the live connections, in id order.
#[derive(Debug)]
pub struct Page {
    pub conns: Vec<Arc<ConnHandle>>,
    /// Every id up to this had been inserted when the page was made.
    pub high_water: u64,
    pub more: bool,
}

impl Registry {
    /// Allocates the next id, builds the connection with it and inserts it.
    pub fn insert_new(&self, make: impl FnOnce(u64) -> Arc<ConnHandle>) -> Option<Arc<ConnHandle>> {
        let mut m = self.inner.write().ok()?;
        m.last_id += 1;
        let h = make(m.last_id);
        m.digest.add(h.id);
        m.conns.insert(h.id, h.clone());
        Some(h)
    }

    pub fn remove(&self, id: u64) {
        if let Ok(mut m) = self.inner.write()
            && m.conns.remove(&id).is_some()
        {
            m.digest.remove(id);
        }
    }

    pub fn get(&self, id: u64) -> Option<Arc<ConnHandle>> {
        self.inner.read().ok()?.conns.get(&id).cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.read().map(|m| m.conns.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn all(&self) -> Vec<Arc<ConnHandle>> {
        self.inner
            .read()
            .map(|m| m.conns.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The digest of the live connections.
    pub fn digest(&self) -> Digest {
        self.inner.read().map(|m| m.digest).unwrap_or_default()
    }

    /// Up to `limit` live connections with ids above `after`, in id order.
    pub fn page(&self, after: u64, limit: usize) -> Page {
        let Ok(m) = self.inner.read() else {
            return Page {
                conns: Vec::new(),
                high_water: 0,
                more: false,
            };
        };
        let mut ids: Vec<u64> = m.conns.keys().copied().filter(|&id| id > after).collect();
        ids.sort_unstable();
        let more = ids.len() > limit;
        ids.truncate(limit);
        Page {
            conns: ids
                .iter()
                .filter_map(|id| m.conns.get(id).cloned())
                .collect(),
            high_water: m.last_id,
            more,
        }
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
    fn presence_feeds_count_once_and_stop_at_the_quota() {
        let h = handle(4);
        assert!(h.watch(["a", "b", "a"], 3));
        assert!(h.watch(["a", "b", "c"], 3), "known feeds count once");
        assert!(!h.watch(["d"], 3));
        assert!(!h.watch(["c", "d", "e"], 3), "refused whole");
        h.unwatch("a");
        assert!(h.watch(["d"], 3));
        assert!(h.watch(["x", "y", "z", "w"], 0), "0: no limit");
    }

    #[test]
    fn signal_rooms_count_within_the_window() {
        let h = handle(4);
        assert!(h.signal("r1", true, 0, 100, 2));
        assert!(h.signal("r2", true, 10, 100, 2));
        assert!(h.signal("r1", true, 20, 100, 2), "a known room");
        assert!(!h.signal("r3", true, 30, 100, 2));
        assert!(
            h.signal("r2", false, 40, 100, 2),
            "ending is always allowed"
        );
        assert!(h.signal("r3", true, 50, 100, 2), "r2 ended");
        assert!(!h.signal("r4", true, 60, 100, 2));
        assert!(h.signal("r4", true, 121, 100, 2), "r1 went quiet at 120");
    }

    #[test]
    fn operator_reasons_fit_a_close_frame_on_a_char_boundary() {
        let r = CloseReason::operator("");
        assert_eq!((r.code, &*r.reason), (4000, "disconnected by the operator"));
        assert_eq!(
            &*CloseReason::operator(" maintenance ").reason,
            "maintenance"
        );
        let long = "é".repeat(100);
        let r = CloseReason::operator(&long);
        assert_eq!(r.reason.len(), 122, "61 two-byte characters");
        assert!(long.starts_with(&*r.reason));
        assert_eq!(CloseReason::operator(&"a".repeat(200)).reason.len(), 123);
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

    #[test]
    fn pages_list_live_ids_in_order_and_the_digest_follows() {
        let r = Registry::default();
        let t = TenantId::parse("t").unwrap_or_else(|e| panic!("{e}"));
        let u = UserId::parse("u").unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..5 {
            r.insert_new(|id| ConnHandle::new(id, t.clone(), u.clone(), vec![], 1));
        }
        r.remove(2);
        r.remove(2);
        let mut want = Digest::default();
        for id in [1, 3, 4, 5] {
            want.add(id);
        }
        assert_eq!(r.digest(), want);
        let p = r.page(0, 2);
        let ids: Vec<u64> = p.conns.iter().map(|h| h.id).collect();
        assert_eq!((ids, p.high_water, p.more), (vec![1, 3], 5, true));
        let p = r.page(3, 2);
        let ids: Vec<u64> = p.conns.iter().map(|h| h.id).collect();
        assert_eq!((ids, p.more), (vec![4, 5], false));
    }
}
