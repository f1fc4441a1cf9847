//! Sending (the backend API, `sb.api.notifications.send`): validate, count
//! against the app's quota (`quota`), store for every recipient, then push
//! live. Storing comes first, so a crash between the two loses nothing: the
//! device gets it on its next connect.

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_shared::ids::{RoomId, TenantId, UserId};
use switchboard_shared::keys::{self, RoomKeys, UserKeys};
use switchboard_shared::{frames, now_ms, subjects};

use super::Notifications;
use super::scripts::{self, Stored};
use crate::error::{LogFailure, ServiceError};

use deadpool_redis::redis;
use switchboard_proto::bus::Push;
use switchboard_shared::bus;

const PRIORITIES: [&str; 3] = ["low", "normal", "high"];

/// A backend's send request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendReq {
    pub app: String,
    pub to: Target,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "normal")]
    pub priority: String,
    #[serde(default)]
    pub content: Value,
    pub ttl_secs: Option<u64>,
}

fn normal() -> String {
    "normal".into()
}

/// Who receives a notification.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Target {
    User(String),
    Users(Vec<String>),
    Room(String),
    /// Every user of the app who has connected before.
    App(bool),
}

/// A fresh notification id: `n`, the creation ms (13 digits), 8 random hex
/// digits. Ids are unique, not an order: the store keeps send order.
pub(super) fn new_id(now: u64) -> String {
    let r: u32 = rand::random();
    format!("n{now:013}{r:08x}")
}

/// Whether `id` has the shape of [`new_id`]'s ids.
pub(super) fn valid_id(id: &str) -> bool {
    id.len() == 22 && id.starts_with('n') && id[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl Notifications {
    /// Validates and delivers a backend's send request.
    pub async fn send(&self, req: SendReq) -> Result<Value, ServiceError> {
        let tenant = TenantId::parse(&req.app)?;
        if req.kind.is_empty() || req.kind.len() > 64 {
            return Err(ServiceError::bad_request("`type` must be 1 to 64 bytes"));
        }
        if !PRIORITIES.contains(&req.priority.as_str()) {
            return Err(ServiceError::bad_request(format!(
                "`priority` must be one of {PRIORITIES:?}"
            )));
        }
        let content_len = serde_json::to_vec(&req.content)?.len();
        if content_len > self.cfg.max_content_bytes {
            return Err(ServiceError::bad_request(format!(
                "`content` is larger than {} bytes",
                self.cfg.max_content_bytes
            )));
        }
        let ttl = req
            .ttl_secs
            .unwrap_or(self.cfg.ttl_secs)
            .clamp(1, 365 * 24 * 3600);
        let now = now_ms();
        let id = new_id(now);
        let notification = json!({
            "id": id, "type": req.kind, "priority": req.priority, "content": req.content,
            "created_at": now, "expires_at": now + ttl * 1000,
        });
        let (users, app_wide) = self.recipients(&tenant, &req.to).await?;
        let expires = now + ttl * 1000;
        self.count_sent(&tenant, expires, users.len() as u64, now)
            .await?;

        let stored = notification.to_string();
        let mut r = self.conn().await?;
        let mut unread_counts = Vec::with_capacity(users.len());
        let mut dropped = Vec::new();
        for user in &users {
            let k = UserKeys::new(&tenant, user);
            let s = Stored::from_reply(
                scripts::STORE
                    .key(scripts::keys(&k).as_slice())
                    .arg(now)
                    .arg(&id)
                    .arg(&stored)
                    .arg(now)
                    .arg(expires)
                    .arg(self.cfg.per_user_cap.max(1))
                    .invoke_async(&mut r)
                    .await?,
            );
            unread_counts.push(s.unread);
            dropped.extend(s.dropped);
        }
        drop(r);
        self.uncount(&tenant, &dropped, now).await;

        if app_wide {
            let push = Push {
                frame: frames::event("notification", &notification),
                ..Push::default()
            };
            self.nats
                .publish(subjects::tenant(&tenant), bus::encode(&push))
                .await
                .log_failure("notifications: app-wide push");
        } else {
            for (user, unread) in users.iter().zip(unread_counts) {
                let mut data = notification.clone();
                data["unread"] = json!(unread);
                self.push_to_user(&tenant, user, frames::event("notification", &data))
                    .await;
            }
        }
        Ok(json!({"id": id, "recipients": users.len()}))
    }

    /// The users a send reaches, and whether it is app-wide.
    async fn recipients(
        &self,
        tenant: &TenantId,
        to: &Target,
    ) -> Result<(Vec<UserId>, bool), ServiceError> {
        Ok(match to {
            Target::User(u) => (vec![UserId::parse(u)?], false),
            Target::Users(list) => {
                if list.is_empty() || list.len() > 1000 {
                    return Err(ServiceError::bad_request(
                        "`users` takes 1 to 1000 user ids",
                    ));
                }
                (
                    list.iter()
                        .map(|u| UserId::parse(u))
                        .collect::<Result<_, _>>()?,
                    false,
                )
            }
            Target::Room(room) => {
                let room = RoomId::parse(room)?;
                let mut r = self.conn().await?;
                let members: Vec<String> = redis::cmd("HKEYS")
                    .arg(RoomKeys::new(tenant, &room).users)
                    .query_async(&mut r)
                    .await?;
                (valid_users(members), false)
            }
            Target::App(true) => {
                let mut r = self.conn().await?;
                let known: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(keys::tenant_users(tenant))
                    .query_async(&mut r)
                    .await?;
                (valid_users(known), true)
            }
            Target::App(false) => {
                return Err(ServiceError::bad_request(
                    "`to` needs a user, users, a room, or app: true",
                ));
            }
        })
    }
}

/// The valid user ids among stored ones (an invalid one is logged, skipped).
fn valid_users(stored: Vec<String>) -> Vec<UserId> {
    stored
        .iter()
        .filter_map(|u| match UserId::parse(u) {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::warn!(error = %e, "notifications: invalid stored user id skipped");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_validate() {
        let a = new_id(1_000);
        let b = new_id(2_000);
        assert!(a < b);
        assert!(valid_id(&a));
        assert!(!valid_id("n1"));
        assert!(!valid_id("x0000000001000abcdef12"));
    }

    #[test]
    fn send_requests_parse() {
        let r: SendReq = serde_json::from_str(
            r#"{"app":"demo","to":{"user":"alice"},"type":"match","content":{"with":"bob"}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.priority, "normal");
        assert!(matches!(r.to, Target::User(ref u) if u == "alice"));
        assert!(
            serde_json::from_str::<SendReq>(r#"{"app":"demo","to":{"nobody":1},"type":"x"}"#)
                .is_err()
        );
    }
}
