//! The matching tick (every `matchmaking.tick_ms`): for every app with
//! waiting tickets, one matching pass (load a window, propose groups in
//! memory, claim each group atomically, then make their rooms) and one
//! expiry sweep; and, when due, a round of position updates in the
//! background.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use deadpool_redis::redis;
use futures::StreamExt;
use switchboard_shared::ids::TenantId;
use switchboard_shared::keys::{MATCHMAKING_TENANTS, MatchmakingKeys};
use switchboard_shared::now_ms;

use super::Matchmaking;
use super::matcher;
use super::scripts::{self, Claim, Loaded};
use super::ticket::Ticket;
use crate::error::{LogFailure, ServiceError};

/// Room creations in flight at once per pass.
const ROOM_CONCURRENCY: usize = 128;

impl Matchmaking {
    /// One tick: matches and expires tickets of every app with waiting
    /// tickets, and starts a round of position updates when one is due.
    pub async fn tick(self: Arc<Self>) {
        let tenants = match self.tenants().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, kind = ?e.kind(), "matchmaking: listing apps failed");
                return;
            }
        };
        for t in &tenants {
            self.pass(t).await.log_failure("matchmaking: matching pass");
            self.expire(t)
                .await
                .log_failure("matchmaking: expiry sweep");
        }
        let now = now_ms();
        let last = self.last_status_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= self.cfg.status_interval_ms.max(1)
            && !self.status_running.swap(true, Ordering::AcqRel)
        {
            self.last_status_ms.store(now, Ordering::Relaxed);
            tokio::spawn(async move {
                for t in &tenants {
                    self.status_round(t)
                        .await
                        .log_failure("matchmaking: status round");
                }
                self.status_running.store(false, Ordering::Release);
            });
        }
    }

    /// Apps with (possibly) waiting tickets.
    async fn tenants(&self) -> Result<Vec<TenantId>, ServiceError> {
        let mut r = self.conn().await?;
        let raw: Vec<String> = redis::cmd("SMEMBERS")
            .arg(MATCHMAKING_TENANTS)
            .query_async(&mut r)
            .await?;
        Ok(raw
            .iter()
            .filter_map(|t| match TenantId::parse(t) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, app = %t, "matchmaking: invalid app id in the app set");
                    None
                }
            })
            .collect())
    }

    /// One matching pass over one app's queue.
    async fn pass(&self, tenant: &TenantId) -> Result<(), ServiceError> {
        let k = MatchmakingKeys::new(tenant);
        let mut r = self.conn().await?;
        let started = std::time::Instant::now();
        let now = now_ms();
        let window = self.cfg.max_tickets_per_pass.max(2);
        let loaded = Loaded::from_reply(
            scripts::LOAD
                .key(k.all().as_slice())
                .arg(now)
                .arg(window)
                .arg(rand::random_range(0..1_000_000u32))
                .invoke_async(&mut r)
                .await?,
        );
        if loaded.waiting == 0 {
            drop(r);
            return self.forget_if_empty(tenant, &k).await;
        }
        let mut tickets: Vec<Ticket> = loaded
            .tickets
            .iter()
            .filter_map(|s| match serde_json::from_str(s) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "matchmaking: unreadable ticket skipped");
                    None
                }
            })
            .collect();
        tickets.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
        tickets.dedup_by(|a, b| a.id == b.id);
        let loaded_in = started.elapsed();
        let groups = matcher::propose(&tickets, now, &self.cfg.relax_after_secs);
        let proposed_in = started.elapsed();
        if groups.is_empty() {
            return Ok(());
        }
        // One round trip claims every proposed group, each atomically.
        let mut pipe = redis::pipe();
        pipe.load_script(&scripts::CLAIM).ignore();
        let invocations: Vec<_> = groups
            .iter()
            .map(|g| {
                let mut inv = scripts::CLAIM.prepare_invoke();
                inv.key(k.all().as_slice()).arg(now);
                for &i in g {
                    inv.arg(&tickets[i].id).arg(&tickets[i].user);
                }
                inv
            })
            .collect();
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        let claims: Vec<i64> = pipe.query_async(&mut r).await?;
        drop(r);
        if claims.len() != groups.len() {
            return Err(ServiceError::script("CLAIM", claims));
        }
        let mut won: Vec<Vec<&Ticket>> = Vec::new();
        for (g, status) in groups.iter().zip(claims) {
            if Claim::from_reply(status)? == Claim::Claimed {
                won.push(g.iter().map(|&i| &tickets[i]).collect());
            }
        }
        let claimed_in = started.elapsed();
        futures::stream::iter(won.iter())
            .for_each_concurrent(ROOM_CONCURRENCY, |g| self.complete(tenant, &k, g))
            .await;
        tracing::debug!(
            tenant = %tenant, waiting = loaded.waiting, loaded = tickets.len(), proposed = groups.len(),
            matched = won.len(), ?loaded_in, ?proposed_in, ?claimed_in, total = ?started.elapsed(),
            "matchmaking pass"
        );
        Ok(())
    }

    /// Drops an app from the app set when its queue is empty. A join that
    /// races with this re-adds it (it adds after enqueueing; we re-check
    /// after removing).
    async fn forget_if_empty(
        &self,
        tenant: &TenantId,
        k: &MatchmakingKeys,
    ) -> Result<(), ServiceError> {
        let mut r = self.conn().await?;
        let () = redis::cmd("SREM")
            .arg(MATCHMAKING_TENANTS)
            .arg(tenant.as_str())
            .query_async(&mut r)
            .await?;
        let left: Result<u64, _> = redis::cmd("ZCARD").arg(&k.queue).query_async(&mut r).await;
        if let Err(e) = &left {
            tracing::warn!(error = %e, tenant = %tenant, "matchmaking: re-checking an empty queue failed; keeping the app");
        }
        if left.as_ref().map_or(true, |n| *n > 0) {
            let () = redis::cmd("SADD")
                .arg(MATCHMAKING_TENANTS)
                .arg(tenant.as_str())
                .query_async(&mut r)
                .await?;
        }
        Ok(())
    }
}
