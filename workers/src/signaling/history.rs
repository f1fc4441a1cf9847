//! A user's call history (`keys::user_calls`, newest first, filed when a
//! call ends) and ratings: each party may rate an ended call once it is
//! over; ratings live in the call's hash beside it, one field per user.

use std::collections::HashMap;

use deadpool_redis::redis;
use serde::Deserialize;
use serde_json::json;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::ids::{CallId, UserId};
use switchboard_shared::keys;

use super::Signaling;
use super::calls::call_id;
use super::scripts::CallState;
use crate::error::ServiceError;
use crate::service::{Caller, Outcome};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryReq {
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RateReq {
    call: String,
    rating: u8,
    feedback: Option<String>,
}

/// The call-hash field holding `user`'s rating.
fn rating_field(user: &UserId) -> String {
    format!("rating:{user}")
}

/// The call-hash field holding `user`'s feedback text.
fn feedback_field(user: &UserId) -> String {
    format!("feedback:{user}")
}

impl Signaling {
    pub(super) async fn history(
        &self,
        c: &Caller,
        req: HistoryReq,
    ) -> Result<Outcome, ServiceError> {
        let limit = req.limit.unwrap_or(20).clamp(1, 100);
        let mut r = self.conn().await?;
        let ids: Vec<String> = redis::cmd("LRANGE")
            .arg(keys::user_calls(&c.tenant, &c.user))
            .arg(0)
            .arg(limit as isize - 1)
            .query_async(&mut r)
            .await?;
        let mut out = Vec::new();
        for id in ids {
            let Ok(call) = CallId::parse(&id) else {
                tracing::warn!(value = %id, "skipping a malformed call history entry");
                continue;
            };
            let f: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(keys::call(&c.tenant, &call))
                .query_async(&mut r)
                .await?;
            if f.is_empty() {
                continue;
            }
            let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
            let outgoing = f.get("caller").map(String::as_str) == Some(c.user.as_str());
            let with = if outgoing {
                f.get("callee")
            } else {
                f.get("caller")
            };
            let answered = num("answered_at");
            let duration = match (answered, num("ended_at")) {
                (Some(a), Some(e)) => e.saturating_sub(a),
                _ => 0,
            };
            out.push(json!({
                "call": id,
                "with": with,
                "direction": if outgoing { "outgoing" } else { "incoming" },
                "started_at": num("created_at"),
                "answered": answered.is_some(),
                "duration_ms": duration,
                "end_reason": f.get("end_reason"),
                "rating": f.get(&rating_field(&c.user)).and_then(|v| v.parse::<u8>().ok()),
                "feedback": f.get(&feedback_field(&c.user)),
            }));
        }
        Ok(Outcome::json(&json!({"calls": out})))
    }

    pub(super) async fn rate(&self, c: &Caller, req: RateReq) -> Result<Outcome, ServiceError> {
        let id = call_id(&req.call)?;
        if !(1..=5).contains(&req.rating) {
            return Err(ServiceError::bad_request("`rating` is 1 to 5"));
        }
        if req
            .feedback
            .as_ref()
            .is_some_and(|f| f.chars().count() > 1000)
        {
            return Err(ServiceError::bad_request(
                "`feedback` is at most 1000 characters",
            ));
        }
        let key = keys::call(&c.tenant, &id);
        let mut r = self.conn().await?;
        let (state, caller, callee): (Option<String>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(&key)
                .arg(&["state", "caller", "callee"])
                .query_async(&mut r)
                .await?;
        let me = Some(c.user.as_str());
        if state.is_none() || (caller.as_deref() != me && callee.as_deref() != me) {
            return Err(ServiceError::client(ErrorCode::NotFound, "no such call"));
        }
        if state.as_deref().and_then(CallState::parse) != Some(CallState::Ended) {
            return Err(ServiceError::client(
                ErrorCode::Conflict,
                "rate a call after it ends",
            ));
        }
        let mut pipe = redis::pipe();
        pipe.hset(&key, rating_field(&c.user), req.rating).ignore();
        if let Some(fb) = &req.feedback {
            pipe.hset(&key, feedback_field(&c.user), fb).ignore();
        }
        let () = pipe.query_async(&mut r).await?;
        Ok(Outcome::json(
            &json!({"call": id.as_str(), "rating": req.rating}),
        ))
    }
}
