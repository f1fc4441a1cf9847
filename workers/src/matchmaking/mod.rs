//! The `matchmaking` service (placeholder until it is written).

use switchboard_proto::bus::{ConnEvent, ReplayBatch, ReplayRequest, Request};
use switchboard_shared::config::MatchmakingConfig;
use switchboard_shared::error::{ClientError, ErrorCode};
use switchboard_shared::redis::Pool;

use crate::service::{Outcome, Service};

pub struct Matchmaking {
    #[allow(dead_code)]
    nats: async_nats::Client,
    #[allow(dead_code)]
    pool: Pool,
    #[allow(dead_code)]
    cfg: MatchmakingConfig,
}

impl Matchmaking {
    pub fn new(nats: async_nats::Client, pool: Pool, cfg: MatchmakingConfig) -> Self {
        Self { nats, pool, cfg }
    }

    /// One matching pass (called every `matchmaking.tick_ms`).
    pub async fn tick(&self) {}
}

impl Service for Matchmaking {
    fn name(&self) -> &'static str {
        "matchmaking"
    }

    async fn handle(&self, op: &str, _req: Request) -> Result<Outcome, ClientError> {
        Err(ClientError::new(
            ErrorCode::UnknownOp,
            format!("matchmaking has no op {op:?}"),
        ))
    }

    async fn replay(&self, _req: ReplayRequest) -> Result<ReplayBatch, ClientError> {
        Err(ClientError::new(
            ErrorCode::UnknownOp,
            "matchmaking has no feeds",
        ))
    }

    async fn on_conn_event(&self, _ev: ConnEvent) {}
}
