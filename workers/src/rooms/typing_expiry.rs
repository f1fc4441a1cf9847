//! The typing-expiry sweeper: ends typing indicators whose deadline passed
//! without a `typing: false`. Run periodically by every replica; each entry
//! is claimed with `ZREM`, so exactly one replica announces it.

use deadpool_redis::redis;
use switchboard_shared::keys;
use switchboard_shared::members::TypingEntry;
use switchboard_shared::now_ms;

use super::Rooms;
use super::signals::claim_typing;
use crate::error::{LogFailure, ServiceError};

/// Most indicators one sweep ends; the rest wait for the next tick.
const SWEEP_BATCH: usize = 500;

impl Rooms {
    /// Ends typing indicators whose time is up.
    pub async fn expire_typing(&self) {
        self.sweep_typing().await.log_failure("typing sweep");
    }

    async fn sweep_typing(&self) -> Result<(), ServiceError> {
        let mut r = self.conn().await?;
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(keys::TYPING)
            .arg("-inf")
            .arg(now_ms())
            .arg("LIMIT")
            .arg(0)
            .arg(SWEEP_BATCH)
            .query_async(&mut r)
            .await?;
        for raw in due {
            if !claim_typing(&mut r, &raw).await? {
                continue;
            }
            match TypingEntry::parse(&raw) {
                Some(e) => self.typing_stopped(&e.tenant, &e.room, &e.user).await,
                None => tracing::warn!(entry = %raw, "dropped a malformed typing entry"),
            }
        }
        Ok(())
    }
}
