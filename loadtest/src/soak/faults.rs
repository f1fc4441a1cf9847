//! The fault schedule: a seeded plan of faults, one at a time, between the
//! warm-up and the cool-down, each kind at least once when the window
//! allows; and its injection into the cluster.
//!
//! | kind | what | back after |
//! |---|---|---|
//! | gateway kill | SIGKILL a gateway; restart it on the same port | 2–5 s |
//! | worker kill | SIGKILL a worker process (every service); restart it | 1–3 s |
//! | NATS restart | kill nats-server; start it again on the same port | 1–3 s |
//! | Redis restart | kill redis-server (append-only, fsync always); start it again | 1–3 s |
//! | gateway pause | SIGSTOP a gateway for longer than `gateway_dead_after_ms`; SIGCONT | dead_after + 1–3 s |

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::cluster::{Cluster, Timing};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    GatewayKill,
    WorkerKill,
    NatsRestart,
    RedisRestart,
    GatewayPause,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::GatewayKill,
        Kind::WorkerKill,
        Kind::NatsRestart,
        Kind::RedisRestart,
        Kind::GatewayPause,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::GatewayKill => "gateway kill",
            Self::WorkerKill => "worker kill",
            Self::NatsRestart => "NATS restart",
            Self::RedisRestart => "Redis restart",
            Self::GatewayPause => "gateway pause",
        }
    }
}

/// One planned fault.
#[derive(Debug, Clone, Copy)]
pub struct Planned {
    /// When, from the start of the load.
    pub at: Duration,
    pub kind: Kind,
    /// Which gateway or worker process (0 or 1).
    pub target: usize,
    /// How long the component stays down (or paused).
    pub down: Duration,
}

impl Planned {
    /// The fault without its time: `gateway kill gateway-1, back after 3.2 s`.
    pub fn what(&self) -> String {
        let target = match self.kind {
            Kind::GatewayKill | Kind::GatewayPause => format!(" gateway-{}", self.target),
            Kind::WorkerKill => format!(" workers-{}", self.target),
            Kind::NatsRestart | Kind::RedisRestart => String::new(),
        };
        format!(
            "{}{target}, back after {:.1} s",
            self.kind.name(),
            self.down.as_secs_f64()
        )
    }

    pub fn describe(&self) -> String {
        format!("{:>6.1} s  {}", self.at.as_secs_f64(), self.what())
    }
}

/// Spacing between fault starts (each fault and its recovery fit in it).
pub const SPACING: Duration = Duration::from_secs(12);

/// Plans faults in `[warmup, total − cooldown)`: every kind once (in a
/// seeded order) while slots last, then kinds at random.
pub fn plan(
    seed: u64,
    total: Duration,
    warmup: Duration,
    cooldown: Duration,
    t: Timing,
) -> Vec<Planned> {
    let mut rng = Rng::derive(seed, 0xFA17);
    let window = total.saturating_sub(warmup + cooldown);
    let slots = (window.as_secs_f64() / SPACING.as_secs_f64()).floor() as usize;
    let mut order = Kind::ALL.to_vec();
    // Fisher–Yates with the seeded generator.
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    (0..slots)
        .map(|k| {
            let kind = match order.get(k) {
                Some(kind) => *kind,
                None => Kind::ALL[rng.below(Kind::ALL.len() as u64) as usize],
            };
            let down = match kind {
                Kind::GatewayKill => rng.millis(2_000, 5_000),
                Kind::WorkerKill | Kind::NatsRestart | Kind::RedisRestart => {
                    rng.millis(1_000, 3_000)
                }
                Kind::GatewayPause => rng.millis(t.dead_after_ms + 1_000, t.dead_after_ms + 3_000),
            };
            Planned {
                at: warmup + SPACING * k as u32 + rng.millis(0, 2_000),
                kind,
                target: rng.below(2) as usize,
                down,
            }
        })
        .collect()
}

/// A fault as it happened.
#[derive(Debug, Clone)]
pub struct Injected {
    pub planned: Planned,
    pub started_s: f64,
    pub recovered_s: f64,
    pub error: Option<String>,
}

/// Injects the planned faults one after the other (each at its time, or
/// once the previous one has recovered), printing each.
pub async fn run(
    cluster: Arc<Mutex<Cluster>>,
    plan: Vec<Planned>,
    start: Instant,
) -> Vec<Injected> {
    let mut done = Vec::new();
    let n = plan.len();
    for (k, p) in plan.into_iter().enumerate() {
        tokio::time::sleep_until(start + p.at).await;
        let started_s = start.elapsed().as_secs_f64();
        eprintln!("[{started_s:>6.1} s] fault {}/{n}: {}", k + 1, p.what());
        let error = inject(&cluster, &p).await.err().map(|e| format!("{e:#}"));
        if let Some(e) = &error {
            eprintln!(
                "[{:>6.1} s] fault {}/{n} failed: {e}",
                start.elapsed().as_secs_f64(),
                k + 1
            );
        }
        done.push(Injected {
            planned: p,
            started_s,
            recovered_s: start.elapsed().as_secs_f64(),
            error,
        });
    }
    done
}

async fn inject(cluster: &Mutex<Cluster>, p: &Planned) -> anyhow::Result<()> {
    let name = |prefix: &str| format!("{prefix}-{}", p.target);
    match p.kind {
        Kind::GatewayKill => {
            {
                let mut c = cluster.lock().await;
                c.down.insert(name("gateway"));
                c.gateways[p.target].process.kill();
            }
            tokio::time::sleep(p.down).await;
            let mut c = cluster.lock().await;
            let r = c.gateways[p.target].restart().await;
            c.down.remove(&name("gateway"));
            c.restarts += 1;
            r?;
        }
        Kind::WorkerKill => {
            {
                let mut c = cluster.lock().await;
                c.down.insert(name("workers"));
                c.workers[p.target].process.kill();
            }
            tokio::time::sleep(p.down).await;
            let mut c = cluster.lock().await;
            let r = c.workers[p.target].process.restart();
            c.down.remove(&name("workers"));
            c.restarts += 1;
            r?;
        }
        Kind::NatsRestart | Kind::RedisRestart => {
            let which = if p.kind == Kind::NatsRestart {
                "nats"
            } else {
                "redis"
            };
            {
                let mut c = cluster.lock().await;
                c.down.insert(which.to_owned());
                let c = &mut *c;
                tokio::task::block_in_place(|| match which {
                    "nats" => c.nats.stop(),
                    _ => c.redis.stop(),
                })?;
            }
            tokio::time::sleep(p.down).await;
            let mut c = cluster.lock().await;
            let r = {
                let c = &mut *c;
                tokio::task::block_in_place(|| match which {
                    "nats" => c.nats.resume(),
                    _ => c.redis.resume(),
                })
            };
            c.down.remove(which);
            c.restarts += 1;
            r?;
        }
        Kind::GatewayPause => {
            {
                let mut c = cluster.lock().await;
                c.down.insert(name("gateway"));
                c.gateways[p.target].process.pause()?;
            }
            tokio::time::sleep(p.down).await;
            let mut c = cluster.lock().await;
            let r = c.gateways[p.target].process.cont();
            c.down.remove(&name("gateway"));
            r?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_seeded_covers_every_kind_and_stays_in_its_window() {
        let t = Timing::SOAK;
        let total = Duration::from_secs(180);
        let (w, c) = (Duration::from_secs(15), Duration::from_secs(35));
        let a = plan(7, total, w, c, t);
        let b = plan(7, total, w, c, t);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_ne!(format!("{a:?}"), format!("{:?}", plan(8, total, w, c, t)));
        assert_eq!(a.len(), 10);
        for k in Kind::ALL {
            assert!(a.iter().any(|p| p.kind == k), "{k:?} missing");
        }
        for (p, q) in a.iter().zip(a.iter().skip(1)) {
            assert!(q.at > p.at + p.down, "{p:?} overlaps {q:?}");
        }
        let last = a.last().map_or(Duration::ZERO, |p| p.at + p.down);
        assert!(last < total - Duration::from_secs(20), "{last:?}");
        assert!(plan(1, Duration::from_secs(40), w, c, t).is_empty());
    }
}
