//! The soak's cluster, all on loopback: NATS, a durable Redis (append-only,
//! fsync on every write, so a restart loses nothing), two gateway processes
//! and two worker processes running every service — processes, so the
//! fault schedule can kill, pause and restart them. Also the crash check:
//! a process that ended without the schedule killing it.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context;
use switchboard_test_harness::{GatewayChild, NatsServer, RedisServer, WorkersChild};

/// Timings the cluster runs with (short, so faults play out within a soak).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub dead_after_ms: u64,
    pub reap_ms: u64,
}

impl Timing {
    pub const SOAK: Self = Self {
        heartbeat_ms: 1_000,
        dead_after_ms: 4_000,
        reap_ms: 500,
    };

    /// The longest a presence change may take to show, as docs/protocol.md
    /// states it: after an outage, two heartbeats and a round trip, or under
    /// churn up to four times `gateway_dead_after_ms`; a dead gateway's users
    /// within `gateway_dead_after_ms` plus one reap interval. The worst of
    /// these plus a second of slack.
    pub fn presence_bound_ms(&self) -> u64 {
        (4 * self.dead_after_ms + 2 * self.heartbeat_ms + self.reap_ms)
            .max(self.dead_after_ms + self.reap_ms)
            + 1_000
    }
}

pub struct Cluster {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub gateways: Vec<GatewayChild>,
    pub workers: Vec<WorkersChild>,
    /// Components the schedule has taken down (or paused) right now, by name.
    pub down: BTreeSet<String>,
    /// Restarts done by the schedule.
    pub restarts: u32,
}

impl Cluster {
    pub async fn start(
        gateway_bin: &Path,
        workers_bin: &Path,
        timing: Timing,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let nats = NatsServer::start().context("starting nats-server")?;
        let redis = RedisServer::start_durable().context("starting redis-server")?;
        let mut env = vec![
            ("SB_NATS__URL".to_owned(), nats.url()),
            ("SB_REDIS__URL".to_owned(), redis.url()),
            (
                "SB_GATEWAY__HEARTBEAT_INTERVAL_MS".to_owned(),
                timing.heartbeat_ms.to_string(),
            ),
            (
                "SB_PRESENCE__GATEWAY_DEAD_AFTER_MS".to_owned(),
                timing.dead_after_ms.to_string(),
            ),
            (
                "SB_PRESENCE__REAP_INTERVAL_MS".to_owned(),
                timing.reap_ms.to_string(),
            ),
            // Every message stays in history, so the end check can read
            // back every acknowledged publish.
            ("SB_ROOMS__HISTORY_MAX".to_owned(), "100000".to_owned()),
        ];
        if std::env::var_os("SB_LOG__FILTER").is_none() {
            env.push(("SB_LOG__FILTER".to_owned(), "warn".to_owned()));
        }
        let mut workers = Vec::new();
        for w in 0..2 {
            let name = format!("workers-{w}");
            workers.push(WorkersChild::start(
                &name,
                workers_bin,
                &["all"],
                &env,
                &dir.join(format!("{name}.log")),
            )?);
        }
        let mut gateways = Vec::new();
        for g in 0..2 {
            let name = format!("gateway-{g}");
            gateways.push(
                GatewayChild::start(
                    &name,
                    gateway_bin,
                    None,
                    &env,
                    &dir.join(format!("{name}.log")),
                )
                .await?,
            );
        }
        Ok(Self {
            nats,
            redis,
            gateways,
            workers,
            down: BTreeSet::new(),
            restarts: 0,
        })
    }

    pub fn urls(&self) -> Vec<String> {
        self.gateways.iter().map(GatewayChild::ws_url).collect()
    }

    pub fn nats_url(&self) -> String {
        self.nats.url()
    }

    /// Processes that ended although the schedule did not take them down.
    /// Each one is reported once.
    pub fn crashes(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for g in &mut self.gateways {
            if let Some(status) = g.process.exited() {
                out.push(format!("{} exited by itself ({status})", g.process.what()));
            }
        }
        for w in &mut self.workers {
            if let Some(status) = w.process.exited() {
                out.push(format!("{} exited by itself ({status})", w.process.what()));
            }
        }
        for (name, pid) in [("nats", self.nats.pid()), ("redis", self.redis.pid())] {
            if !self.down.contains(name)
                && !pid_alive(pid)
                && self.down.insert(format!("{name}-crashed"))
            {
                out.push(format!("{name}-server (pid {pid}) exited by itself"));
            }
        }
        out
    }
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next())
                .unwrap_or("X");
            !matches!(state, "Z" | "X" | "x")
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_is_alive_and_a_bogus_pid_is_not() {
        assert!(super::pid_alive(std::process::id()));
        assert!(!super::pid_alive(u32::MAX - 1));
    }

    #[test]
    fn the_presence_bound_follows_the_documented_rules() {
        let t = super::Timing::SOAK;
        assert_eq!(t.presence_bound_ms(), 4 * 4_000 + 2 * 1_000 + 500 + 1_000);
    }
}
