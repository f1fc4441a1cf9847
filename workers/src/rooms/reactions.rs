//! Reactions on messages: one field per (message, emoji, user) in the room's
//! reactions hash (`ReactionField`), so adding or removing is idempotent and
//! a change is announced once, as a `reaction` signal.

use std::collections::BTreeMap;

use deadpool_redis::redis;
use serde::Deserialize;
use serde_json::json;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::ids::RoomId;
use switchboard_shared::keys::RoomKeys;
use switchboard_shared::members::ReactionField;

use super::scripts::{self, React};
use super::{Rooms, access};
use crate::error::ServiceError;
use crate::service::{Caller, Outcome};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReactReq {
    room: String,
    seq: u64,
    emoji: String,
    #[serde(default)]
    remove: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReactionsReq {
    room: String,
    seq: u64,
}

/// Fields one `HSCAN` step asks for.
const SCAN_COUNT: u64 = 1000;

/// Reactions are short: an emoji or a short code like `thumbs_up`.
fn check_emoji(e: &str) -> Result<(), ServiceError> {
    if e.is_empty()
        || e.len() > 32
        || e.contains('|')
        || e.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ServiceError::bad_request(
            "`emoji` must be 1 to 32 bytes without whitespace or `|`",
        ));
    }
    Ok(())
}

impl Rooms {
    pub(super) async fn react(&self, c: &Caller, req: ReactReq) -> Result<Outcome, ServiceError> {
        let room = RoomId::parse(&req.room)?;
        check_emoji(&req.emoji)?;
        let k = RoomKeys::new(&c.tenant, &room);
        let field = ReactionField {
            seq: req.seq,
            emoji: req.emoji,
            user: c.user.clone(),
        };
        let mut r = self.conn().await?;
        let done = scripts::react(&mut r, &k, &c.conn_member(), &field, !req.remove).await?;
        drop(r);
        let changed = match done {
            React::Done { changed } => changed,
            React::NotMember => {
                return Err(ServiceError::client(
                    ErrorCode::NotMember,
                    format!("join room {room} first"),
                ));
            }
            React::NoMessage => {
                return Err(ServiceError::client(
                    ErrorCode::NotFound,
                    format!("no message {} in room {room}", field.seq),
                ));
            }
        };
        if changed {
            let data = json!({
                "room": room.as_str(), "seq": field.seq, "emoji": field.emoji,
                "user": c.user.as_str(), "added": !req.remove,
            });
            self.signal(&c.tenant, &room, Some(c.origin()), "reaction", &data)
                .await;
        }
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "seq": field.seq, "emoji": field.emoji, "changed": changed}),
        ))
    }

    pub(super) async fn reactions(
        &self,
        c: &Caller,
        req: ReactionsReq,
    ) -> Result<Outcome, ServiceError> {
        let room = RoomId::parse(&req.room)?;
        let k = RoomKeys::new(&c.tenant, &room);
        let mut r = self.conn().await?;
        access::check_readable(&mut r, c, &room).await?;
        let pattern = ReactionField::pattern_for_seq(req.seq);
        let mut cursor: u64 = 0;
        let mut by_emoji: BTreeMap<String, Vec<String>> = BTreeMap::new();
        loop {
            let (next, fields): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(&k.reactions)
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut r)
                .await?;
            for (f, _) in fields {
                match ReactionField::parse(&f) {
                    Some(rf) => by_emoji
                        .entry(rf.emoji)
                        .or_default()
                        .push(rf.user.as_str().to_owned()),
                    None => tracing::warn!(field = %f, "skipping a malformed reaction field"),
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let list: Vec<_> = by_emoji
            .into_iter()
            .map(|(emoji, mut users)| {
                users.sort();
                json!({"emoji": emoji, "count": users.len(), "users": users})
            })
            .collect();
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "seq": req.seq, "reactions": list}),
        ))
    }
}
