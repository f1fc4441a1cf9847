//! A claimed group's room: asked of the rooms service
//! (`sb.svc.rooms._create_for`, a private room admitting exactly the
//! group's users), then announced to each member with `match_found`. When
//! the room cannot be made, the group's tickets go back to the queue (unless
//! their user joined again or their connection closed meanwhile).

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard_proto::bus::{Reply, Request};
use switchboard_shared::ids::{RoomId, TenantId};
use switchboard_shared::keys::MatchmakingKeys;
use switchboard_shared::{bus, subjects};

use super::Matchmaking;
use super::scripts::{self, Requeued};
use super::ticket::Ticket;
use crate::error::{LogFailure, ServiceError};
use crate::service::push::event_to_conn;

/// How long to wait for the rooms service.
const ROOM_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a matched group got no room.
#[derive(Debug, thiserror::Error)]
enum RoomError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(#[from] async_nats::RequestError),
    #[error("malformed reply: {0}")]
    Decode(#[from] bus::BusError),
    #[error("refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("reply has no valid room id")]
    NoRoom,
}

impl From<RoomError> for ServiceError {
    fn from(e: RoomError) -> Self {
        Self::Upstream {
            service: "rooms",
            detail: e.to_string(),
        }
    }
}

/// The `rooms._create_for` request data.
#[derive(Serialize)]
struct CreateFor<'a> {
    members: Vec<&'a str>,
    max_members: usize,
}

/// The part of the `rooms._create_for` reply data we need.
#[derive(Deserialize)]
struct Created {
    room: String,
}

impl Matchmaking {
    /// Makes the room for a claimed group and tells its members; puts the
    /// tickets back when the room cannot be made.
    pub(super) async fn complete(&self, tenant: &TenantId, k: &MatchmakingKeys, group: &[&Ticket]) {
        let room = match self.create_room(tenant, group).await {
            Ok(room) => room,
            Err(e) => {
                tracing::warn!(error = %e, tenant = %tenant, "matchmaking: no room for a match; requeueing");
                self.requeue(tenant, k, group)
                    .await
                    .log_failure("matchmaking: requeueing a match without a room");
                return;
            }
        };
        for me in group {
            let Some(to) = me.conn_member() else {
                tracing::warn!(ticket = %me.id, "matchmaking: matched ticket without a valid connection");
                continue;
            };
            let peers: Vec<_> = group
                .iter()
                .filter(|p| p.id != me.id)
                .map(|p| json!({"user": p.user, "props": p.props_json()}))
                .collect();
            let data = json!({"ticket": me.id, "room": room.as_str(), "peers": peers});
            event_to_conn(&self.nats, &to, "match_found", &data).await;
        }
    }

    async fn create_room(
        &self,
        tenant: &TenantId,
        group: &[&Ticket],
    ) -> Result<RoomId, ServiceError> {
        let payload = CreateFor {
            members: group.iter().map(|t| t.user.as_str()).collect(),
            max_members: group.len(),
        };
        let req = Request {
            tenant: tenant.to_string(),
            op: "_create_for".into(),
            payload: Bytes::from(serde_json::to_vec(&payload)?),
            ..Request::default()
        };
        let msg = tokio::time::timeout(
            ROOM_TIMEOUT,
            self.nats.request(
                subjects::service_op("rooms", "_create_for"),
                bus::encode(&req),
            ),
        )
        .await
        .map_err(|_| RoomError::Timeout(ROOM_TIMEOUT))?
        .map_err(RoomError::from)?;
        let reply: Reply = bus::decode(&msg.payload).map_err(RoomError::from)?;
        if !reply.ok {
            let e = reply.error.unwrap_or_default();
            return Err(RoomError::Refused {
                code: e.code,
                message: e.message,
            }
            .into());
        }
        let created: Created =
            serde_json::from_slice(&reply.data).map_err(|_| RoomError::NoRoom)?;
        Ok(RoomId::parse(&created.room).map_err(|_| RoomError::NoRoom)?)
    }

    /// Puts a claimed group's tickets back in the queue. A ticket whose
    /// connection closed meanwhile is removed again right after (see
    /// `conns.rs`).
    async fn requeue(
        &self,
        tenant: &TenantId,
        k: &MatchmakingKeys,
        group: &[&Ticket],
    ) -> Result<(), ServiceError> {
        let mut owned = Vec::with_capacity(group.len());
        for t in group {
            match t.owner() {
                Some(o) => owned.push((*t, o)),
                None => {
                    tracing::warn!(ticket = %t.id, "matchmaking: ticket without a valid owner not requeued")
                }
            }
        }
        if owned.is_empty() {
            return Ok(());
        }
        let mut inv = scripts::REQUEUE.prepare_invoke();
        inv.key(k.all().as_slice());
        for (t, owner) in &owned {
            inv.arg(&t.id)
                .arg(&t.user)
                .arg(owner.to_string())
                .arg(serde_json::to_string(t)?)
                .arg(t.at)
                .arg(t.exp);
        }
        let mut r = self.conn().await?;
        let requeued = Requeued::from_reply(inv.invoke_async(&mut r).await?);
        for (t, owner) in &owned {
            if requeued.ids.contains(&t.id) {
                self.undo_if_gone(&mut r, tenant, owner)
                    .await
                    .log_failure("matchmaking: checking a requeued ticket's connection");
            }
        }
        Ok(())
    }
}
