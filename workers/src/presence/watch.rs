//! Watch lists: `presence.subscribe` answers a snapshot and attaches the
//! connection to each user's `LATEST` feed (`sb.presence.<t>.<u>`, seq =
//! the user's `ver`); `presence.unsubscribe` detaches it.

use serde_json::json;
use switchboard_proto::bus::{FeedMode, Interest};
use switchboard_shared::subjects;

use super::Presence;
use super::status::UsersReq;
use crate::error::ServiceError;
use crate::service::{Caller, Outcome};

impl Presence {
    pub(super) async fn subscribe(
        &self,
        c: &Caller,
        req: UsersReq,
    ) -> Result<Outcome, ServiceError> {
        let mut out = Outcome::default();
        let mut list = Vec::new();
        for u in self.users(&req)? {
            let st = self.state(&c.tenant, &u).await?;
            list.push(st.to_json(&u));
            out.attach.push(Interest {
                subject: subjects::presence(&c.tenant, &u),
                after_seq: st.ver,
                recover_subject: subjects::service_op("presence", subjects::REPLAY_OP),
                key: u.to_string(),
                mode: FeedMode::Latest as i32,
            });
        }
        out.data = serde_json::to_vec(&json!({"users": list}))?;
        Ok(out)
    }

    pub(super) async fn unsubscribe(
        &self,
        c: &Caller,
        req: UsersReq,
    ) -> Result<Outcome, ServiceError> {
        let users = self.users(&req)?;
        let mut out = Outcome::json(&json!({"users": users.len()}));
        out.detach = users
            .iter()
            .map(|u| subjects::presence(&c.tenant, u))
            .collect();
        Ok(out)
    }
}
