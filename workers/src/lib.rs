//! Switchboard worker services. Each service is a module; each runs as a NATS
//! queue group named after it (`switchboard-workers rooms`), so replicas share
//! the load and any replica can serve any request: all state is in Redis.
#![forbid(unsafe_code)]

pub mod rooms;
pub mod service;

use std::sync::Arc;

use switchboard_shared::config::Config;
use switchboard_shared::{Shutdown, bus, redis};

/// The services this binary can run.
pub const SERVICES: &[&str] = &["rooms"];

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("unknown service {0:?} (known: {SERVICES:?})")]
    UnknownService(String),
    #[error("NATS subscription failed: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

/// Runs the named services until `shutdown` fires, then drains in-flight
/// requests and returns.
pub async fn run(cfg: Config, services: &[String], shutdown: Shutdown) -> Result<(), WorkerError> {
    for s in services {
        if !SERVICES.contains(&s.as_str()) {
            return Err(WorkerError::UnknownService(s.clone()));
        }
    }
    let nats = bus::connect(&cfg.nats, &format!("switchboard-workers[{}]", services.join(","))).await?;
    let pool = redis::connect(&cfg.redis).await?;
    let cfg = Arc::new(cfg);
    let mut tasks = Vec::new();
    for s in services {
        if s.as_str() == "rooms" {
            let svc = Arc::new(rooms::Rooms::new(nats.clone(), pool.clone(), cfg.rooms.clone()));
            tasks.push(tokio::spawn(service::serve(
                svc,
                nats.clone(),
                cfg.workers.concurrency,
                shutdown.clone(),
            )));
        }
    }
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => tracing::error!(error = %e, "service task failed"),
        }
    }
    // Make sure everything published on the way out reaches the server.
    let _ = nats.flush().await;
    Ok(())
}
