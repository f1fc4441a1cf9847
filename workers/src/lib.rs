//! Switchboard worker services. Each service is a module; each runs as a NATS
//! queue group named after it (`switchboard-workers rooms`), so replicas share
//! the load and any replica can serve any request: all state is in Redis.
#![forbid(unsafe_code)]

pub mod matchmaking;
pub mod notifications;
pub mod presence;
pub mod rooms;
pub mod service;
pub mod signaling;

use std::sync::Arc;
use std::time::Duration;

use switchboard_shared::config::Config;
use switchboard_shared::{Shutdown, bus, redis};

/// The services this binary can run.
pub const SERVICES: &[&str] = &[
    "rooms",
    "presence",
    "notifications",
    "signaling",
    "matchmaking",
];

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

/// Running services, ready to serve: every subscription is in place.
pub struct Running {
    nats: async_nats::Client,
    tasks: Vec<tokio::task::JoinHandle<Result<(), WorkerError>>>,
}

impl Running {
    /// Waits until the services stop (after `shutdown` fired).
    pub async fn wait(self) -> Result<(), WorkerError> {
        for t in self.tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => tracing::error!(error = %e, "service task failed"),
            }
        }
        // Make sure everything published on the way out reaches the server
        // (bounded: NATS may be gone already).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.nats.flush()).await;
        Ok(())
    }
}

/// Connects, subscribes the named services and starts serving; returns once
/// the subscriptions are confirmed by the NATS server.
pub async fn start(
    cfg: Config,
    services: &[String],
    shutdown: Shutdown,
) -> Result<Running, WorkerError> {
    for s in services {
        if !SERVICES.contains(&s.as_str()) {
            return Err(WorkerError::UnknownService(s.clone()));
        }
    }
    let nats = bus::connect(
        &cfg.nats,
        &format!("switchboard-workers[{}]", services.join(",")),
    )
    .await?;
    let pool = redis::connect(&cfg.redis).await?;
    let cfg = Arc::new(cfg);
    let mut tasks = Vec::new();
    for s in services {
        match s.as_str() {
            "rooms" => {
                let svc = Arc::new(rooms::Rooms::new(
                    nats.clone(),
                    pool.clone(),
                    cfg.rooms.clone(),
                ));
                let sweeper = svc.clone();
                tasks.push(every(
                    Duration::from_millis(500),
                    shutdown.clone(),
                    move || {
                        let svc = sweeper.clone();
                        async move { svc.expire_typing().await }
                    },
                ));
                let subs = service::subscribe(&nats, "rooms").await?;
                tasks.push(tokio::spawn(service::serve(
                    svc,
                    subs,
                    nats.clone(),
                    cfg.workers.concurrency,
                    shutdown.clone(),
                )));
            }
            "presence" => {
                let svc = Arc::new(presence::Presence::new(
                    nats.clone(),
                    pool.clone(),
                    cfg.presence.clone(),
                ));
                let reaper = svc.clone();
                tasks.push(every(
                    Duration::from_millis(cfg.presence.reap_interval_ms),
                    shutdown.clone(),
                    move || {
                        let svc = reaper.clone();
                        async move {
                            svc.reap_dead_gateways().await;
                        }
                    },
                ));
                let subs = service::subscribe(&nats, "presence").await?;
                tasks.push(tokio::spawn(service::serve(
                    svc,
                    subs,
                    nats.clone(),
                    cfg.workers.concurrency,
                    shutdown.clone(),
                )));
            }
            "notifications" => {
                let svc = Arc::new(notifications::Notifications::new(
                    nats.clone(),
                    pool.clone(),
                    cfg.notifications.clone(),
                ));
                let api = nats
                    .queue_subscribe(notifications::SEND_SUBJECT, "notifications".to_owned())
                    .await?;
                let api_svc = svc.clone();
                let api_shutdown = shutdown.clone();
                tasks.push(tokio::spawn(async move {
                    notifications::serve_api(api_svc, api, api_shutdown).await;
                    Ok(())
                }));
                let subs = service::subscribe(&nats, "notifications").await?;
                tasks.push(tokio::spawn(service::serve(
                    svc,
                    subs,
                    nats.clone(),
                    cfg.workers.concurrency,
                    shutdown.clone(),
                )));
            }
            "signaling" => {
                let svc = Arc::new(signaling::Signaling::new(
                    nats.clone(),
                    pool.clone(),
                    cfg.signaling.clone(),
                ));
                let sweeper = svc.clone();
                tasks.push(every(
                    Duration::from_millis(250),
                    shutdown.clone(),
                    move || {
                        let svc = sweeper.clone();
                        async move { svc.sweep().await }
                    },
                ));
                let subs = service::subscribe(&nats, "signaling").await?;
                tasks.push(tokio::spawn(service::serve(
                    svc,
                    subs,
                    nats.clone(),
                    cfg.workers.concurrency,
                    shutdown.clone(),
                )));
            }
            "matchmaking" => {
                let svc = Arc::new(matchmaking::Matchmaking::new(
                    nats.clone(),
                    pool.clone(),
                    cfg.matchmaking.clone(),
                ));
                let ticker = svc.clone();
                tasks.push(every(
                    Duration::from_millis(cfg.matchmaking.tick_ms),
                    shutdown.clone(),
                    move || {
                        let svc = ticker.clone();
                        async move { svc.tick().await }
                    },
                ));
                let subs = service::subscribe(&nats, "matchmaking").await?;
                tasks.push(tokio::spawn(service::serve(
                    svc,
                    subs,
                    nats.clone(),
                    cfg.workers.concurrency,
                    shutdown.clone(),
                )));
            }
            other => return Err(WorkerError::UnknownService(other.to_owned())),
        }
    }
    bus::sync(&nats).await?;
    Ok(Running { nats, tasks })
}

/// Runs `tick` every `period` until shutdown: the services' housekeeping.
fn every<F, Fut>(
    period: Duration,
    shutdown: Shutdown,
    mut tick: F,
) -> tokio::task::JoinHandle<Result<(), WorkerError>>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = interval.tick() => tick().await,
            }
        }
    })
}

/// Runs the named services until `shutdown` fires, then drains in-flight
/// requests and returns.
pub async fn run(cfg: Config, services: &[String], shutdown: Shutdown) -> Result<(), WorkerError> {
    start(cfg, services, shutdown).await?.wait().await
}
