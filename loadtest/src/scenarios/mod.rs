//! The scenarios and what they share: the target under test (URLs, server
//! pids, tokens), ramping up many connections with bounded concurrency, and
//! setting up rooms.
//!
//! Every scenario is bounded in count (connections, messages) and in time
//! (a hard deadline on every connection task); all of them stop by themselves.

pub mod connect;
pub mod dm;
pub mod fanout;
pub mod matchmaking;
pub mod pairs;
pub mod reconnect;
pub mod rtt;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::conn::{self, Conn, Opts};
use crate::metrics::{Servers, histogram};
use crate::net::{Sources, WsUrl};
use crate::tokens::Tokens;
use crate::wire::{self, Target};

/// Command-line options every scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Which protocol to speak.
    #[arg(long, value_enum, default_value = "switchboard")]
    pub target: Target,
    /// WebSocket URL (loopback only); repeat to spread connections over
    /// several servers (round robin).
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// Pid of a process holding the client sockets (RSS and CPU are sampled).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Pid of another server-side process of the target (CPU is sampled):
    /// workers, NATS, Redis.
    #[arg(long = "stack-pid")]
    pub stack_pids: Vec<u32>,
    /// App (tenant) in minted tokens.
    #[arg(long, default_value = "demo")]
    pub app: String,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// A target ready to be driven.
pub struct Spec {
    pub target: Target,
    pub urls: Vec<WsUrl>,
    pub servers: Servers,
    pub tokens: Tokens,
    /// Prefix making room and user names unique to this run.
    pub run: String,
}

impl Spec {
    pub fn new(c: &Common) -> anyhow::Result<Self> {
        Self::build(
            c.target,
            &c.urls,
            Servers {
                front: c.server_pids.clone(),
                back: c.stack_pids.clone(),
            },
            &c.app,
        )
    }

    pub fn build(
        target: Target,
        urls: &[String],
        servers: Servers,
        app: &str,
    ) -> anyhow::Result<Self> {
        let urls = urls
            .iter()
            .map(|u| WsUrl::parse(u))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!urls.is_empty(), "no --url given");
        Ok(Self {
            target,
            urls,
            servers,
            tokens: Tokens::new(target, app)?,
            run: format!("lt{}", crate::metrics::now_us() % 1_000_000_000),
        })
    }
}

/// How long one connection attempt may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one setup request may take.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The result of opening many connections.
pub struct Opened {
    /// Connections by index (`None`: failed).
    pub conns: Vec<Option<Conn>>,
    pub handshake: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    pub first_error: Option<String>,
}

impl Opened {
    pub fn established(&self) -> usize {
        self.conns.iter().filter(|c| c.is_some()).count()
    }
}

/// Opens `n` connections (global indexes `offset..offset + n`) with at most
/// `concurrency` handshakes in flight; each starts its reader and writer as
/// soon as it is up, so heartbeats are answered during a long ramp.
#[allow(clippy::too_many_arguments)]
pub async fn open_many(
    spec: &Spec,
    n: usize,
    offset: usize,
    sources: Sources,
    concurrency: usize,
    user_prefix: &str,
    opts: &Opts,
) -> Opened {
    let mut conns: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
    let mut handshake = histogram();
    let mut errors = BTreeMap::new();
    let mut first_error = None;
    let mut results = futures::stream::iter(0..n)
        .map(|i| {
            let gi = offset + i;
            let url = &spec.urls[gi % spec.urls.len()];
            let token = spec.tokens.for_user(&format!("{user_prefix}{gi}"));
            async move {
                let t0 = Instant::now();
                let r = match token {
                    Ok(token) => conn::connect(
                        spec.target,
                        url,
                        sources.addr(gi),
                        token.as_deref(),
                        HANDSHAKE_TIMEOUT,
                    )
                    .await
                    .map_err(|e| (e.kind(), e.to_string())),
                    Err(e) => Err(("token".to_owned(), e.to_string())),
                };
                (i, t0.elapsed(), r)
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some((i, dt, r)) = results.next().await {
        match r {
            Ok((rd, wr)) => {
                handshake.saturating_record(dt.as_micros() as u64);
                conns[i] = Some(Conn::spawn(rd, wr, opts));
            }
            Err((kind, msg)) => {
                *errors.entry(kind).or_insert(0u64) += 1;
                first_error.get_or_insert(msg);
            }
        }
    }
    Opened {
        conns,
        handshake,
        errors,
        first_error,
    }
}

/// Creates `room` (Switchboard only; "already exists" is fine).
pub async fn create_room(
    target: Target,
    conn: &mut Conn,
    id: u64,
    room: &str,
    max_members: u32,
) -> anyhow::Result<()> {
    if target != Target::Switchboard {
        return Ok(());
    }
    let r = conn
        .request(wire::create_room(id, room, max_members), SETUP_TIMEOUT)
        .await?;
    if r.ok || r.code.as_deref() == Some("already_exists") {
        Ok(())
    } else {
        anyhow::bail!("create {room}: {}", r.code.unwrap_or_default())
    }
}

/// Joins `room` and waits for the acknowledgement.
pub async fn join_room(target: Target, conn: &mut Conn, id: u64, room: &str) -> anyhow::Result<()> {
    let r = conn
        .request(wire::join(target, id, room), SETUP_TIMEOUT)
        .await?;
    if r.ok {
        Ok(())
    } else {
        anyhow::bail!("join {room}: {}", r.code.unwrap_or_default())
    }
}

/// Writes a scenario result as pretty JSON to stdout and, if asked, a file.
pub fn emit<T: serde::Serialize>(v: &T, path: Option<&std::path::Path>) -> anyhow::Result<()> {
    let s = serde_json::to_string_pretty(v)?;
    println!("{s}");
    if let Some(p) = path {
        std::fs::write(p, s + "\n")?;
    }
    Ok(())
}

/// A ratio, or `None` when the denominator is zero.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b != 0.0).then(|| a / b)
}
