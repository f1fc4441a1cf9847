//! What the soak's clients share and record: the ledger of acknowledged
//! publishes and notifications, the holes and gaps each client saw, the
//! users who left, live counters, and the violations found so far (printed
//! as they are found).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::tokens::Tokens;

/// A client's connection state, as the end checks see it.
pub const CONNECTING: u8 = 0;
pub const LIVE: u8 = 1;
pub const LEFT: u8 = 2;

/// A publish the service acknowledged: it must be in history at `seq`.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub room: usize,
    pub seq: u64,
    pub client: usize,
    pub n: u64,
}

/// Seqs `from..=to` of `room` that `client` skipped (or was told, by a
/// `gap` push, it would not get).
#[derive(Debug, Clone, Copy)]
pub struct Hole {
    pub room: usize,
    pub client: usize,
    pub from: u64,
    pub to: u64,
}

/// A user who left for good.
#[derive(Debug, Clone)]
pub struct Leaver {
    pub client: usize,
    pub at: Instant,
    pub how: &'static str,
}

#[derive(Debug, Default)]
pub struct Ledger {
    pub acked: Vec<Ack>,
    /// Publishes whose outcome the client cannot know (no reply, `timeout`,
    /// connection lost) or that were refused: (room, client, n).
    pub unknown: Vec<(usize, usize, u64)>,
    pub refused: BTreeMap<String, u64>,
    pub holes: Vec<Hole>,
    pub gaps: Vec<Hole>,
    pub leavers: Vec<Leaver>,
    /// Acknowledged notifications: (client, id).
    pub notifications: Vec<(usize, String)>,
    pub notifications_unknown: u64,
    pub violations: Vec<(&'static str, String)>,
    /// Things worth a look that break no invariant (an `internal` answer).
    pub notes: Vec<String>,
}

/// Live counters for the status line and the summary.
#[derive(Debug, Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub join_errors: AtomicU64,
    pub notifications_sent: AtomicU64,
    /// Publishes awaiting their reply.
    pub pending: AtomicI64,
}

pub struct Shared {
    pub urls: Vec<String>,
    pub tokens: Tokens,
    pub rooms: Vec<String>,
    pub seed: u64,
    pub start: Instant,
    /// Cancelled when clients must stop publishing.
    pub publishing: CancellationToken,
    /// Cancelled when clients must stop.
    pub stop: CancellationToken,
    pub ledger: Mutex<Ledger>,
    /// Highest seq each client has seen in its room (`u64::MAX` before
    /// its first join).
    pub progress: Vec<AtomicU64>,
    pub state: Vec<AtomicU8>,
    /// Each watcher's view of the users it watches: user → (ver, status).
    pub views: Vec<Mutex<HashMap<usize, (u64, String)>>>,
    pub counters: Counters,
}

impl Shared {
    pub fn new(
        urls: Vec<String>,
        tokens: Tokens,
        rooms: Vec<String>,
        clients: usize,
        seed: u64,
    ) -> Self {
        Self {
            urls,
            tokens,
            rooms,
            seed,
            start: Instant::now(),
            publishing: CancellationToken::new(),
            stop: CancellationToken::new(),
            ledger: Mutex::new(Ledger::default()),
            progress: (0..clients).map(|_| AtomicU64::new(u64::MAX)).collect(),
            state: (0..clients).map(|_| AtomicU8::new(CONNECTING)).collect(),
            views: (0..clients).map(|_| Mutex::new(HashMap::new())).collect(),
            counters: Counters::default(),
        }
    }

    /// Runs `f` on the ledger (a poisoned lock is still usable: the data
    /// is append-only).
    pub fn with<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> T {
        let mut g = match self.ledger.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// Records a violation and prints the first few of each kind.
    pub fn violation(&self, kind: &'static str, detail: String) {
        let shown = self.with(|l| {
            let same = l.violations.iter().filter(|(k, _)| *k == kind).count();
            l.violations.push((kind, detail.clone()));
            same < 5
        });
        if shown {
            eprintln!("[{:>6.1} s] VIOLATION {kind}: {detail}", self.elapsed_s());
        }
    }

    /// Records a remark (printed, the first 20) that is not a violation.
    pub fn note(&self, detail: String) {
        let shown = self.with(|l| {
            l.notes.push(detail.clone());
            l.notes.len() <= 20
        });
        if shown {
            eprintln!("[{:>6.1} s] note: {detail}", self.elapsed_s());
        }
    }

    pub fn violations(&self) -> usize {
        self.with(|l| l.violations.len())
    }

    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    pub fn set_state(&self, client: usize, s: u8) {
        self.state[client].store(s, Ordering::Release);
    }

    pub fn state_of(&self, client: usize) -> u8 {
        self.state[client].load(Ordering::Acquire)
    }

    /// The user id of client `i`.
    pub fn user(i: usize) -> String {
        format!("u{i}")
    }

    /// Client index of a user id made by [`Shared::user`].
    pub fn client_of(user: &str) -> Option<usize> {
        user.strip_prefix('u')?.parse().ok()
    }
}
