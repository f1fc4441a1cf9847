//! What each target speaks, from the client side: the frames that join a
//! room, publish, and send a request, and the classification of what the
//! server sends (replies, room messages, heartbeats).
//!
//! | target      | join                         | publish                      | request (rtt)                  | room message            |
//! |-------------|------------------------------|------------------------------|--------------------------------|-------------------------|
//! | switchboard | `{"id":N,"op":"rooms.join"}` | `rooms.publish`              | any op, id = send time (µs)    | `{"event":"message",..}`|
//! | b1, b2      | `j:<room>` → `k`             | `p:<room>:<json>`            | `e:<json>`, echoed back        | `m:<json>`              |
//! | socketio    | `42N["join",room]` → `43N[]` | `42["publish",room,<json>]`  | `42N["echo",<json>]` → `43N[]` | `42["message",<json>]`  |
//!
//! Every generated message carries `{"t":<send time, µs since the epoch>,
//! "s":<sender>}` so the receiver can compute delivery latency; request ids
//! for measured traffic are send times too (setup requests use small ids).
//! Classification works on bytes and never parses whole JSON documents: the
//! client shares the CPUs with the servers under test.

use serde::Serialize;

/// The systems a scenario can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The Switchboard gateway (JWT, `switchboard.v1`, workers over NATS).
    Switchboard,
    /// B1: bare fastwebsockets echo/broadcast server.
    B1,
    /// B2: WebSocket → NATS → echo worker → NATS → WebSocket relay.
    B2,
    /// Socket.IO 4 with the Redis adapter, on Node.
    Socketio,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Self::Switchboard => "switchboard",
            Self::B1 => "b1",
            Self::B2 => "b2",
            Self::Socketio => "socketio",
        }
    }

    /// Whether publishes get a reply (Switchboard's publish is a request).
    pub fn publish_replies(self) -> bool {
        self == Self::Switchboard
    }
}

/// Setup requests use ids below this; measured traffic uses send times.
pub const SETUP_ID_LIMIT: u64 = 1_000_000;

/// One frame from the server, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum In<'a> {
    Reply {
        id: u64,
        ok: bool,
        code: Option<&'a [u8]>,
    },
    /// A room message with its send time.
    Message {
        t_us: u64,
    },
    /// A Switchboard `gap` event: the gateway reports lost messages.
    Gap,
    /// An application-level ping that needs an answer (Engine.IO `2`).
    Ping,
    /// The server ended the session (Socket.IO `41`, `44`).
    Closed,
    Other,
}

/// `{"t":..,"s":..}`.
pub fn payload(t_us: u64, sender: u32) -> String {
    format!("{{\"t\":{t_us},\"s\":{sender}}}")
}

pub fn create_room(id: u64, room: &str, max_members: u32) -> String {
    format!(
        "{{\"id\":{id},\"op\":\"rooms.create\",\"data\":{{\"room\":\"{room}\",\"max_members\":{max_members}}}}}"
    )
}

pub fn join(target: Target, id: u64, room: &str) -> String {
    match target {
        Target::Switchboard => {
            format!("{{\"id\":{id},\"op\":\"rooms.join\",\"data\":{{\"room\":\"{room}\"}}}}")
        }
        Target::B1 | Target::B2 => format!("j:{room}"),
        Target::Socketio => format!("42{id}[\"join\",\"{room}\"]"),
    }
}

/// Switchboard `rooms.join` resuming after `after` (the last seq seen).
pub fn join_after(id: u64, room: &str, after: u64) -> String {
    format!(
        "{{\"id\":{id},\"op\":\"rooms.join\",\"data\":{{\"room\":\"{room}\",\"after\":{after}}}}}"
    )
}

/// Switchboard `rooms.info` (its reply carries the room's head `seq`).
pub fn room_info(id: u64, room: &str) -> String {
    format!("{{\"id\":{id},\"op\":\"rooms.info\",\"data\":{{\"room\":\"{room}\"}}}}")
}

/// The unsigned integer after the first `key` (e.g. `"seq":`) in a frame.
/// Room and user ids cannot contain quotes, so in a Switchboard `message`
/// push or a join/info reply the first `"seq":` is the room's.
pub fn number_after(f: &[u8], key: &[u8]) -> Option<u64> {
    let pos = f.windows(key.len()).position(|w| w == key)?;
    digits(&f[pos + key.len()..]).0
}

/// A publish stamped `t_us` (also the request id where there is one).
pub fn publish(target: Target, room: &str, t_us: u64, sender: u32) -> String {
    let p = payload(t_us, sender);
    match target {
        Target::Switchboard => format!(
            "{{\"id\":{t_us},\"op\":\"rooms.publish\",\"data\":{{\"room\":\"{room}\",\"data\":{p}}}}}"
        ),
        Target::B1 | Target::B2 => format!("p:{room}:{p}"),
        Target::Socketio => format!("42[\"publish\",\"{room}\",{p}]"),
    }
}

/// A request whose reply closes the loop, stamped `t_us`.
pub fn request(target: Target, t_us: u64, op: &str, room: &str) -> String {
    match target {
        Target::Switchboard => {
            format!("{{\"id\":{t_us},\"op\":\"{op}\",\"data\":{{\"room\":\"{room}\"}}}}")
        }
        Target::B1 | Target::B2 => format!("e:{}", payload(t_us, 0)),
        Target::Socketio => format!("42{t_us}[\"echo\",{}]", payload(t_us, 0)),
    }
}

/// Classifies one text frame.
pub fn classify(target: Target, f: &[u8]) -> In<'_> {
    match target {
        Target::Switchboard => {
            if let Some(rest) = f.strip_prefix(b"{\"id\":") {
                let (id, rest) = digits(rest);
                let ok = rest.starts_with(b",\"ok\":true");
                let code = if ok { None } else { error_code(rest) };
                return match id {
                    Some(id) => In::Reply { id, ok, code },
                    None => In::Other,
                };
            }
            match event_name(f) {
                Some(b"message") => stamped(f),
                Some(b"gap") => In::Gap,
                _ => In::Other,
            }
        }
        Target::B1 | Target::B2 => match f {
            [b'm', b':', ..] => stamped(f),
            [b'e', b':', ..] => match t_of(f) {
                Some(id) => In::Reply {
                    id,
                    ok: true,
                    code: None,
                },
                None => In::Other,
            },
            [b'k', ..] => In::Reply {
                id: 0,
                ok: true,
                code: None,
            },
            _ => In::Other,
        },
        Target::Socketio => match f {
            b"2" => In::Ping,
            [b'4', b'3', rest @ ..] => match digits(rest) {
                (Some(id), _) => In::Reply {
                    id,
                    ok: true,
                    code: None,
                },
                _ => In::Other,
            },
            [b'4', b'2', b'[', b'"', b'm', ..] => stamped(f),
            [b'4', b'1', ..] | [b'4', b'4', ..] | [b'1', ..] => In::Closed,
            _ => In::Other,
        },
    }
}

/// The name of a Switchboard push: `{"event":"<name>",...}` as the rooms
/// worker writes message frames, or `{"data":..,"event":"<name>"}` as the
/// gateway's serde_json (sorted keys) writes the others.
pub fn event_name(f: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"event\":\"";
    let start = if let Some(rest) = f.strip_prefix(b"{") {
        if rest.starts_with(KEY) {
            1 + KEY.len()
        } else {
            f.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len()
        }
    } else {
        return None;
    };
    let len = f[start..].iter().position(|c| *c == b'"')?;
    Some(&f[start..start + len])
}

fn stamped(f: &[u8]) -> In<'_> {
    match t_of(f) {
        Some(t_us) => In::Message { t_us },
        None => In::Other,
    }
}

/// The number after the last `"t":`.
fn t_of(f: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"t\":";
    let pos = f.windows(KEY.len()).rposition(|w| w == KEY)?;
    digits(&f[pos + KEY.len()..]).0
}

fn digits(b: &[u8]) -> (Option<u64>, &[u8]) {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return (None, b);
    }
    let mut v: u64 = 0;
    for c in &b[..n] {
        v = v * 10 + u64::from(c - b'0');
    }
    (Some(v), &b[n..])
}

fn error_code(rest: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"code\":\"";
    let pos = rest.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = rest[pos..].iter().position(|c| *c == b'"')?;
    Some(&rest[pos..pos + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switchboard_frames() {
        let t = Target::Switchboard;
        assert_eq!(
            classify(t, br#"{"id":17,"ok":true,"data":{"room":"r"}}"#),
            In::Reply {
                id: 17,
                ok: true,
                code: None
            }
        );
        assert_eq!(
            classify(
                t,
                br#"{"id":5,"ok":false,"error":{"code":"unknown_op","message":"x"}}"#
            ),
            In::Reply {
                id: 5,
                ok: false,
                code: Some(b"unknown_op".as_slice())
            }
        );
        let m = br#"{"event":"message","data":{"room":"r","from":"u","ts":9,"seq":3,"data":{"t":1700000000000001,"s":4}}}"#;
        assert_eq!(
            classify(t, m),
            In::Message {
                t_us: 1_700_000_000_000_001
            }
        );
        assert_eq!(
            classify(t, br#"{"event":"member_joined","data":{}}"#),
            In::Other
        );
        assert_eq!(
            classify(t, br#"{"event":"gap","data":{"from":1}}"#),
            In::Gap
        );
        assert_eq!(
            classify(t, br#"{"data":{"from":1,"room":"r"},"event":"gap"}"#),
            In::Gap
        );
        assert_eq!(
            event_name(br#"{"data":{"user":"u"},"event":"welcome"}"#),
            Some(b"welcome".as_slice())
        );
    }

    #[test]
    fn generated_frames_round_trip() {
        for target in [
            Target::Switchboard,
            Target::B1,
            Target::B2,
            Target::Socketio,
        ] {
            let p = publish(target, "room-1", 42, 7);
            assert!(p.contains(r#"{"t":42,"s":7}"#), "{p}");
        }
        let v: serde_json::Value =
            serde_json::from_str(&publish(Target::Switchboard, "r", 42, 7)).unwrap_or_default();
        assert_eq!(v["data"]["data"]["t"], 42);
        assert_eq!(v["id"], 42);
        let v: serde_json::Value =
            serde_json::from_str(&create_room(1, "r", 2)).unwrap_or_default();
        assert_eq!(v["data"]["max_members"], 2);
        let v: serde_json::Value =
            serde_json::from_str(&join(Target::Switchboard, 2, "r")).unwrap_or_default();
        assert_eq!(v["op"], "rooms.join");
        let v: serde_json::Value =
            serde_json::from_str(&request(Target::Switchboard, 9, "rooms.info", "r"))
                .unwrap_or_default();
        assert_eq!(v["op"], "rooms.info");
        let v: serde_json::Value =
            serde_json::from_str(&join_after(3, "r", 17)).unwrap_or_default();
        assert_eq!(v["data"]["after"], 17);
        let v: serde_json::Value = serde_json::from_str(&room_info(4, "r")).unwrap_or_default();
        assert_eq!(v["data"]["room"], "r");
        let m = br#"{"event":"message","data":{"room":"r","seq":31,"from":"u","ts":9,"data":{"t":1,"s":0}}}"#;
        assert_eq!(number_after(m, b"\"seq\":"), Some(31));
        assert_eq!(number_after(b"{}", b"\"seq\":"), None);
    }

    #[test]
    fn baseline_and_socketio_frames() {
        assert_eq!(
            classify(Target::B1, b"m:{\"t\":12,\"s\":1}"),
            In::Message { t_us: 12 }
        );
        assert_eq!(
            classify(Target::B2, b"e:{\"t\":12,\"s\":0}"),
            In::Reply {
                id: 12,
                ok: true,
                code: None
            }
        );
        assert!(matches!(
            classify(Target::B1, b"k"),
            In::Reply { id: 0, .. }
        ));
        let s = Target::Socketio;
        assert_eq!(classify(s, b"2"), In::Ping);
        assert_eq!(
            classify(s, b"43123[{\"t\":123,\"s\":0}]"),
            In::Reply {
                id: 123,
                ok: true,
                code: None
            }
        );
        assert_eq!(
            classify(s, b"42[\"message\",{\"t\":55,\"s\":2}]"),
            In::Message { t_us: 55 }
        );
        assert_eq!(classify(s, b"41"), In::Closed);
        assert_eq!(classify(s, b"40{\"sid\":\"x\"}"), In::Other);
    }
}
