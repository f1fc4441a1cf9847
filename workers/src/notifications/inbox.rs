//! A user's inbox, for clients: `notifications.list`, `.unread`,
//! `.mark_read` and `.clear`. Changes are pushed to the user's other
//! devices (`notifications_read`, `notifications_cleared`) so they stay in
//! step.

use deadpool_redis::redis;
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_shared::error::ErrorCode;
use switchboard_shared::ids::{TenantId, UserId};
use switchboard_shared::keys::UserKeys;
use switchboard_shared::{frames, now_ms};

use super::Notifications;
use super::scripts::{self, Changed, Listed};
use super::send::valid_id;
use crate::error::ServiceError;
use crate::service::{Caller, Outcome};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListReq {
    #[serde(default)]
    order: Option<String>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IdReq {
    id: Option<String>,
    #[serde(default)]
    all: bool,
}

/// What `mark_read` / `clear` act on.
enum Which {
    One(String),
    All,
}

impl IdReq {
    fn which(&self) -> Result<Which, ServiceError> {
        match (&self.id, self.all) {
            (Some(_), true) | (None, false) => {
                Err(ServiceError::bad_request("give `id` or `all: true`"))
            }
            (Some(id), false) if !valid_id(id) => Err(ServiceError::client(
                ErrorCode::InvalidId,
                "malformed notification id",
            )),
            (Some(id), false) => Ok(Which::One(id.clone())),
            (None, true) => Ok(Which::All),
        }
    }
}

fn no_such_notification() -> ServiceError {
    ServiceError::client(ErrorCode::NotFound, "no such notification")
}

impl Notifications {
    /// A user's notifications, newest first, with which are unread.
    pub(super) async fn load(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<Listed, ServiceError> {
        let k = UserKeys::new(tenant, user);
        let mut r = self.conn().await?;
        Ok(Listed::from_reply(
            scripts::LIST
                .key(scripts::keys(&k).as_slice())
                .arg(now_ms())
                .invoke_async(&mut r)
                .await?,
        ))
    }

    /// The stored notifications of `page` (in its order), each with `read`.
    pub(super) async fn bodies(
        &self,
        tenant: &TenantId,
        user: &UserId,
        page: &[(String, bool)],
    ) -> Result<Vec<Value>, ServiceError> {
        if page.is_empty() {
            return Ok(Vec::new());
        }
        let k = UserKeys::new(tenant, user);
        let mut r = self.conn().await?;
        let ids: Vec<&str> = page.iter().map(|(id, _)| id.as_str()).collect();
        let raw: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&k.notif_data)
            .arg(&ids)
            .query_async(&mut r)
            .await?;
        Ok(raw
            .into_iter()
            .zip(page)
            .filter_map(|(body, (_, unread))| {
                let mut v: Value = serde_json::from_str(&body?).ok()?;
                v["read"] = json!(!unread);
                Some(v)
            })
            .collect())
    }

    pub(super) async fn list(&self, c: &Caller, req: ListReq) -> Result<Outcome, ServiceError> {
        let limit = req.limit.unwrap_or(50).clamp(1, 200);
        let Listed { mut items, unread } = self.load(&c.tenant, &c.user).await?;
        match req.order.as_deref() {
            None | Some("time") => {}
            Some("unread_first") => items.sort_by_key(|(_, u)| !*u), // stable: newest first within each
            Some(o) => {
                return Err(ServiceError::bad_request(format!(
                    "unknown order {o:?}: use \"time\" or \"unread_first\""
                )));
            }
        }
        let total = items.len();
        let page: Vec<(String, bool)> = items.into_iter().skip(req.offset).take(limit).collect();
        let more = req.offset + page.len() < total;
        let bodies = self.bodies(&c.tenant, &c.user, &page).await?;
        Ok(Outcome::json(
            &json!({"items": bodies, "unread": unread, "total": total, "more": more}),
        ))
    }

    pub(super) async fn unread(&self, c: &Caller) -> Result<Outcome, ServiceError> {
        let listed = self.load(&c.tenant, &c.user).await?;
        Ok(Outcome::json(&json!({"unread": listed.unread})))
    }

    /// `mark_read` (`clear == false`) or `clear`.
    pub(super) async fn change(
        &self,
        c: &Caller,
        req: IdReq,
        clear: bool,
    ) -> Result<Outcome, ServiceError> {
        let which = req.which()?;
        let id = match &which {
            Which::One(id) => id.as_str(),
            Which::All => "",
        };
        let k = UserKeys::new(&c.tenant, &c.user);
        let script = if clear {
            &scripts::CLEAR
        } else {
            &scripts::MARK_READ
        };
        let mut r = self.conn().await?;
        let now = now_ms();
        let done = Changed::from_reply(
            script
                .key(scripts::keys(&k).as_slice())
                .arg(now)
                .arg(id)
                .invoke_async(&mut r)
                .await?,
        );
        drop(r);
        self.uncount(&c.tenant, &done.removed, now).await;
        if let Which::One(id) = &which
            && done.changed == 0
        {
            // Cleared: nothing was there. Marked read: already read, or
            // not there at all: say which.
            if clear || !self.load(&c.tenant, &c.user).await?.contains(id) {
                return Err(no_such_notification());
            }
        }
        let event = if clear {
            "notifications_cleared"
        } else {
            "notifications_read"
        };
        let what = match &which {
            Which::One(id) => json!(id),
            Which::All => json!("all"),
        };
        // Keep the user's other devices in step.
        let data = json!({"id": what, "unread": done.unread});
        self.push_to_user(&c.tenant, &c.user, frames::event(event, &data))
            .await;
        Ok(Outcome::json(
            &json!({"id": what, "changed": done.changed, "unread": done.unread}),
        ))
    }
}
