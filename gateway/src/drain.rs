//! Spreading a drain over `gateway.drain_window_ms`.
//!
//! On shutdown every connection's writer waits for its turn, then closes
//! its in-flight table (new requests get `service_unavailable`), waits for
//! the replies of the requests already forwarded, and only then sends close
//! 1012. Turns are spread over the window so a gateway's clients do not all
//! reconnect in the same instant.
//!
//! A connection's turn is `frac(id / φ) × window`: a Weyl sequence over the
//! sequential connection ids, so any run of consecutive connections lands
//! evenly across the window (no two turns of n consecutive ids are closer
//! than about window / (2.6 n)), deterministically and without a snapshot of
//! the connection table.

use std::time::Duration;

/// 2^64 / φ: multiplying by it and keeping the low 64 bits is `frac(x / φ)`
/// in fixed point.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// When, after the shutdown signal, connection `conn` closes: in
/// `[0, window)`.
pub fn turn(conn: u64, window: Duration) -> Duration {
    let frac = u128::from(conn.wrapping_mul(GOLDEN));
    let window_us = window.as_micros();
    let us = (frac * window_us) >> 64;
    Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_fall_inside_the_window() {
        let w = Duration::from_millis(2_000);
        for id in [0, 1, 2, 1_000, u64::MAX] {
            assert!(turn(id, w) < w, "{id}");
        }
        assert_eq!(turn(7, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn consecutive_connections_are_spread_evenly() {
        let w = Duration::from_millis(1_000);
        for (first, n) in [(1u64, 10usize), (1, 100), (12_345, 20)] {
            let mut t: Vec<Duration> = (first..first + n as u64).map(|id| turn(id, w)).collect();
            t.sort();
            let span = t[n - 1] - t[0];
            assert!(span > w * 7 / 10, "{n} turns span {span:?}");
            let min_gap = t.windows(2).map(|p| p[1] - p[0]).min().unwrap_or_default();
            assert!(min_gap > w / (3 * n as u32), "{n} turns, gap {min_gap:?}");
        }
    }
}
