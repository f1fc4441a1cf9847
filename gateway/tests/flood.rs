//! A flood cannot slow other clients, measured: with the default abuse
//! limits on, one client pipelines `rooms.publish` as fast as its socket
//! allows (and reconnects each time it is closed with 1008), while another
//! client's publish round trips keep their latency and the gateway process
//! keeps its memory.
//!
//! The gateway runs as its own process, so its RSS is its own. The flooder
//! is user `a` of app `demo`, under the default limits; the measuring
//! client is user `b` of app `calm`, whose only override is a publish rate
//! its 200 round trips never exceed (the default 20/s would refuse them).
//! The one other setting: `limits.abuse_cooldown_ms` is 0, so the flooder
//! may reconnect at once and the flood stays a flood of publishes (with
//! the default cooldown it is refused at the handshake after its first
//! close, a much lighter load; `abuse.rs` tests the cooldown).
//! On a 2-core machine the flood takes CPU from everyone: B's median
//! round trip about doubles whether the flood hits B's gateway or another
//! gateway process, so the bounds leave room for that and no more.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_shared::config::Config;
use switchboard_shared::limits::{AppLimits, Bucket, LimitsConfig};
use switchboard_test_harness::client::connect_raw;
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, GatewayProcess, Stack, Workers};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

/// Round trips per measurement, and the pause between two of them (so a
/// measurement spans the flood rather than its first moments).
const SAMPLES: usize = 200;
const PACE: Duration = Duration::from_millis(10);
const WARM_UP: usize = 50;
/// The flood lasts at least this long.
const FLOOD: Duration = Duration::from_secs(3);
/// Measurement rounds (baseline, then flood) allowed to meet the bounds.
/// The machine is shared: another process taking the CPU for 50 ms twice
/// in one round is enough to move a p99 of 200 samples. A real regression
/// shows in every round; such a coincidence does not.
const ROUNDS: usize = 3;
/// Most the gateway may grow (RSS) while flooded.
const RSS_GROWTH_MAX: u64 = 16 * 1024 * 1024;
/// The measuring app's publish rate: high enough that its own round trips
/// are never refused. The flooder's app keeps the default limits.
const CALM_PUBLISH: Bucket = Bucket::new(10_000, 10_000);

/// What the flooding client saw.
#[derive(Debug, Default)]
struct FloodReport {
    connections: u64,
    sent: u64,
    replies: u64,
    rate_limited: u64,
    closed_1008: u64,
}

/// Floods `rooms.publish` on `url` until `stop`: requests are written
/// without waiting for replies (the socket's backpressure is the only
/// brake); replies are read and counted by a second task. Each time the
/// gateway closes the connection it connects again. `started` fires at the
/// first `rate_limited` answer.
async fn flood(
    url: String,
    token: String,
    stop: Arc<AtomicBool>,
    started: oneshot::Sender<()>,
) -> FloodReport {
    let mut report = FloodReport::default();
    let mut started = Some(started);
    let auth = format!("Bearer {token}");
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let ws = match connect_raw(&url, &[("Authorization", &auth)]).await {
            Ok((ws, _)) => ws,
            Err(e) => {
                // Refused at the handshake (429 past the per-address
                // connection rate): that is the limits working; try again.
                assert_eq!(e.status(), Some(429), "{e}");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        report.connections += 1;
        let (mut tx, mut rx) = ws.split();
        let reader = tokio::spawn(async move {
            let (mut replies, mut limited, mut close) = (0u64, 0u64, None);
            while let Some(Ok(m)) = rx.next().await {
                match m {
                    Message::Text(t) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        if v.get("id").is_some() {
                            replies += 1;
                            if v["error"]["code"] == "rate_limited" {
                                limited += 1;
                            }
                        }
                    }
                    Message::Close(c) => {
                        close = c.map(|c| u16::from(c.code));
                        break;
                    }
                    _ => {}
                }
            }
            (replies, limited, close)
        });
        'write: while !stop.load(Ordering::Relaxed) {
            for _ in 0..32 {
                n += 1;
                // Cheap to build: the flooder's own CPU is not what is measured.
                let frame = format!(
                    r#"{{"id":{n},"op":"rooms.publish","data":{{"room":"noise","data":{n}}}}}"#
                );
                if tx.feed(Message::text(frame)).await.is_err() {
                    break 'write;
                }
                report.sent += 1;
            }
            match tokio::time::timeout(Duration::from_secs(1), tx.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => continue,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), tx.close()).await;
        let (replies, limited, close) = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the flooder's reader did not end")
            .unwrap();
        report.replies += replies;
        report.rate_limited += limited;
        if close == Some(1008) {
            report.closed_1008 += 1;
        }
        if limited > 0
            && let Some(s) = started.take()
        {
            let _ = s.send(());
        }
    }
    report
}

/// `n` sequential publish round trips, `PACE` apart; their durations.
async fn measure(b: &mut Client, round: &str, n: usize) -> Vec<Duration> {
    let mut rtts = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = b
            .request(
                "rooms.publish",
                json!({"room": "calm", "data": {"round": round, "i": i}}),
            )
            .await;
        rtts.push(t.elapsed());
        assert_eq!(r["ok"], true, "{r}");
        tokio::time::sleep(PACE).await;
    }
    rtts
}

/// The nearest-rank percentile `pct` of `v`.
fn percentile(v: &[Duration], pct: usize) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[(v.len() * pct).div_ceil(100).max(1) - 1]
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn calm_limits() -> LimitsConfig {
    let mut limits = LimitsConfig::default();
    limits.apps.insert(
        "calm".into(),
        AppLimits {
            ops: BTreeMap::from([(
                "rooms".into(),
                BTreeMap::from([("publish".into(), CALM_PUBLISH)]),
            )]),
            user_connections: None,
        },
    );
    limits
}

/// One measurement round: B's round trips alone, then while A floods.
#[derive(Debug)]
struct Round {
    base_p50: Duration,
    base_p99: Duration,
    flood_p50: Duration,
    flood_p99: Duration,
    flood: FloodReport,
    flood_secs: f64,
    rss_before: u64,
    rss_peak: u64,
}

impl Round {
    /// The p99 B may reach during the flood: a regression of tens of
    /// milliseconds breaks it, the noise of a busy 2-core machine does not.
    fn p99_bound(&self) -> Duration {
        self.base_p99 * 2 + Duration::from_millis(15)
    }

    /// The same for the median, which machine noise hardly moves.
    fn p50_bound(&self) -> Duration {
        self.base_p50 * 2 + Duration::from_millis(5)
    }

    fn fast_enough(&self) -> bool {
        self.flood_p99 <= self.p99_bound() && self.flood_p50 <= self.p50_bound()
    }
}

async fn round(b: &mut Client, gw: &GatewayProcess, flooder_token: String) -> Round {
    let baseline = measure(b, "baseline", SAMPLES).await;
    let rss_before = rss(gw.pid());
    // The flood runs on its own thread and runtime, as another program
    // would: it competes with B for the CPU, not for B's runtime.
    let stop = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = oneshot::channel();
    let flooder = {
        let (url, stop) = (gw.ws_url(), stop.clone());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(flood(url, flooder_token, stop, started_tx))
        })
    };
    tokio::time::timeout(Duration::from_secs(10), started_rx)
        .await
        .expect("the flood was never refused")
        .unwrap();
    let flood_start = Instant::now();
    let sampler = {
        let (pid, stop) = (gw.pid(), stop.clone());
        tokio::spawn(async move {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(rss(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    let during = measure(b, "flood", SAMPLES).await;
    // The flood's length is the test's parameter, not a synchronisation.
    tokio::time::sleep(FLOOD.saturating_sub(flood_start.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    let flood_secs = flood_start.elapsed().as_secs_f64();
    let flood = tokio::task::spawn_blocking(move || flooder.join().unwrap())
        .await
        .unwrap();
    let rss_peak = sampler.await.unwrap().max(rss(gw.pid()));
    Round {
        base_p50: percentile(&baseline, 50),
        base_p99: percentile(&baseline, 99),
        flood_p50: percentile(&during, 50),
        flood_p99: percentile(&during, 99),
        flood,
        flood_secs,
        rss_before,
        rss_peak,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_does_not_slow_the_others_down() {
    let stack = Stack::start();
    let mut cfg: Config = stack.config();
    cfg.limits = calm_limits();
    let _w = Workers::start(cfg.clone(), &["rooms"]).await;
    let per_sec = CALM_PUBLISH.per_sec.to_string();
    let burst = CALM_PUBLISH.burst.to_string();
    let gw = GatewayProcess::start_with_env(
        env!("CARGO_BIN_EXE_switchboard-gateway"),
        &cfg,
        &[
            ("SB_LIMITS__ENABLED", "true"),
            ("SB_LIMITS__ABUSE_COOLDOWN_MS", "0"),
            (
                "SB_LIMITS__APPS__CALM__OPS__ROOMS__PUBLISH__PER_SEC",
                &per_sec,
            ),
            ("SB_LIMITS__APPS__CALM__OPS__ROOMS__PUBLISH__BURST", &burst),
        ],
    )
    .await;

    // B publishes in a room with a member, C, who reads every message.
    let mut b = Client::connect(&gw.ws_url(), &token(&cfg, "calm", "b"))
        .await
        .unwrap();
    let mut c = Client::connect(&gw.ws_url(), &token(&cfg, "calm", "c"))
        .await
        .unwrap();
    b.ok("rooms.create", json!({"room": "calm"})).await;
    b.ok("rooms.join", json!({"room": "calm"})).await;
    c.ok("rooms.join", json!({"room": "calm"})).await;
    let member = tokio::spawn(async move {
        let mut seqs = Vec::new();
        loop {
            let m = c.event("message").await;
            if m["data"] == "end" {
                return seqs;
            }
            seqs.push(m["seq"].as_u64().unwrap());
        }
    });
    // A's room, where its flood goes (each new connection of A is not a
    // member: what passes the limits is refused by the service).
    let mut a = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "a"))
        .await
        .unwrap();
    a.ok("rooms.create", json!({"room": "noise"})).await;
    a.close().await;

    measure(&mut b, "warm-up", WARM_UP).await;
    let mut rounds: Vec<Round> = Vec::new();
    while rounds.len() < ROUNDS && !rounds.last().is_some_and(Round::fast_enough) {
        let r = round(&mut b, &gw, token(&cfg, "demo", "a")).await;
        eprintln!(
            "flood round {}: B p50 {:?} -> {:?} (bound {:?}), p99 {:?} -> {:?} (bound {:?}); \
             gateway RSS {} KiB -> peak {} KiB; flood {:.1} s: {:?}",
            rounds.len() + 1,
            r.base_p50,
            r.flood_p50,
            r.p50_bound(),
            r.base_p99,
            r.flood_p99,
            r.p99_bound(),
            r.rss_before / 1024,
            r.rss_peak / 1024,
            r.flood_secs,
            r.flood,
        );
        // The flood was real: refused, and closed for it, again and again.
        assert!(r.flood.rate_limited > 100, "{r:?}");
        assert!(r.flood.closed_1008 >= 2, "{r:?}");
        // Memory is not noisy: every round must keep it.
        assert!(
            r.rss_peak.saturating_sub(r.rss_before) < RSS_GROWTH_MAX,
            "the gateway grew by {} KiB during the flood",
            r.rss_peak.saturating_sub(r.rss_before) / 1024
        );
        rounds.push(r);
    }
    assert!(
        rounds.iter().any(Round::fast_enough),
        "B was slower during the flood in every round: {rounds:#?}"
    );

    // C got every one of B's messages, in order, once.
    b.ok("rooms.publish", json!({"room": "calm", "data": "end"}))
        .await;
    let seqs = member.await.unwrap();
    let published = (WARM_UP + rounds.len() * 2 * SAMPLES) as u64;
    assert_eq!(seqs, (1..=published).collect::<Vec<_>>());
}
