//! Where a ticket stands: the `matchmaking.status` op, the `queue_status`
//! pushes every waiting ticket gets each `matchmaking.status_interval_ms`
//! (sent by one replica per app, holding a short Redis lease), and the wait
//! estimates both carry.

use deadpool_redis::redis;
use serde_json::json;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::ids::TenantId;
use switchboard_shared::keys::MatchmakingKeys;
use switchboard_shared::members::ConnMember;
use switchboard_shared::now_ms;

use super::Matchmaking;
use super::scripts::{self, TicketState, Waiting};
use super::ticket::Ticket;
use crate::error::ServiceError;
use crate::service::push::event_to_conn;
use crate::service::{Caller, Outcome};

/// Queue slice read per round trip when sending position updates.
const STATUS_PAGE: i64 = 2_000;

/// Match-rate window for wait estimates.
const RATE_WINDOW_MS: u64 = 60_000;

/// Estimated wait for the ticket at 1-based `position`, from how many
/// tickets this app matched per second over the last minute (counting at
/// least 10 s, so one early match does not promise the moon). `None` when
/// nothing was matched recently: there is no honest number to give.
/// `stats` are the `CLAIM` script's entries, `<ms> <tickets>`.
pub(super) fn estimate_wait_ms(stats: &[String], now: u64, position: u64) -> Option<u64> {
    let mut matched = 0u64;
    let mut oldest = now;
    for entry in stats {
        let mut it = entry.split(' ');
        let (Some(Ok(ts)), Some(Ok(n))) = (
            it.next().map(str::parse::<u64>),
            it.next().map(str::parse::<u64>),
        ) else {
            continue;
        };
        if ts + RATE_WINDOW_MS < now {
            continue;
        }
        matched += n;
        oldest = oldest.min(ts);
    }
    if matched == 0 {
        return None;
    }
    let span = now.saturating_sub(oldest).clamp(10_000, RATE_WINDOW_MS);
    Some(position.saturating_mul(span) / matched)
}

impl Matchmaking {
    /// `matchmaking.status`: the caller's waiting ticket.
    pub(super) async fn status(&self, c: &Caller) -> Result<Outcome, ServiceError> {
        let k = MatchmakingKeys::new(&c.tenant);
        let mut r = self.conn().await?;
        let state = TicketState::from_reply(
            scripts::STATUS
                .key(k.all().as_slice())
                .arg(c.user.as_str())
                .invoke_async(&mut r)
                .await?,
        )
        .ok_or_else(|| {
            ServiceError::client(ErrorCode::NotFound, "no ticket: join the queue first")
        })?;
        let t: Ticket = serde_json::from_str(&state.ticket)?;
        let now = now_ms();
        let position = state.rank + 1;
        Ok(Outcome::json(&json!({
            "ticket": state.id,
            "state": "waiting",
            "position": position,
            "waiting": state.waiting,
            "estimated_wait_ms": estimate_wait_ms(&state.stats, now, position),
            "waited_ms": now.saturating_sub(t.at),
            "relaxed": t.relaxed(now, &self.cfg.relax_after_secs),
            "enqueued_at": t.at,
            "expires_at": t.exp,
            "last_pass_at": state.last_pass,
            "min": t.min,
            "max": t.max,
            "props": t.props_json(),
            "query": t.query_json(),
        })))
    }

    /// Sends `queue_status` to every waiting ticket of one app, unless
    /// another replica holds this interval's lease.
    pub(super) async fn status_round(&self, tenant: &TenantId) -> Result<(), ServiceError> {
        let k = MatchmakingKeys::new(tenant);
        let mut r = self.conn().await?;
        let lease_ms = self
            .cfg
            .status_interval_ms
            .saturating_sub(self.cfg.tick_ms / 2)
            .max(1);
        let got: Option<String> = redis::cmd("SET")
            .arg(&k.status_lease)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(lease_ms)
            .query_async(&mut r)
            .await?;
        if got.is_none() {
            return Ok(());
        }
        let (waiting, stats): (u64, Vec<String>) = redis::pipe()
            .zcard(&k.queue)
            .lrange(&k.stats, 0, -1)
            .query_async(&mut r)
            .await?;
        let now = now_ms();
        let mut start: i64 = 0;
        while (start as u64) < waiting {
            let page = Waiting::from_reply(
                scripts::PAGE
                    .key(k.all().as_slice())
                    .arg(start)
                    .arg(start + STATUS_PAGE - 1)
                    .invoke_async(&mut r)
                    .await?,
            )?;
            if page.is_empty() {
                break;
            }
            for (i, w) in page.iter().enumerate() {
                let Some(owner) = &w.owner else { continue };
                let position = start as u64 + i as u64 + 1;
                let data = json!({
                    "ticket": w.id,
                    "position": position,
                    "waiting": waiting,
                    "estimated_wait_ms": estimate_wait_ms(&stats, now, position),
                });
                let to = ConnMember::new(&owner.gw, owner.conn);
                event_to_conn(&self.nats, &to, "queue_status", &data).await;
            }
            start += STATUS_PAGE;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_estimates_come_from_the_recent_match_rate() {
        let now = 1_000_000;
        assert_eq!(estimate_wait_ms(&[], now, 1), None);
        // Stale matches do not count.
        assert_eq!(estimate_wait_ms(&["1000 2".into()], now, 1), None);
        // 20 tickets over the last 20 s: one per second.
        let stats: Vec<String> = (0..10)
            .map(|i| format!("{} 2", now - 2_000 * i - 1_000))
            .collect();
        let e = estimate_wait_ms(&stats, now, 5).unwrap_or_default();
        assert!((4_000..=5_000).contains(&e), "{e}");
        // One fresh match counts over at least 10 s.
        assert_eq!(estimate_wait_ms(&[format!("{now} 2")], now, 1), Some(5_000));
        assert_eq!(estimate_wait_ms(&["garbage".into()], now, 1), None);
    }
}
