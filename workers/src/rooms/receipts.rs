//! Receipts: each user's delivered and read markers in a room, and unread
//! counts (`head_seq − read`). Markers only move forward and never past the
//! head; `read` implies `delivered`; publishing moves the sender's own read
//! marker. A marker that moved is announced as a `receipt` signal.

use std::collections::{BTreeSet, HashMap};

use deadpool_redis::redis;
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::ids::RoomId;
use switchboard_shared::keys::{RoomKeys, UserKeys};

use super::lifecycle::RoomReq;
use super::scripts::{self, Mark};
use super::{Rooms, access};
use crate::error::ServiceError;
use crate::service::{Caller, Outcome};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MarkReq {
    room: String,
    delivered: Option<u64>,
    read: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UnreadReq {
    rooms: Option<Vec<String>>,
}

/// A user's markers: the `mark` reply and the `receipt` push.
#[derive(Serialize)]
struct Receipt<'a> {
    room: &'a str,
    user: &'a str,
    delivered: u64,
    read: u64,
}

/// Most rooms one `unread` request may name.
const MAX_UNREAD_ROOMS: usize = 200;

impl Rooms {
    pub(super) async fn mark(&self, c: &Caller, req: MarkReq) -> Result<Outcome, ServiceError> {
        let room = RoomId::parse(&req.room)?;
        if req.delivered.is_none() && req.read.is_none() {
            return Err(ServiceError::bad_request("give `delivered` and/or `read`"));
        }
        let k = RoomKeys::new(&c.tenant, &room);
        let mut r = self.conn().await?;
        let marked = scripts::mark(
            &mut r,
            &k,
            &c.conn_member(),
            &c.user,
            req.delivered,
            req.read,
        )
        .await?;
        drop(r);
        let (delivered, read, changed) = match marked {
            Mark::Marked {
                delivered,
                read,
                changed,
            } => (delivered, read, changed),
            Mark::NotMember => {
                return Err(ServiceError::client(
                    ErrorCode::NotMember,
                    format!("join room {room} first"),
                ));
            }
        };
        let data = Receipt {
            room: room.as_str(),
            user: c.user.as_str(),
            delivered,
            read,
        };
        if changed {
            self.signal(&c.tenant, &room, Some(c.origin()), "receipt", &data)
                .await;
        }
        Ok(Outcome::json(&serde_json::to_value(&data)?))
    }

    pub(super) async fn markers(&self, c: &Caller, req: RoomReq) -> Result<Outcome, ServiceError> {
        let room = RoomId::parse(&req.room)?;
        let k = RoomKeys::new(&c.tenant, &room);
        let mut r = self.conn().await?;
        access::check_readable(&mut r, c, &room).await?;
        type Markers = HashMap<String, u64>;
        let (read, delivered, head): (Markers, Markers, Option<u64>) = redis::pipe()
            .hgetall(&k.read)
            .hgetall(&k.delivered)
            .hget(&k.meta, "seq")
            .query_async(&mut r)
            .await?;
        let mut users: BTreeSet<&String> = read.keys().collect();
        users.extend(delivered.keys());
        let list: Vec<_> = users
            .into_iter()
            .map(|u| {
                let d = delivered.get(u).copied().unwrap_or(0);
                let rd = read.get(u).copied().unwrap_or(0);
                json!({"user": u, "delivered": d.max(rd), "read": rd})
            })
            .collect();
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "head_seq": head.unwrap_or(0), "markers": list}),
        ))
    }

    pub(super) async fn unread(&self, c: &Caller, req: UnreadReq) -> Result<Outcome, ServiceError> {
        let mut r = self.conn().await?;
        let rooms: Vec<String> = match req.rooms {
            Some(v) if v.len() > MAX_UNREAD_ROOMS => {
                return Err(ServiceError::bad_request(format!(
                    "at most {MAX_UNREAD_ROOMS} rooms"
                )));
            }
            Some(v) => v,
            None => {
                redis::cmd("SMEMBERS")
                    .arg(UserKeys::new(&c.tenant, &c.user).rooms)
                    .query_async(&mut r)
                    .await?
            }
        };
        let mut out = Vec::new();
        for name in rooms.iter().take(MAX_UNREAD_ROOMS) {
            let room = RoomId::parse(name)?;
            let k = RoomKeys::new(&c.tenant, &room);
            let (head, read): (Option<u64>, Option<u64>) = redis::pipe()
                .hget(&k.meta, "seq")
                .hget(&k.read, c.user.as_str())
                .query_async(&mut r)
                .await?;
            let Some(head) = head else { continue };
            let read = read.unwrap_or(0);
            out.push(json!({"room": room.as_str(), "unread": head.saturating_sub(read), "head_seq": head, "read": read}));
        }
        Ok(Outcome::json(&json!({"rooms": out})))
    }
}
