//! Measurement: latency histograms (HDR, microseconds) and server process
//! accounting from `/proc` — resident memory (`VmRSS` in
//! `/proc/<pid>/status`) and CPU time (`utime + stime` in `/proc/<pid>/stat`,
//! in clock ticks from `getconf CLK_TCK`).
//!
//! Servers are given as two groups of pids: the *front* (the process that
//! holds the client sockets: gateway, B1, B2 relay, Node) and the *back*
//! (everything else the target needs: workers, NATS, Redis). Memory per
//! connection is the front's; CPU is reported for the front and for the whole
//! stack (front + back).

use std::sync::OnceLock;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch (the clock carried inside messages).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A latency histogram: 1 µs to 10 min, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 600_000_000, 3) {
        Ok(h) => h,
        // The bounds are constants that hdrhistogram accepts.
        Err(_) => Histogram::new(3).unwrap_or_else(|_| unreachable!()),
    }
}

/// Latency samples of one connection. An HDR histogram at this precision
/// and range is ~200 KiB, too much for each of thousands of connections:
/// samples are kept raw (4 bytes each) and folded into a histogram only when
/// a connection records very many.
#[derive(Debug, Default)]
pub struct Samples {
    raw: Vec<u32>,
    hist: Option<Histogram<u64>>,
}

impl Samples {
    const FOLD_AT: usize = 1 << 16;

    pub fn record(&mut self, us: u64) {
        self.raw.push(us.clamp(1, u64::from(u32::MAX)) as u32);
        if self.raw.len() >= Self::FOLD_AT {
            let h = self.hist.get_or_insert_with(histogram);
            for v in self.raw.drain(..) {
                h.saturating_record(u64::from(v));
            }
        }
    }

    /// Adds every sample to `into`.
    pub fn merge_into(&self, into: &mut Histogram<u64>) {
        if let Some(h) = &self.hist {
            let _ = into.add(h);
        }
        for v in &self.raw {
            into.saturating_record(u64::from(*v));
        }
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// Clock ticks per second for `/proc/<pid>/stat` times.
pub fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// `VmRSS` of `pid`, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU seconds (user + system) used so far by `pid` ("self" works too).
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are [11], [12].
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks() as f64)
}

/// Machine-wide CPU seconds from `/proc/stat`: (user + nice + system,
/// irq + softirq, steal), over all CPUs.
pub fn machine_cpu() -> (f64, f64, f64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let g = |i: usize| f.get(i).copied().unwrap_or(0);
    let tick = clock_ticks() as f64;
    (
        (g(0) + g(1) + g(2)) as f64 / tick,
        (g(5) + g(6)) as f64 / tick,
        g(7) as f64 / tick,
    )
}

/// The server processes of one target.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Servers {
    pub front: Vec<u32>,
    pub back: Vec<u32>,
}

/// A reading of the servers' counters.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// CPU seconds per server pid.
    pub procs: Vec<(u32, f64)>,
    pub front_rss_kib: u64,
    pub front_cpu_s: f64,
    pub back_cpu_s: f64,
    pub client_cpu_s: f64,
    pub machine_busy_s: f64,
    pub machine_irq_s: f64,
    pub machine_steal_s: f64,
    pub at: Option<std::time::Instant>,
}

/// CPU seconds one server process used in a window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcCpu {
    pub pid: u32,
    pub name: String,
    pub cpu_s: f64,
}

/// CPU used between two snapshots.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuUse {
    pub wall_s: f64,
    /// CPU seconds of the front process(es).
    pub front_s: f64,
    /// CPU seconds of the whole server side (front + back).
    pub stack_s: f64,
    /// CPU seconds of this load generator.
    pub client_s: f64,
    /// CPU seconds (user + system) used on the machine by anything else:
    /// other users' work, kernel threads. Noise in the measurement.
    pub foreign_s: f64,
    /// Interrupt and softirq time on the machine (mostly the loopback
    /// network stack, which no process is billed for).
    pub irq_s: f64,
    /// Per server process.
    pub procs: Vec<ProcCpu>,
    /// CPU seconds the hypervisor took away from this VM (steal).
    pub steal_s: f64,
}

impl Servers {
    pub fn snapshot(&self) -> Snapshot {
        let sum_cpu = |pids: &[u32]| {
            pids.iter()
                .filter_map(|p| cpu_secs(&p.to_string()))
                .sum::<f64>()
        };
        let (machine_busy_s, machine_irq_s, machine_steal_s) = machine_cpu();
        Snapshot {
            procs: self
                .front
                .iter()
                .chain(&self.back)
                .map(|p| (*p, cpu_secs(&p.to_string()).unwrap_or(0.0)))
                .collect(),
            machine_busy_s,
            machine_irq_s,
            machine_steal_s,
            front_rss_kib: self.front.iter().filter_map(|p| rss_kib(*p)).sum(),
            front_cpu_s: sum_cpu(&self.front),
            back_cpu_s: sum_cpu(&self.back),
            client_cpu_s: cpu_secs("self").unwrap_or(0.0),
            at: Some(std::time::Instant::now()),
        }
    }

    /// Waits (at most `max`) until the servers use under `idle_cores` of CPU
    /// over 300 ms: the previous scenario's cleanup (disconnect handling,
    /// garbage collection) must not be billed to the next one.
    pub async fn wait_quiet(&self, idle_cores: f64, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        let window = Duration::from_millis(300);
        loop {
            let a = self.snapshot();
            tokio::time::sleep(window).await;
            let b = self.snapshot();
            let used = (b.front_cpu_s + b.back_cpu_s) - (a.front_cpu_s + a.back_cpu_s);
            if used / window.as_secs_f64() < idle_cores || tokio::time::Instant::now() >= deadline {
                return;
            }
        }
    }
}

impl Snapshot {
    pub fn since(&self, earlier: &Snapshot) -> CpuUse {
        let wall_s = match (self.at, earlier.at) {
            (Some(a), Some(b)) => a.duration_since(b).as_secs_f64(),
            _ => 0.0,
        };
        let stack_s =
            (self.front_cpu_s + self.back_cpu_s) - (earlier.front_cpu_s + earlier.back_cpu_s);
        let client_s = self.client_cpu_s - earlier.client_cpu_s;
        let machine_s = self.machine_busy_s - earlier.machine_busy_s;
        CpuUse {
            wall_s,
            front_s: self.front_cpu_s - earlier.front_cpu_s,
            stack_s,
            client_s,
            foreign_s: (machine_s - stack_s - client_s).max(0.0),
            irq_s: self.machine_irq_s - earlier.machine_irq_s,
            steal_s: self.machine_steal_s - earlier.machine_steal_s,
            procs: self
                .procs
                .iter()
                .map(|(pid, cpu)| ProcCpu {
                    pid: *pid,
                    name: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .map(|s| s.trim().to_owned())
                        .unwrap_or_default(),
                    cpu_s: cpu
                        - earlier
                            .procs
                            .iter()
                            .find(|(p, _)| p == pid)
                            .map_or(0.0, |(_, c)| *c),
                })
                .collect(),
        }
    }
}

/// Cost per million of `count`, in CPU seconds.
pub fn per_million(cpu_s: f64, count: u64) -> Option<f64> {
    (count > 0).then(|| cpu_s * 1e6 / count as f64)
}

/// This machine, for the report header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_gib: f64,
    pub kernel: String,
    pub nofile_limit: String,
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let nofile_limit = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .map(|l| {
                l.split_whitespace()
                    .skip(3)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_default();
        Self {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            mem_total_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            nofile_limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(rss_kib(pid).is_some_and(|r| r > 0));
        assert!(cpu_secs(&pid.to_string()).is_some());
        assert!(clock_ticks() > 0);
    }

    #[test]
    fn percentiles_in_ms() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.saturating_record(v * 1000);
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_ms - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.max_ms - 1000.0).abs() < 1.0, "{l:?}");
    }
}
