//! A user's status: what they chose (`presence.set`), what others see
//! (`presence.get`, the [`State`] views), and telling watchers and the
//! user's rooms about every change (`announce`).

use bytes::Bytes;
use deadpool_redis::redis;
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_proto::bus::Push;
use switchboard_shared::ids::{RoomId, TenantId, UserId};
use switchboard_shared::keys::UserKeys;
use switchboard_shared::{bus, frames, subjects};

use super::Presence;
use super::scripts::{self, TextChange};
use crate::error::{LogFailure, ServiceError};
use crate::service::{Caller, Outcome, fanout};

/// Statuses a user may choose.
const STATUSES: [&str; 4] = ["online", "away", "busy", "offline"];

/// A user's presence as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub status: String,
    pub text: String,
    pub last_seen: u64,
    pub ver: u64,
    pub online: bool,
}

impl State {
    /// What others see: offline when no device is connected or the user
    /// chose to appear offline.
    pub fn to_json(&self, user: &UserId) -> Value {
        let status = if self.online {
            self.status.as_str()
        } else {
            "offline"
        };
        json!({
            "user": user.as_str(),
            "status": status,
            "text": if self.text.is_empty() { Value::Null } else { Value::from(self.text.clone()) },
            "last_seen": if self.online && status != "offline" { Value::Null } else { Value::from(self.last_seen) },
            "ver": self.ver,
        })
    }

    /// What the user themself sees: the status they chose, even when
    /// appearing offline.
    pub fn to_own_json(&self, user: &UserId) -> Value {
        let mut data = self.to_json(user);
        data["status"] = Value::from(self.status.clone());
        data
    }

    /// The `presence` push others get.
    pub fn frame(&self, user: &UserId) -> Bytes {
        frames::event("presence", &self.to_json(user))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetReq {
    status: Option<String>,
    /// A string sets the text, `null` clears it, absent keeps it.
    #[serde(default, deserialize_with = "some_value")]
    text: Option<Value>,
}

fn some_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UsersReq {
    users: Vec<String>,
}

impl Presence {
    pub(super) async fn state(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<State, ServiceError> {
        let mut r = self.conn().await?;
        scripts::get(&mut r, &UserKeys::new(tenant, user)).await
    }

    /// Tells watchers and the user's rooms about a change. Nobody waits on
    /// this: failures are logged.
    pub(super) async fn announce(&self, tenant: &TenantId, user: &UserId, st: &State) {
        let frame = st.frame(user);
        let push = Push {
            frame: frame.clone(),
            seq: st.ver,
            ..Push::default()
        };
        self.nats
            .publish(subjects::presence(tenant, user), bus::encode(&push))
            .await
            .log_failure("publishing a presence change");
        let rooms = match self.user_rooms(tenant, user).await {
            Ok(rooms) => rooms,
            Err(e) => {
                tracing::warn!(error = %e, kind = ?e.kind(), "finding a user's rooms for a presence change failed");
                Vec::new()
            }
        };
        let room_push = Push {
            frame,
            ..Push::default()
        };
        for room in rooms {
            match RoomId::parse(&room) {
                Ok(room) => fanout::to_room(&self.nats, &self.pool, tenant, &room, &room_push)
                    .await
                    .log_failure("publishing a presence change to a room"),
                Err(_) => tracing::warn!(value = %room, "skipping a malformed room of a user"),
            }
        }
    }

    async fn user_rooms(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<Vec<String>, ServiceError> {
        let mut r = self.conn().await?;
        Ok(redis::cmd("SMEMBERS")
            .arg(UserKeys::new(tenant, user).rooms)
            .query_async(&mut r)
            .await?)
    }

    /// The users of a request, validated and bounded.
    pub(super) fn users(&self, req: &UsersReq) -> Result<Vec<UserId>, ServiceError> {
        if req.users.len() > self.cfg.max_users_per_request {
            return Err(ServiceError::bad_request(format!(
                "at most {} users per request",
                self.cfg.max_users_per_request
            )));
        }
        req.users.iter().map(|u| Ok(UserId::parse(u)?)).collect()
    }

    pub(super) async fn set(&self, c: &Caller, req: SetReq) -> Result<Outcome, ServiceError> {
        let status = match req.status.as_deref() {
            None => None,
            Some(s) if STATUSES.contains(&s) => Some(s),
            Some(s) => {
                return Err(ServiceError::bad_request(format!(
                    "unknown status {s:?}: use one of {STATUSES:?}"
                )));
            }
        };
        let text = match req.text {
            None => TextChange::Keep,
            Some(Value::Null) => TextChange::Clear,
            Some(Value::String(t)) if t.is_empty() => TextChange::Clear,
            Some(Value::String(t))
                if t.chars().count() <= self.cfg.max_text_chars && !t.contains('\0') =>
            {
                TextChange::Set(t)
            }
            Some(_) => {
                return Err(ServiceError::bad_request(format!(
                    "`text` must be a string of at most {} characters, or null",
                    self.cfg.max_text_chars
                )));
            }
        };
        let mut r = self.conn().await?;
        let st = scripts::set(&mut r, &UserKeys::new(&c.tenant, &c.user), status, &text)
            .await?
            .state;
        drop(r);
        self.announce(&c.tenant, &c.user, &st).await;
        Ok(Outcome::json(&st.to_own_json(&c.user)))
    }

    pub(super) async fn get(&self, c: &Caller, req: UsersReq) -> Result<Outcome, ServiceError> {
        let mut out = Vec::new();
        for u in self.users(&req)? {
            out.push(self.state(&c.tenant, &u).await?.to_json(&u));
        }
        Ok(Outcome::json(&json!({"users": out})))
    }
}
