//! Joining and leaving the queue (`matchmaking.join`, `matchmaking.leave`):
//! a user's one ticket per app, owned by the connection that joined; a new
//! ticket only while the app's queue is under `waiting_tickets_per_app`.

use deadpool_redis::redis;
use serde_json::json;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::keys::{MATCHMAKING_TENANTS, MatchmakingKeys};
use switchboard_shared::members::TicketOwner;
use switchboard_shared::now_ms;
use switchboard_shared::quotas::Quota;

use super::Matchmaking;
use super::scripts::{self, Joined, Left};
use super::status::estimate_wait_ms;
use super::ticket::{JoinReq, Ticket};
use crate::error::ServiceError;
use crate::service::conns::is_gone;
use crate::service::{Caller, Outcome};

/// A fresh ticket id (`t` + 20 base-32 characters).
fn new_ticket_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut rng = rand::rng();
    let mut s = String::with_capacity(21);
    s.push('t');
    for _ in 0..20 {
        s.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    s
}

fn connection_closed() -> ServiceError {
    ServiceError::client(ErrorCode::NotFound, "connection is closed")
}

impl Matchmaking {
    pub(super) async fn join(&self, c: &Caller, req: JoinReq) -> Result<Outcome, ServiceError> {
        let spec = req.validate()?;
        let k = MatchmakingKeys::new(&c.tenant);
        let now = now_ms();
        let t = Ticket {
            id: new_ticket_id(),
            user: c.user.to_string(),
            gw: c.gw.to_string(),
            conn: c.conn,
            at: now,
            exp: now.saturating_add(self.cfg.ticket_ttl_secs.max(1).saturating_mul(1000)),
            min: spec.min,
            max: spec.max,
            props: spec.props,
            required: spec.required,
            optional: spec.optional,
        };
        let owner = TicketOwner {
            gw: c.gw.clone(),
            conn: c.conn,
            user: c.user.clone(),
        };
        let stored = serde_json::to_string(&t)?;
        let mut r = self.conn().await?;
        // A request that arrives after its connection's disconnect was
        // processed changes nothing (it would replace the user's ticket
        // from another device). The check after the write below is the one
        // that makes the race with a disconnect safe.
        if is_gone(&mut r, &c.gw, c.conn).await? {
            return Err(connection_closed());
        }
        let max = self
            .quotas
            .limit(c.tenant.as_str(), Quota::WaitingTicketsPerApp);
        let Some(joined) = Joined::from_reply(
            scripts::JOIN
                .key(k.all().as_slice())
                .arg(&t.id)
                .arg(&t.user)
                .arg(owner.to_string())
                .arg(&stored)
                .arg(t.at)
                .arg(t.exp)
                .arg(max)
                .invoke_async(&mut r)
                .await?,
        )?
        else {
            return Err(ServiceError::limit(
                Quota::WaitingTicketsPerApp,
                max,
                "this app's matchmaking queue is full",
            ));
        };
        if self.undo_if_gone(&mut r, &c.tenant, &owner).await? {
            return Err(connection_closed());
        }
        let (stats,): (Vec<String>,) = redis::pipe()
            .sadd(MATCHMAKING_TENANTS, c.tenant.as_str())
            .ignore()
            .lrange(&k.stats, 0, -1)
            .query_async(&mut r)
            .await?;
        let position = joined.rank + 1;
        Ok(Outcome::json(&json!({
            "ticket": t.id,
            "position": position,
            "waiting": joined.waiting,
            "estimated_wait_ms": estimate_wait_ms(&stats, now, position),
            "expires_at": t.exp,
            "replaced": joined.replaced,
        })))
    }

    pub(super) async fn leave(&self, c: &Caller) -> Result<Outcome, ServiceError> {
        let k = MatchmakingKeys::new(&c.tenant);
        let mut r = self.conn().await?;
        let left = Left::from_reply(
            scripts::LEAVE
                .key(k.all().as_slice())
                .arg(c.user.as_str())
                .arg("")
                .invoke_async(&mut r)
                .await?,
        );
        Ok(Outcome::json(&json!({
            "left": left.ticket.is_some(),
            "ticket": left.ticket,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_ids_are_distinct() {
        let a = new_ticket_id();
        assert_eq!(a.len(), 21);
        assert_ne!(a, new_ticket_id());
    }
}
