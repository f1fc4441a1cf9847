//! Switchboard worker services. Each service is a module; each runs as a NATS
//! queue group named after it (`switchboard-workers rooms`), so replicas share
//! the load and any replica can serve any request: all state is in Redis.
//! The operator's admin gRPC API (`switchboard-workers admin`, [`admin`])
//! runs from the same binary but is no queue group: it listens on its own
//! port.
#![forbid(unsafe_code)]

pub mod admin;
pub mod error;
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

/// The admin gRPC API's process kind: not in [`SERVICES`] (and not in
/// `all`), since it is no queue group and listens on `admin.listen`.
pub const ADMIN: &str = "admin";

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
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
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
        if !SERVICES.contains(&s.as_str()) && s != ADMIN {
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
    let mut l = Launcher {
        nats: nats.clone(),
        concurrency: cfg.workers.concurrency,
        shutdown: shutdown.clone(),
        tasks: Vec::new(),
    };
    for s in services {
        match s.as_str() {
            "rooms" => {
                let svc = Arc::new(
                    rooms::Rooms::new(nats.clone(), pool.clone(), cfg.rooms.clone())
                        .with_quotas(cfg.quotas.clone()),
                );
                l.housekeeping(&svc, Duration::from_millis(500), |s| async move {
                    s.expire_typing().await
                });
                l.housekeeping(&svc, Duration::from_secs(1), |s| async move {
                    s.sweep_quotas().await
                });
                l.serve(svc).await?;
            }
            "presence" => {
                let svc = Arc::new(presence::Presence::new(
                    nats.clone(),
                    pool.clone(),
                    cfg.presence.clone(),
                    cfg.limits.clone(),
                ));
                l.housekeeping(
                    &svc,
                    Duration::from_millis(cfg.presence.reap_interval_ms),
                    |s| async move {
                        s.reap_dead_gateways().await;
                    },
                );
                l.serve(svc).await?;
            }
            "notifications" => {
                let svc = Arc::new(
                    notifications::Notifications::new(
                        nats.clone(),
                        pool.clone(),
                        cfg.notifications.clone(),
                    )
                    .with_quotas(cfg.quotas.clone()),
                );
                l.serve(svc).await?;
            }
            "signaling" => {
                let svc = Arc::new(signaling::Signaling::new(
                    nats.clone(),
                    pool.clone(),
                    cfg.signaling.clone(),
                ));
                l.housekeeping(&svc, Duration::from_millis(250), |s| async move {
                    s.sweep().await
                });
                l.serve(svc).await?;
            }
            "matchmaking" => {
                let svc = Arc::new(
                    matchmaking::Matchmaking::new(
                        nats.clone(),
                        pool.clone(),
                        cfg.matchmaking.clone(),
                    )
                    .with_quotas(cfg.quotas.clone()),
                );
                l.housekeeping(
                    &svc,
                    Duration::from_millis(cfg.matchmaking.tick_ms),
                    |s| async move { s.tick().await },
                );
                l.serve(svc).await?;
            }
            ADMIN => {
                let listener = admin::bind(&cfg).await?;
                l.tasks.push(tokio::spawn({
                    let serving = admin::serve(
                        cfg.clone(),
                        listener,
                        nats.clone(),
                        pool.clone(),
                        shutdown.clone(),
                    );
                    async move { Ok(serving.await?) }
                }));
            }
            other => return Err(WorkerError::UnknownService(other.to_owned())),
        }
    }
    let tasks = l.tasks;
    bus::sync(&nats).await?;
    Ok(Running { nats, tasks })
}

type Task = tokio::task::JoinHandle<Result<(), WorkerError>>;

/// Starts services and their housekeeping, collecting the tasks.
struct Launcher {
    nats: async_nats::Client,
    concurrency: usize,
    shutdown: Shutdown,
    tasks: Vec<Task>,
}

impl Launcher {
    /// Subscribes the service's queue group and serves it.
    async fn serve<S: service::Service>(&mut self, svc: Arc<S>) -> Result<(), WorkerError> {
        let subs = service::runner::subscribe(&self.nats, &*svc).await?;
        self.tasks.push(tokio::spawn(service::runner::serve(
            svc,
            subs,
            self.nats.clone(),
            self.concurrency,
            self.shutdown.clone(),
        )));
        Ok(())
    }

    /// Runs `tick` on the service every `period` until shutdown (sweepers,
    /// reapers, matching passes).
    fn housekeeping<S, F, Fut>(&mut self, svc: &Arc<S>, period: Duration, tick: F)
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<S>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let svc = svc.clone();
        let shutdown = self.shutdown.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = interval.tick() => tick(svc.clone()).await,
                }
            }
        }));
    }
}

/// Runs the named services until `shutdown` fires, then drains in-flight
/// requests and returns.
pub async fn run(cfg: Config, services: &[String], shutdown: Shutdown) -> Result<(), WorkerError> {
    start(cfg, services, shutdown).await?.wait().await
}
