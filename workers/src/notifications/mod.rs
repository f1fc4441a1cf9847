//! The `notifications` service: a per-user notification store with live
//! delivery. Trusted backends send on `sb.api.notifications.send` (JSON, see
//! docs/protocol.md); clients list, count, mark read and clear over
//! `notifications.*`.
//!
//! Invariants:
//! - A notification is stored for every recipient before any live push, so a
//!   gateway or worker crash never loses one; Redis is the only state.
//! - Live pushes go to the recipient's connections as this service knows
//!   them (from connection events) on their per-connection subjects; app-wide
//!   notifications go once to `sb.tenant.<app>`.
//! - On connect, a device gets the pending (unread) notifications oldest
//!   first, with the unread count. Delivery is at least once: clients dedupe
//!   by `id`.
//! - Per user: at most `notifications.per_user_cap`, oldest dropped first;
//!   each expires after its `ttl_secs` (default `notifications.ttl_secs`).

mod scripts;

use bytes::Bytes;
use deadpool_redis::redis;
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_proto::bus::{Push, Request};
use switchboard_shared::config::NotificationsConfig;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::ids::{GatewayId, RoomId, TenantId, UserId};
use switchboard_shared::keys::{self, RoomKeys, UserKeys};
use switchboard_shared::redis::Pool;
use switchboard_shared::{bus, now_ms, subjects};

use crate::error::ServiceError;
use crate::service::conns::mark_gone;
use crate::service::push::frame_to_conn;
use crate::service::{Caller, Outcome, Service, parse};
use switchboard_shared::conn_events::ConnLifecycle;
use switchboard_shared::frames;
use switchboard_shared::members::ConnMember;

const PRIORITIES: [&str; 3] = ["low", "normal", "high"];

pub struct Notifications {
    nats: async_nats::Client,
    pool: Pool,
    cfg: NotificationsConfig,
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListReq {
    #[serde(default)]
    order: Option<String>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdReq {
    id: Option<String>,
    #[serde(default)]
    all: bool,
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Script {
        script: "notifications",
        detail: e.to_string(),
    }
}

fn bad(msg: impl Into<String>) -> ServiceError {
    ServiceError::bad_request(msg)
}

fn user_keys(k: &UserKeys) -> [&str; 4] {
    [
        &k.notif_data,
        &k.notif_order,
        &k.notif_expiry,
        &k.notif_unread,
    ]
}

/// A fresh id that sorts by creation time.
fn new_id(now: u64) -> String {
    let r: u32 = rand::random();
    format!("n{now:013}{r:08x}")
}

fn valid_id(id: &str) -> bool {
    id.len() == 22 && id.starts_with('n') && id[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl Notifications {
    pub fn new(nats: async_nats::Client, pool: Pool, cfg: NotificationsConfig) -> Self {
        Self { nats, pool, cfg }
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, ServiceError> {
        self.pool.get().await.map_err(internal)
    }

    /// Pushes to every connection of a user this service knows of.
    async fn push_to_user(&self, tenant: &TenantId, user: &UserId, frame: Bytes) {
        let conns: Vec<String> = match self.conn().await {
            Ok(mut r) => redis::cmd("HKEYS")
                .arg(UserKeys::new(tenant, user).notif_conns)
                .query_async(&mut r)
                .await
                .unwrap_or_default(),
            Err(_) => return,
        };
        for member in conns {
            if let Some(to) = ConnMember::parse(&member) {
                frame_to_conn(&self.nats, &to, frame.clone()).await;
            }
        }
    }

    /// Validates and delivers a backend's send request.
    pub async fn send(&self, req: SendReq) -> Result<Value, ServiceError> {
        let tenant = TenantId::parse(&req.app)?;
        if req.kind.is_empty() || req.kind.len() > 64 {
            return Err(bad("`type` must be 1 to 64 bytes"));
        }
        if !PRIORITIES.contains(&req.priority.as_str()) {
            return Err(bad(format!("`priority` must be one of {PRIORITIES:?}")));
        }
        let content_len = serde_json::to_vec(&req.content).map_err(internal)?.len();
        if content_len > self.cfg.max_content_bytes {
            return Err(bad(format!(
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
        let stored = notification.to_string();

        let (users, app_wide) = match &req.to {
            Target::User(u) => (vec![UserId::parse(u)?], false),
            Target::Users(list) => {
                if list.is_empty() || list.len() > 1000 {
                    return Err(bad("`users` takes 1 to 1000 user ids"));
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
                    .arg(RoomKeys::new(&tenant, &room).users)
                    .query_async(&mut r)
                    .await
                    .map_err(internal)?;
                (
                    members
                        .iter()
                        .filter_map(|u| UserId::parse(u).ok())
                        .collect(),
                    false,
                )
            }
            Target::App(true) => {
                let mut r = self.conn().await?;
                let known: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(keys::tenant_users(&tenant))
                    .query_async(&mut r)
                    .await
                    .map_err(internal)?;
                (
                    known.iter().filter_map(|u| UserId::parse(u).ok()).collect(),
                    true,
                )
            }
            Target::App(false) => {
                return Err(bad("`to` needs a user, users, a room, or app: true"));
            }
        };

        let mut r = self.conn().await?;
        let mut unread_counts = Vec::with_capacity(users.len());
        for user in &users {
            let k = UserKeys::new(&tenant, user);
            let unread: u64 = scripts::STORE
                .key(user_keys(&k).as_slice())
                .arg(now)
                .arg(&id)
                .arg(&stored)
                .arg(now)
                .arg(now + ttl * 1000)
                .arg(self.cfg.per_user_cap.max(1))
                .invoke_async(&mut r)
                .await
                .map_err(internal)?;
            unread_counts.push(unread);
        }
        drop(r);

        if app_wide {
            let frame = json!({"event": "notification", "data": notification});
            let push = Push {
                frame: Bytes::from(frame.to_string()),
                ..Push::default()
            };
            let _ = self
                .nats
                .publish(subjects::tenant(&tenant), bus::encode(&push))
                .await;
        } else {
            for (user, unread) in users.iter().zip(unread_counts) {
                let mut data = notification.clone();
                data["unread"] = json!(unread);
                let frame = json!({"event": "notification", "data": data});
                self.push_to_user(&tenant, user, Bytes::from(frame.to_string()))
                    .await;
            }
        }
        Ok(json!({"id": id, "recipients": users.len()}))
    }

    /// Lists a user's notifications: `(items in order, unread count, total)`.
    async fn load(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<(Vec<(String, bool)>, usize), ServiceError> {
        let k = UserKeys::new(tenant, user);
        let mut r = self.conn().await?;
        let (ids, unread): (Vec<String>, Vec<String>) = scripts::LIST
            .key(user_keys(&k).as_slice())
            .arg(now_ms())
            .invoke_async(&mut r)
            .await
            .map_err(internal)?;
        let unread: std::collections::HashSet<String> = unread.into_iter().collect();
        let n = unread.len();
        Ok((
            ids.into_iter()
                .map(|id| {
                    let u = unread.contains(&id);
                    (id, u)
                })
                .collect(),
            n,
        ))
    }

    async fn bodies(
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
            .await
            .map_err(internal)?;
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

    async fn list(&self, c: &Caller, req: ListReq) -> Result<Outcome, ServiceError> {
        let limit = req.limit.unwrap_or(50).clamp(1, 200);
        let (mut items, unread) = self.load(&c.tenant, &c.user).await?;
        match req.order.as_deref() {
            None | Some("time") => {}
            Some("unread_first") => items.sort_by_key(|(_, u)| !*u), // stable: newest first within each
            Some(o) => {
                return Err(bad(format!(
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

    fn target(req: &IdReq) -> Result<String, ServiceError> {
        match (&req.id, req.all) {
            (Some(_), true) | (None, false) => Err(bad("give `id` or `all: true`")),
            (Some(id), false) if !valid_id(id) => Err(ServiceError::client(
                ErrorCode::InvalidId,
                "malformed notification id",
            )),
            (Some(id), false) => Ok(id.clone()),
            (None, true) => Ok(String::new()),
        }
    }

    async fn change(&self, c: &Caller, req: IdReq, clear: bool) -> Result<Outcome, ServiceError> {
        let id = Self::target(&req)?;
        let k = UserKeys::new(&c.tenant, &c.user);
        let script = if clear {
            &scripts::CLEAR
        } else {
            &scripts::MARK_READ
        };
        let mut r = self.conn().await?;
        let (changed, unread): (u64, u64) = script
            .key(user_keys(&k).as_slice())
            .arg(now_ms())
            .arg(&id)
            .invoke_async(&mut r)
            .await
            .map_err(internal)?;
        drop(r);
        if !clear && !id.is_empty() && changed == 0 {
            // Already read, or gone: say which.
            let (items, _) = self.load(&c.tenant, &c.user).await?;
            if !items.iter().any(|(i, _)| *i == id) {
                return Err(ServiceError::client(
                    ErrorCode::NotFound,
                    "no such notification",
                ));
            }
        }
        if clear && !id.is_empty() && changed == 0 {
            return Err(ServiceError::client(
                ErrorCode::NotFound,
                "no such notification",
            ));
        }
        let event = if clear {
            "notifications_cleared"
        } else {
            "notifications_read"
        };
        let what = if id.is_empty() {
            json!("all")
        } else {
            json!(id)
        };
        // Keep the user's other devices in step.
        let frame = json!({"event": event, "data": {"id": what, "unread": unread}});
        self.push_to_user(&c.tenant, &c.user, Bytes::from(frame.to_string()))
            .await;
        Ok(Outcome::json(
            &json!({"id": what, "changed": changed, "unread": unread}),
        ))
    }

    async fn connected(&self, gw: &GatewayId, conn: u64, tenant: &TenantId, user: &UserId) {
        let k = UserKeys::new(tenant, user);
        let member = ConnMember::new(gw, conn).to_string();
        let Ok(mut r) = self.conn().await else { return };
        let _: Result<(), _> = redis::pipe()
            .hset(&k.notif_conns, &member, now_ms())
            .ignore()
            .sadd(keys::tenant_users(tenant), user.as_str())
            .ignore()
            .query_async(&mut r)
            .await;
        let gone: bool = redis::cmd("EXISTS")
            .arg(keys::conn_gone(gw, conn))
            .query_async(&mut r)
            .await
            .unwrap_or(false);
        drop(r);
        if gone {
            self.disconnected(gw, conn, tenant, user).await;
            return;
        }
        // Pending (unread) ones, oldest first.
        let Ok((items, unread)) = self.load(tenant, user).await else {
            return;
        };
        let mut pending: Vec<(String, bool)> = items.into_iter().filter(|(_, u)| *u).collect();
        pending.reverse();
        let max = self.cfg.pending_on_connect as usize;
        let more = pending.len() > max;
        pending.truncate(max);
        let Ok(bodies) = self.bodies(tenant, user, &pending).await else {
            return;
        };
        let data = json!({"unread": unread, "items": bodies, "more": more});
        let to = ConnMember::new(gw, conn);
        frame_to_conn(&self.nats, &to, frames::event("notifications", &data)).await;
    }

    async fn disconnected(&self, gw: &GatewayId, conn: u64, tenant: &TenantId, user: &UserId) {
        let Ok(mut r) = self.conn().await else { return };
        let _: Result<(), _> = mark_gone(&mut redis::pipe(), gw, conn)
            .hdel(
                UserKeys::new(tenant, user).notif_conns,
                ConnMember::new(gw, conn).to_string(),
            )
            .ignore()
            .query_async(&mut r)
            .await;
    }
}

impl Service for Notifications {
    fn name(&self) -> &'static str {
        "notifications"
    }

    async fn handle(&self, op: &str, req: Request) -> Result<Outcome, ServiceError> {
        let c = Caller::from_request(&req)?;
        match op {
            "list" => self.list(&c, parse(&req)?).await,
            "unread" => {
                if !matches!(req.payload.as_ref(), b"" | b"null" | b"{}") {
                    return Err(bad("`notifications.unread` takes no data"));
                }
                let (_, unread) = self.load(&c.tenant, &c.user).await?;
                Ok(Outcome::json(&json!({"unread": unread})))
            }
            "mark_read" => self.change(&c, parse(&req)?, false).await,
            "clear" => self.change(&c, parse(&req)?, true).await,
            other => Err(ServiceError::client(
                ErrorCode::UnknownOp,
                format!("notifications has no op {other:?}"),
            )),
        }
    }

    async fn on_conn_event(&self, ev: ConnLifecycle) {
        match ev {
            ConnLifecycle::Connected(c) => self.connected(&c.gw, c.conn, &c.tenant, &c.user).await,
            ConnLifecycle::Disconnected(c) => {
                self.disconnected(&c.gw, c.conn, &c.tenant, &c.user).await
            }
            ConnLifecycle::Heartbeat { .. } => {}
        }
    }

    fn api_subjects(&self) -> &'static [&'static str] {
        &[subjects::NOTIFICATIONS_SEND]
    }

    /// The backend API (`sb.api.notifications.send`). Replies are JSON:
    /// `{"ok": true, "id": .., "recipients": n}` or `{"ok": false, "error": {..}}`.
    async fn handle_api(&self, _subject: &str, payload: Bytes) -> Bytes {
        let result = match serde_json::from_slice::<SendReq>(&payload) {
            Ok(req) => self.send(req).await,
            Err(e) => Err(bad(format!("invalid send request: {e}"))),
        };
        let body = match result {
            Ok(mut v) => {
                v["ok"] = json!(true);
                v
            }
            Err(e) => {
                if !matches!(e.kind(), crate::error::ErrorKind::Client(_)) {
                    tracing::error!(error = %e, "notifications: send failed");
                }
                let e = e.to_client();
                json!({"ok": false, "error": {"code": e.code.as_str(), "message": e.message}})
            }
        };
        Bytes::from(body.to_string())
    }
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
