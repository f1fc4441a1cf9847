//! Messages: publish (stored and sequenced, then fanned out), history pages,
//! and the `_replay` ranges gateways fetch to fill gaps in a room's feed.
//!
//! A publish may carry a client message id (`msg_id`): the same user
//! publishing the same id in the same room within `dedupe_window_secs` gets
//! the first publish's `{room, seq, ts}` with `duplicate: true`, and nothing
//! is stored or fanned out again, so a publish whose outcome the client
//! never learned (`timeout`, `unavailable`) is safe to retry.
//!
//! History keeps at most `history_max` entries, none older than
//! `history_ttl_secs`: entries past the age cutoff count as gone even before
//! the publish script trims them, so `first_seq` moves past them.

use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use switchboard_proto::bus::{ConnRef, Push, ReplayBatch, ReplayItem, ReplayRequest};
use switchboard_shared::error::ErrorCode;
use switchboard_shared::ids::{RoomId, TenantId};
use switchboard_shared::keys::RoomKeys;
use switchboard_shared::members::{ClientMsgId, PublishedId};
use switchboard_shared::{frames, now_ms};

use super::scripts::{self, Entry, NewMessage, Publish, Read};
use super::{Rooms, access};
use crate::error::ServiceError;
use crate::service::{Caller, Outcome, fanout};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishReq {
    room: String,
    data: Box<RawValue>,
    #[serde(default)]
    echo: bool,
    /// Any JSON, so that a value of the wrong type gets the same clear
    /// refusal as a malformed string.
    msg_id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryReq {
    room: String,
    after: Option<u64>,
    before: Option<u64>,
    limit: Option<u64>,
}

/// A page read from a room's history stream.
struct Page {
    head: u64,
    /// Oldest seq still held (head + 1 when the history is empty).
    first: u64,
    /// The entries asked for, in that order.
    items: Vec<Entry>,
}

/// The client frame for a stored message: `{"event":"message","data":<m>}`.
fn message_frame(message: &str) -> Result<bytes::Bytes, ServiceError> {
    let m: &RawValue = serde_json::from_str(message)?;
    Ok(frames::event("message", m))
}

/// The stream id of `seq`.
fn entry_id(seq: u64) -> String {
    format!("{seq}-0")
}

impl Rooms {
    /// The cutoff (ms) before which history entries count as gone.
    fn history_cutoff(&self, now: u64) -> u64 {
        now.saturating_sub(self.cfg.history_ttl_secs * 1000)
    }

    pub(super) async fn publish(
        &self,
        c: &Caller,
        req: PublishReq,
    ) -> Result<Outcome, ServiceError> {
        let room = RoomId::parse(&req.room)?;
        let msg_id = match &req.msg_id {
            None => None,
            Some(id) => Some(PublishedId {
                msg_id: id.as_str().and_then(ClientMsgId::parse).ok_or_else(|| {
                    ServiceError::bad_request(format!(
                        "`msg_id` must be a string of 1 to {} characters of A-Z, a-z, 0-9, `_`, `.`, `:` or `-`",
                        ClientMsgId::MAX_LEN
                    ))
                })?,
                user: c.user.clone(),
            }),
        };
        let k = RoomKeys::new(&c.tenant, &room);
        let ts = now_ms();
        // The stored message is head + seq + tail; both halves are JSON built
        // by serde, so the result is valid JSON whatever the ids contain.
        let head = format!(
            "{{\"room\":{},\"from\":{},\"ts\":{ts},\"seq\":",
            serde_json::to_string(room.as_str())?,
            serde_json::to_string(c.user.as_str())?,
        );
        let tail = format!(",\"data\":{}}}", req.data.get());
        let new = NewMessage {
            member: &c.conn_member(),
            user: &c.user,
            ts_ms: ts,
            head: &head,
            tail: &tail,
            history_max: self.cfg.history_max,
            cutoff_ms: self.history_cutoff(ts),
            echo: req.echo,
            msg_id: msg_id.as_ref(),
            dedupe_since_ms: ts.saturating_sub(self.cfg.dedupe_window_secs.saturating_mul(1000)),
        };
        let (stored, gateways) = scripts::publish(&mut self.conn().await?, &k, new).await?;
        let (seq, message) = match stored {
            Publish::Stored { seq, message } => (seq, message),
            Publish::Duplicate { seq, ts_ms } => {
                return Ok(Outcome::json(&json!({
                    "room": room.as_str(),
                    "seq": seq,
                    "ts": ts_ms,
                    "duplicate": true,
                })));
            }
            Publish::NotMember => {
                return Err(ServiceError::client(
                    ErrorCode::NotMember,
                    format!("join room {room} before publishing"),
                ));
            }
        };
        let push = Push {
            frame: message_frame(&message)?,
            seq,
            origin: Some(c.origin()),
            echo: req.echo,
            close_code: 0,
        };
        fanout::to_gateways(&self.nats, &gateways, &c.tenant, &room, &push).await;
        Ok(Outcome::json(
            &json!({"room": room.as_str(), "seq": seq, "ts": ts}),
        ))
    }

    pub(super) async fn history(
        &self,
        c: &Caller,
        req: HistoryReq,
    ) -> Result<Outcome, ServiceError> {
        let room = RoomId::parse(&req.room)?;
        let k = RoomKeys::new(&c.tenant, &room);
        access::check_readable(&mut self.conn().await?, c, &room).await?;
        let limit = req.limit.unwrap_or(50).clamp(1, self.cfg.history_page_max);
        let page = match (req.after, req.before) {
            (Some(_), Some(_)) => {
                return Err(ServiceError::bad_request(
                    "give `after` or `before`, not both",
                ));
            }
            (Some(after), None) => {
                let start = entry_id(after.saturating_add(1));
                self.read(&k, &start, "+", limit + 1, false).await?
            }
            (None, Some(before)) if before <= 1 => self.read(&k, "-", "-", 0, true).await?,
            (None, Some(before)) => {
                self.read(&k, "-", &entry_id(before - 1), limit + 1, true)
                    .await?
            }
            (None, None) => self.read(&k, "-", "+", limit + 1, true).await?,
        };
        let Page {
            head,
            first,
            mut items,
        } = page;
        let more = items.len() as u64 > limit;
        items.truncate(limit as usize);
        if req.after.is_none() {
            items.reverse();
        }
        let messages: Vec<&RawValue> = items
            .iter()
            .map(|e| serde_json::from_str(&e.message))
            .collect::<Result<_, _>>()?;
        let missed = req.after.is_some_and(|a| a + 1 < first && a < head);
        Ok(Outcome::json(&json!({
            "room": room.as_str(),
            "messages": messages,
            "head_seq": head,
            "first_seq": first,
            "more": more,
            "not_recovered": missed,
        })))
    }

    /// The seqs a gateway is missing in a room's feed, as ready frames; a
    /// room that no longer exists is `gone`.
    pub(super) async fn replay_range(
        &self,
        req: ReplayRequest,
    ) -> Result<ReplayBatch, ServiceError> {
        let tenant = TenantId::parse(&req.tenant)?;
        let room = RoomId::parse(&req.key)?;
        let k = RoomKeys::new(&tenant, &room);
        let end = match req.until_seq {
            0 => "+".to_owned(),
            until => entry_id(until),
        };
        let start = entry_id(req.after_seq.saturating_add(1));
        let count = self.cfg.history_max.max(1);
        let Some(page) = self.read_page(&k, &start, &end, count, false).await? else {
            return Ok(ReplayBatch {
                gone: true,
                ..ReplayBatch::default()
            });
        };
        Ok(ReplayBatch {
            items: page
                .items
                .into_iter()
                .map(|e| {
                    Ok(ReplayItem {
                        seq: e.seq,
                        frame: message_frame(&e.message)?,
                        no_echo_to: e.no_echo_to.map(|m| ConnRef {
                            gateway: m.gw.to_string(),
                            conn: m.conn,
                        }),
                    })
                })
                .collect::<Result<_, ServiceError>>()?,
            head_seq: page.head,
            first_seq: page.first,
            gone: false,
        })
    }

    /// Like [`Rooms::read_page`], with a missing room as `not_found`.
    async fn read(
        &self,
        k: &RoomKeys,
        start: &str,
        end: &str,
        count: u64,
        reverse: bool,
    ) -> Result<Page, ServiceError> {
        self.read_page(k, start, end, count, reverse)
            .await?
            .ok_or_else(|| ServiceError::client(ErrorCode::NotFound, "no such room"))
    }

    /// Reads history entries between two stream ids, dropping those older than
    /// the history TTL. `None` when the room does not exist.
    async fn read_page(
        &self,
        k: &RoomKeys,
        start: &str,
        end: &str,
        count: u64,
        reverse: bool,
    ) -> Result<Option<Page>, ServiceError> {
        let mut r = self.conn().await?;
        let (head, oldest, entries) =
            match scripts::read(&mut r, k, start, end, count, reverse).await? {
                Read::NoRoom => return Ok(None),
                Read::Page {
                    head_seq,
                    oldest,
                    entries,
                } => (head_seq, oldest, entries),
            };
        let cutoff = self.history_cutoff(now_ms());
        let mut first = oldest.map_or(head + 1, |e| e.seq);
        let mut items = Vec::with_capacity(entries.len());
        for e in entries {
            if e.t_ms < cutoff {
                // Expired by age: it counts as gone.
                first = first.max(e.seq + 1);
                continue;
            }
            items.push(e);
        }
        Ok(Some(Page { head, first, items }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frames_wrap_the_stored_message() {
        let stored = r#"{"room":"r","seq":1,"data":{"x":1}}"#;
        let f = message_frame(stored).unwrap_or_else(|e| panic!("{e}"));
        let v: serde_json::Value = serde_json::from_slice(&f).unwrap_or_default();
        assert_eq!(v["event"], "message");
        assert_eq!(v["data"]["seq"], 1);
        // The stored JSON goes out verbatim.
        assert_eq!(
            f.as_ref(),
            format!(r#"{{"event":"message","data":{stored}}}"#).as_bytes()
        );
        assert!(message_frame("{not json").is_err());
    }
}
