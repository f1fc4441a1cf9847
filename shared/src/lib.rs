//! Everything the Switchboard binaries share: configuration, authentication,
//! id validation and the naming of NATS subjects and Redis keys, the bus
//! wrapper, the Redis pool, telemetry, the client-facing error codes and
//! the quotas.
//!
//! This crate depends on neither binary; both depend on it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod bus;
pub mod config;
pub mod conn_events;
pub mod error;
pub mod frames;
pub mod ids;
pub mod keys;
pub mod limits;
pub mod members;
pub mod quotas;
pub mod redis;
pub mod subjects;
pub mod telemetry;

pub use tokio_util::sync::CancellationToken as Shutdown;

/// A [`Shutdown`] signal that fires on SIGINT (Ctrl-C) or SIGTERM: what each
/// binary's `main` hands to the code it runs. Call it inside the runtime.
pub fn shutdown_on_signal() -> Shutdown {
    let shutdown = Shutdown::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        termination_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    shutdown
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

/// Sleeps until `deadline`, or forever when there is none: a `select!`
/// branch for an optional timer.
pub async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
