//! The operator's admin gRPC API (`switchboard.admin.v1.Admin`), run as
//! `switchboard-workers admin`. Not a queue-group service: it listens on
//! `admin.listen` and talks to gateways (control subjects, scatter-gather
//! on `sb.ctl.gw.all.<cmd>` bounded by `admin.deadline_ms`), to services
//! (their backend APIs) and reads Redis.
//!
//! Every `Admin` call needs a bearer token from `admin.tokens` ([`auth`]);
//! standard gRPC health and server reflection answer without one, for
//! probes and tools. TLS when `admin.tls_cert` and `admin.tls_key` are set.
//!
//! Codemap: [`auth`] tokens; [`gather`] asking every gateway; [`api`] the
//! service (argument checks, paging, error mapping, dispatch); [`gateways`]
//! list, kick, drain; [`stats`] cluster and matchmaking counts; [`users`]
//! a user's connections; [`rooms`] room info and members; [`publish`]
//! pushes and notifications.

pub mod api;
pub mod auth;
mod gateways;
pub mod gather;
mod publish;
mod rooms;
mod stats;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;

use switchboard_proto::admin::admin_server::AdminServer;
use switchboard_shared::Shutdown;
use switchboard_shared::config::Config;
use switchboard_shared::redis::Pool;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

pub use api::AdminApi;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Tls {
        path: String,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Binds `admin.listen`.
pub async fn bind(cfg: &Config) -> Result<TcpListener, AdminError> {
    let addr = cfg.admin.listen;
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })
}

/// Serves the admin API on `listener` until `shutdown` fires.
pub async fn serve(
    cfg: Arc<Config>,
    listener: TcpListener,
    nats: async_nats::Client,
    pool: Pool,
    shutdown: Shutdown,
) -> Result<(), AdminError> {
    let tokens = auth::Tokens::new(&cfg.admin.tokens);
    if tokens.is_empty() {
        tracing::warn!("admin.tokens is empty: every admin call is refused (set SB_ADMIN__TOKENS)");
    }
    let mut server = Server::builder();
    let tls = match (&cfg.admin.tls_cert, &cfg.admin.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|source| AdminError::Tls {
                    path: p.display().to_string(),
                    source,
                })
            };
            let identity = Identity::from_pem(read(cert)?, read(key)?);
            server = server.tls_config(ServerTlsConfig::new().identity(identity))?;
            true
        }
        _ => false,
    };
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<AdminServer<AdminApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(switchboard_proto::admin::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let api = AdminApi::new(cfg.clone(), nats, pool);
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, tls, "admin API listening");
    server
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(AdminServer::with_interceptor(api, tokens))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown.cancelled_owned())
        .await?;
    tracing::info!("admin API stopped");
    Ok(())
}
