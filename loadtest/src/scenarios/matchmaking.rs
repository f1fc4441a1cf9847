//! `matchmaking` (Switchboard only): how the matchmaking service copes with a
//! long queue. `waiting` tickets (100k by default) that nobody can match are
//! seeded straight into Redis in the service's own layout (see
//! `workers/src/matchmaking/{mod,scripts}.rs`: `sb:{mm:<app>}:` queue zset,
//! tickets hash, owners hash, users hash, expiry zset, and the app in
//! `sb:{mm}:tenants`), then:
//!
//! 1. **newcomers**: pairs of compatible clients join through the real
//!    service (`matchmaking.join` over real WebSockets); the time from the
//!    second join to both `match_found` pushes is recorded;
//! 2. **throughput**: `compatible` tickets that all pair up are added (in
//!    one Redis transaction, newer than the waiting ones) and the queue is
//!    polled until they are gone: tickets matched (each into a room made by
//!    the rooms service) per second with the waiting ones still there.
//!
//! Every loop is bounded in count and time; the app's queue is deleted
//! before and after. Redis must be on a loopback address.

use std::time::Duration;

use anyhow::Context;
use deadpool_redis::redis;
use fastwebsockets::{Frame, OpCode, Payload};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Common, HANDSHAKE_TIMEOUT, Spec, emit};
use crate::metrics::{CpuUse, Latency, histogram, per_million};
use crate::net::{Sources, WsRead, WsWrite, no_obligations};
use crate::wire::Target;

/// Tickets per seeding pipeline.
const SEED_CHUNK: usize = 10_000;
/// How long the seeded tickets stay valid (the service expires them after).
const SEED_TTL_MS: u64 = 600_000;
/// How long one newcomer pair may take to be matched.
const MATCH_TIMEOUT: Duration = Duration::from_secs(20);
/// Queue polling interval during the throughput phase.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Redis of the Switchboard stack (loopback only).
    #[arg(long)]
    pub redis_url: String,
    /// Incompatible tickets waiting in the queue.
    #[arg(long, default_value_t = 100_000)]
    pub waiting: usize,
    /// Compatible tickets added for the throughput phase (0: skip it).
    #[arg(long, default_value_t = 20_000)]
    pub compatible: usize,
    /// Newcomer pairs joined one after the other.
    #[arg(long, default_value_t = 5)]
    pub newcomer_pairs: usize,
    /// Longest the throughput phase may take, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub max_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    /// Incompatible tickets waiting throughout.
    pub waiting: usize,
    /// Seconds spent seeding them.
    pub seed_s: f64,
    /// Newcomer pairs matched / attempted.
    pub newcomer_pairs: usize,
    pub newcomer_matched: usize,
    /// Second join sent → both `match_found` pushes received.
    pub newcomer_latency: Latency,
    /// Compatible tickets added for the throughput phase.
    pub compatible: usize,
    /// Of those, matched before the phase ended.
    pub matched: u64,
    /// Whether every compatible ticket was matched in time.
    pub drained: bool,
    /// From the compatible tickets' arrival to the last one matched (or the
    /// time limit), seconds.
    pub drain_s: f64,
    /// Tickets matched per second with `waiting` tickets in the queue.
    pub tickets_per_s: f64,
    pub cpu: CpuUse,
    /// Server-side CPU seconds per million tickets matched.
    pub stack_cpu_s_per_m: Option<f64>,
}

pub async fn main(args: Args) -> anyhow::Result<()> {
    let spec = Spec::new(&args.common)?;
    let r = run(&spec, &args).await?;
    print_summary(&r);
    emit(&r, args.common.json.as_deref())
}

pub fn print_summary(r: &Report) {
    eprintln!(
        "   {} waiting: newcomer pairs {}/{} matched, p50 {:.1} max {:.1} ms; {}/{} compatible matched in {:.2} s = {:.0} tickets/s",
        r.waiting,
        r.newcomer_matched,
        r.newcomer_pairs,
        r.newcomer_latency.p50_ms,
        r.newcomer_latency.max_ms,
        r.matched,
        r.compatible,
        r.drain_s,
        r.tickets_per_s
    );
}

/// The keys of one app's queue, as `MmKeys` in the service names them.
struct Keys {
    queue: String,
    tickets: String,
    owners: String,
    users: String,
    expiry: String,
    all: Vec<String>,
}

impl Keys {
    fn new(app: &str) -> Self {
        let tag = format!("sb:{{mm:{app}}}");
        let k = |s: &str| format!("{tag}:{s}");
        Self {
            queue: k("queue"),
            tickets: k("tickets"),
            owners: k("owners"),
            users: k("users"),
            expiry: k("expiry"),
            all: [
                "queue", "tickets", "owners", "users", "expiry", "stats", "meta",
            ]
            .iter()
            .map(|s| k(s))
            .collect(),
        }
    }
}

const TENANTS: &str = "sb:{mm}:tenants";

/// Checks that a `redis://host:port[/db]` URL is on a loopback IP.
fn check_redis_url(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| anyhow::anyhow!("{url}: expected redis://"))?;
    let hostport = rest.rsplit('@').next().unwrap_or_default();
    let hostport = hostport.split('/').next().unwrap_or_default();
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    let ip: std::net::IpAddr = if host == "localhost" {
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .map_err(|_| anyhow::anyhow!("{url}: Redis must be on a loopback IP"))?
    };
    crate::net::check_loopback(ip)
}

/// The JSON the service stores for a ticket (`ticket::Ticket`): a 1-vs-1
/// ticket in region `eu`. An incompatible one requires a property value no
/// other ticket has.
fn ticket_json(id: &str, user: &str, i: usize, at: u64, compatible: bool) -> String {
    let required = if compatible {
        json!([])
    } else {
        json!([{"key": "k", "test": {"In": [format!("nobody{i}")]}}])
    };
    json!({"id": id, "user": user, "gw": "gw-seed", "conn": i, "at": at,
        "exp": at + SEED_TTL_MS, "min": 2, "max": 2,
        "props": {"region": "eu", "k": format!("k{i}")}, "required": required, "optional": []})
    .to_string()
}

/// Seeds `n` tickets named `<prefix><i>`, enqueued at `at(i)`, as the
/// JOIN script stores them. Compatible ones appear all at once (one
/// transaction); the waiting crowd goes in pipelines of [`SEED_CHUNK`].
async fn seed(
    r: &mut redis::aio::MultiplexedConnection,
    k: &Keys,
    app: &str,
    prefix: &str,
    n: usize,
    compatible: bool,
    at: impl Fn(usize) -> u64,
) -> anyhow::Result<()> {
    let atomic = compatible;
    let mut start = 0;
    while start < n {
        let end = if atomic {
            n
        } else {
            (start + SEED_CHUNK).min(n)
        };
        let mut pipe = redis::pipe();
        if atomic {
            pipe.atomic();
        }
        pipe.sadd(TENANTS, app).ignore();
        for i in start..end {
            let id = format!("t{prefix}{i:08}");
            let user = format!("{prefix}{i}");
            let t = at(i);
            pipe.zadd(&k.queue, &id, t).ignore();
            pipe.hset(&k.tickets, &id, ticket_json(&id, &user, i, t, compatible))
                .ignore();
            pipe.hset(&k.owners, &id, format!("gw-seed|{i}|{user}"))
                .ignore();
            pipe.hset(&k.users, &user, &id).ignore();
            pipe.zadd(&k.expiry, &id, t + SEED_TTL_MS).ignore();
        }
        let () = pipe
            .query_async(r)
            .await
            .context("seeding tickets into Redis")?;
        start = end;
    }
    Ok(())
}

async fn queue_len(r: &mut redis::aio::MultiplexedConnection, k: &Keys) -> anyhow::Result<u64> {
    Ok(redis::cmd("ZCARD").arg(&k.queue).query_async(r).await?)
}

async fn clear(r: &mut redis::aio::MultiplexedConnection, k: &Keys) -> anyhow::Result<()> {
    let () = redis::cmd("DEL").arg(&k.all).query_async(r).await?;
    Ok(())
}

/// One matchmaking client over a real WebSocket.
struct Client {
    rd: WsRead,
    wr: WsWrite,
    next_id: u64,
}

impl Client {
    async fn open(spec: &Spec, user: &str, i: usize) -> anyhow::Result<Self> {
        let token = spec.tokens.for_user(user)?;
        let sources = Sources::new(Sources::random_seed(), crate::net::PER_SOURCE_IP);
        let (rd, wr) = crate::conn::connect(
            Target::Switchboard,
            &spec.urls[i % spec.urls.len()],
            sources.addr(i),
            token.as_deref(),
            HANDSHAKE_TIMEOUT,
        )
        .await
        .map_err(|e| anyhow::anyhow!("connecting {user}: {e}"))?;
        Ok(Self { rd, wr, next_id: 1 })
    }

    async fn send(&mut self, op: &str, data: Value) -> anyhow::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let text = json!({"id": id, "op": op, "data": data}).to_string();
        self.wr
            .write_frame(Frame::text(Payload::Owned(text.into_bytes())))
            .await?;
        Ok(id)
    }

    /// Reads frames until `want` matches one, or the deadline.
    async fn until(
        &mut self,
        deadline: Instant,
        want: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let mut send_fn = no_obligations;
        for _ in 0..100_000 {
            let frame = tokio::time::timeout_at(deadline, self.rd.read_frame(&mut send_fn))
                .await
                .map_err(|_| anyhow::anyhow!("timed out"))??;
            match frame.opcode {
                OpCode::Text => {
                    let v: Value = serde_json::from_slice(&frame.payload)?;
                    if want(&v) {
                        return Ok(v);
                    }
                }
                OpCode::Ping => {
                    let p = frame.payload.to_vec();
                    self.wr.write_frame(Frame::pong(Payload::Owned(p))).await?;
                }
                OpCode::Close => anyhow::bail!("closed by the server"),
                _ => {}
            }
        }
        anyhow::bail!("too many frames")
    }

    /// `matchmaking.join` and its acknowledgement.
    async fn join(&mut self, data: Value) -> anyhow::Result<()> {
        let id = self.send("matchmaking.join", data).await?;
        let r = self
            .until(Instant::now() + super::SETUP_TIMEOUT, |v| {
                v["id"].as_u64() == Some(id)
            })
            .await?;
        anyhow::ensure!(r["ok"] == json!(true), "matchmaking.join refused: {r}");
        Ok(())
    }

    async fn match_found(&mut self, deadline: Instant) -> anyhow::Result<Value> {
        self.until(deadline, |v| v["event"] == "match_found").await
    }
}

fn newcomer(skill: u32) -> Value {
    json!({"props": {"region": "eu", "skill": skill}, "query": {"required": {"region": "eu"}}})
}

/// One compatible pair joins; returns the matching time.
async fn newcomer_pair(spec: &Spec, n: usize) -> anyhow::Result<Duration> {
    let mut a = Client::open(spec, &format!("{}-mma{n}", spec.run), 2 * n).await?;
    let mut b = Client::open(spec, &format!("{}-mmb{n}", spec.run), 2 * n + 1).await?;
    a.join(newcomer(1)).await?;
    let t0 = Instant::now();
    b.join(newcomer(2)).await?;
    let deadline = t0 + MATCH_TIMEOUT;
    let (ra, rb) = tokio::join!(a.match_found(deadline), b.match_found(deadline));
    let (ra, rb) = (ra?, rb?);
    anyhow::ensure!(
        ra["data"]["room"] == rb["data"]["room"],
        "the pair was matched into different rooms"
    );
    Ok(t0.elapsed())
}

pub async fn run(spec: &Spec, args: &Args) -> anyhow::Result<Report> {
    anyhow::ensure!(
        spec.target == Target::Switchboard,
        "matchmaking: Switchboard only"
    );
    check_redis_url(&args.redis_url)?;
    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut r = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let app = args.common.app.clone();
    let k = Keys::new(&app);
    clear(&mut r, &k).await?;
    let result = phases(spec, args, &mut r, &k, &app).await;
    let cleaned = clear(&mut r, &k).await;
    let report = result?;
    cleaned?;
    Ok(report)
}

async fn phases(
    spec: &Spec,
    args: &Args,
    r: &mut redis::aio::MultiplexedConnection,
    k: &Keys,
    app: &str,
) -> anyhow::Result<Report> {
    // 1. The waiting crowd: oldest first, all enqueued before now.
    let t = Instant::now();
    let now = switchboard_shared::now_ms();
    let waiting = args.waiting;
    eprintln!("   seeding {waiting} waiting tickets");
    seed(r, k, app, &format!("{}w", spec.run), waiting, false, |i| {
        now.saturating_sub((waiting - i) as u64)
    })
    .await?;
    let seed_s = t.elapsed().as_secs_f64();
    let len = queue_len(r, k).await?;
    anyhow::ensure!(
        len >= waiting as u64,
        "seeded {waiting} tickets but the queue holds {len}"
    );
    // Let the matcher look at the crowd once before the newcomers come.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 2. Newcomer pairs, one after the other.
    let mut h = histogram();
    let mut matched_pairs = 0;
    for n in 0..args.newcomer_pairs {
        match newcomer_pair(spec, n).await {
            Ok(dt) => {
                matched_pairs += 1;
                h.saturating_record(dt.as_micros() as u64);
            }
            Err(e) => eprintln!("   newcomer pair {n}: {e:#}"),
        }
    }
    anyhow::ensure!(
        args.newcomer_pairs == 0 || matched_pairs > 0,
        "no newcomer pair was matched with {waiting} waiting"
    );

    // 3. Throughput: compatible tickets, newer than the crowd, all at once.
    let m = args.compatible;
    let base = queue_len(r, k).await?;
    let before = spec.servers.snapshot();
    let mut matched = 0;
    let mut drained = m == 0;
    let mut drain_s = 0.0;
    if m > 0 {
        eprintln!("   adding {m} compatible tickets");
        let at = switchboard_shared::now_ms();
        seed(r, k, app, &format!("{}c", spec.run), m, true, |i| {
            at + (i as u64 % 1000)
        })
        .await?;
        let t0 = Instant::now();
        let limit = Duration::from_secs_f64(args.max_secs.max(1.0));
        let mut left = m as u64;
        while t0.elapsed() < limit {
            left = queue_len(r, k).await?.saturating_sub(base);
            if left == 0 {
                drained = true;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        drain_s = t0.elapsed().as_secs_f64();
        matched = m as u64 - left.min(m as u64);
    }
    let cpu = spec.servers.snapshot().since(&before);
    Ok(Report {
        target: spec.target.name().to_owned(),
        waiting,
        seed_s,
        newcomer_pairs: args.newcomer_pairs,
        newcomer_matched: matched_pairs,
        newcomer_latency: Latency::of(&h),
        compatible: m,
        matched,
        drained,
        drain_s,
        tickets_per_s: if drain_s > 0.0 {
            matched as f64 / drain_s
        } else {
            0.0
        },
        stack_cpu_s_per_m: per_million(cpu.stack_s, matched),
        cpu,
    })
}
