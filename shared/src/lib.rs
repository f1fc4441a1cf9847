//! Everything the Switchboard binaries share: configuration, authentication,
//! id validation and the naming of NATS subjects and Redis keys, the bus
//! wrapper, the Redis pool, telemetry and the client-facing error codes.
//!
//! This crate depends on neither binary; both depend on it.
#![forbid(unsafe_code)]

pub mod auth;
pub mod bus;
pub mod config;
pub mod error;
pub mod ids;
pub mod keys;
pub mod redis;
pub mod subjects;
pub mod telemetry;

pub use tokio_util::sync::CancellationToken as Shutdown;

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
