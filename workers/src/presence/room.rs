//! Presence of a room's members (`presence.room`), for whoever may read the
//! room (`rooms::access`). Members also receive `presence` pushes on the
//! room feed whenever one of them changes (`status.rs`).

use deadpool_redis::redis;
use serde::Deserialize;
use serde_json::json;
use switchboard_shared::ids::{RoomId, UserId};
use switchboard_shared::keys::RoomKeys;

use super::Presence;
use crate::error::ServiceError;
use crate::rooms::access::RoomView;
use crate::service::{Caller, Outcome};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoomReq {
    room: String,
}

impl Presence {
    pub(super) async fn room(&self, c: &Caller, req: RoomReq) -> Result<Outcome, ServiceError> {
        let room = RoomId::parse(&req.room)?;
        let k = RoomKeys::new(&c.tenant, &room);
        let mut r = self.conn().await?;
        let (private, member, users): (Option<String>, bool, Vec<String>) =
            RoomView::query(&mut redis::pipe(), &k, c)
                .hkeys(&k.users)
                .query_async(&mut r)
                .await?;
        drop(r);
        RoomView::from_reply(private, member).check_readable(c, &room)?;
        let mut list = Vec::new();
        for u in users {
            match UserId::parse(&u) {
                Ok(u) => list.push(self.state(&c.tenant, &u).await?.to_json(&u)),
                Err(_) => {
                    tracing::warn!(value = %u, room = %room, "skipping a malformed room member")
                }
            }
        }
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "members": list}),
        ))
    }
}
