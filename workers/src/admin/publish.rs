//! Operator pushes and notifications.
//!
//! `Publish` sends the event `{"event": "admin", "data": {"scope": "room" |
//! "user" | "app", "room"?: id, "data": <data_json>}}`, unsequenced and not
//! stored (like a typing signal): to a room's members through the room
//! fan-out (`service::fanout`), to each connection of a user that presence
//! knows (`service::push`), or to a whole app on `sb.tenant.<app>`.
//! `SendNotification` goes through `sb.api.notifications.send`, the
//! notifications service's backend API, and returns its answer.

use bytes::Bytes;
use serde_json::{Value, json};
use switchboard_proto::admin::publish_request::Target;
use switchboard_proto::admin::{
    PublishRequest, PublishResponse, SendNotificationRequest, SendNotificationResponse,
};
use switchboard_proto::bus::Push;
use switchboard_shared::{bus, frames, subjects};
use tonic::Status;

use super::api::{AdminApi, app, invalid, room, unavailable, user};
use crate::service::{fanout, push};

/// The event name of an operator's push (docs/protocol.md).
pub const ADMIN_EVENT: &str = "admin";

/// Largest `data_json` / `request_json`.
const MAX_JSON: usize = 64 * 1024;

fn json_arg(field: &str, s: &str) -> Result<Value, Status> {
    if s.len() > MAX_JSON {
        return Err(invalid(field, format!("longer than {MAX_JSON} bytes")));
    }
    if s.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(s).map_err(|e| invalid(field, format!("not JSON: {e}")))
}

impl AdminApi {
    pub(super) async fn publish_(&self, req: PublishRequest) -> Result<PublishResponse, Status> {
        let tenant = app("app", &req.app)?;
        let data = json_arg("data_json", &req.data_json)?;
        let unsequenced = |frame: Bytes| Push {
            frame,
            ..Push::default()
        };
        match req.target {
            None => Err(invalid("target", "name a room, a user or app_wide")),
            Some(Target::Room(r)) => {
                let r = room("room", &r)?;
                self.room_exists(&tenant, &r).await?;
                let frame = frames::event(
                    ADMIN_EVENT,
                    &json!({"scope": "room", "room": r.as_str(), "data": data}),
                );
                let gws = fanout::room_gateways(&self.pool, &tenant, &r)
                    .await
                    .map_err(unavailable)?;
                fanout::to_gateways(&self.nats, &gws, &tenant, &r, &unsequenced(frame)).await;
                Ok(PublishResponse {
                    addressed: gws.len() as u64,
                })
            }
            Some(Target::User(u)) => {
                let u = user("user", &u)?;
                let conns = self.connections_of(&tenant, &u).await?;
                let frame = frames::event(ADMIN_EVENT, &json!({"scope": "user", "data": data}));
                for (c, _) in &conns {
                    push::frame_to_conn(&self.nats, c, frame.clone()).await;
                }
                Ok(PublishResponse {
                    addressed: conns.len() as u64,
                })
            }
            Some(Target::AppWide(false)) => Err(invalid("app_wide", "must be true when set")),
            Some(Target::AppWide(true)) => {
                let frame = frames::event(ADMIN_EVENT, &json!({"scope": "app", "data": data}));
                self.nats
                    .publish(subjects::tenant(&tenant), bus::encode(&unsequenced(frame)))
                    .await
                    .map_err(unavailable)?;
                Ok(PublishResponse { addressed: 0 })
            }
        }
    }

    pub(super) async fn send_notification_(
        &self,
        req: SendNotificationRequest,
    ) -> Result<SendNotificationResponse, Status> {
        let body = json_arg("request_json", &req.request_json)?;
        if !body.is_object() {
            return Err(invalid("request_json", "must be a JSON object"));
        }
        let payload = Bytes::from(body.to_string());
        let timeout = std::time::Duration::from_millis(self.cfg.gateway.request_timeout_ms);
        let asked = self
            .nats
            .request(subjects::NOTIFICATIONS_SEND.to_owned(), payload);
        let msg = match tokio::time::timeout(timeout, asked).await {
            Err(_) => {
                return Err(Status::unavailable(
                    "the notifications service did not answer",
                ));
            }
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                return Err(Status::unavailable(
                    "the notifications service is not running",
                ));
            }
            Ok(Err(e)) => return Err(unavailable(e)),
            Ok(Ok(m)) => m,
        };
        let reply: Value = serde_json::from_slice(&msg.payload)
            .map_err(|e| Status::internal(format!("the notifications service answered: {e}")))?;
        if reply.get("ok") == Some(&Value::Bool(true)) {
            return Ok(SendNotificationResponse {
                reply_json: reply.to_string(),
            });
        }
        let code = reply
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("internal");
        let message = reply
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("refused");
        let text = format!("{code}: {message}");
        Err(match code {
            "bad_request" => Status::invalid_argument(format!("request_json: {text}")),
            "not_found" => Status::not_found(text),
            "limit_exceeded" => Status::resource_exhausted(text),
            "unavailable" => Status::unavailable(text),
            _ => Status::internal(text),
        })
    }
}
