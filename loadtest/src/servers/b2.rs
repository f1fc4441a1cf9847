//! B2, the architecture limit: WebSocket → NATS → trivial echo worker → NATS
//! → WebSocket, with nothing else (no auth, no envelope, no storage, no
//! ordering, no per-connection queue).
//!
//! Relay (`b2-relay`):
//! - `e:<x>` is published to `b2.echo` with reply subject
//!   `b2.gw.<relay>.<conn>`; whatever arrives there is written to `<conn>`;
//! - `j:<room>` subscribes the relay to `b2.room.<room>` (once per room, like
//!   the gateway's interest-based feeds) and is answered `k`;
//! - `p:<room>:<x>` is published to `b2.pub` as `<room>\n<relay>:<conn>\n<x>`;
//!   what arrives on `b2.room.<room>` (`<origin>\n<x>`) is written as `m:<x>`
//!   to every local member but the origin.
//!
//! With `--reply-per-request` the reply subject also carries a per-request
//! sequence number (`b2.gw.<relay>.<conn>.<n>`), the way Switchboard names
//! replies: an experiment showing what unique subjects cost NATS.
//!
//! Worker (`b2-echo-worker`, queue group `b2`): answers `b2.echo` with the
//! request's own payload, and republishes `b2.pub` to `b2.room.<room>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use futures::StreamExt;
use switchboard_shared::config::NatsConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{Wr, Ws, valid_room};

struct Peer {
    id: u64,
    wr: tokio::sync::Mutex<Wr>,
}

impl Peer {
    async fn send(&self, text: &[u8]) -> Result<(), WebSocketError> {
        self.wr
            .lock()
            .await
            .write_frame(Frame::text(Payload::Borrowed(text)))
            .await
    }
}

struct Room {
    members: RwLock<Vec<Arc<Peer>>>,
    /// The feed task; aborted when the last local member leaves.
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

struct Relay {
    id: String,
    nats: async_nats::Client,
    conns: RwLock<HashMap<u64, Arc<Peer>>>,
    rooms: tokio::sync::Mutex<HashMap<String, Arc<Room>>>,
    next: AtomicU64,
    reply_per_request: bool,
}

async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let cfg = NatsConfig {
        url: url.to_owned(),
    };
    Ok(switchboard_shared::bus::connect(&cfg, name).await?)
}

pub async fn relay(
    listen: std::net::SocketAddr,
    nats_url: &str,
    reply_per_request: bool,
) -> anyhow::Result<()> {
    let id = format!("r{}", std::process::id());
    let nats = connect(nats_url, &format!("b2-relay[{id}]")).await?;
    let replies = nats.subscribe(format!("b2.gw.{id}.>")).await?;
    nats.flush().await?;
    let relay = Arc::new(Relay {
        id,
        nats,
        conns: RwLock::new(HashMap::new()),
        rooms: tokio::sync::Mutex::new(HashMap::new()),
        next: AtomicU64::new(1),
        reply_per_request,
    });
    tokio::spawn(route_replies(relay.clone(), replies));
    let listener = TcpListener::bind(listen).await?;
    eprintln!("b2-relay listening on {listen}, NATS {nats_url}");
    super::serve(listener, move |ws| conn(relay.clone(), ws)).await;
    Ok(())
}

async fn route_replies(relay: Arc<Relay>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        // b2.gw.<relay>.<conn>[.<n>]
        let Some(conn) = msg
            .subject
            .split('.')
            .nth(3)
            .and_then(|c| c.parse::<u64>().ok())
        else {
            continue;
        };
        let peer = relay.conns.read().ok().and_then(|c| c.get(&conn).cloned());
        if let Some(p) = peer {
            let _ = p.send(&msg.payload).await;
        }
    }
}

async fn room_feed(relay: Arc<Relay>, room: Arc<Room>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let p: &[u8] = &msg.payload;
        let Some(nl) = p.iter().position(|b| *b == b'\n') else {
            continue;
        };
        let (origin, data) = (&p[..nl], &p[nl + 1..]);
        // Skip the publisher itself when it is ours.
        let skip = std::str::from_utf8(origin)
            .ok()
            .and_then(|o| o.split_once(':'))
            .filter(|(r, _)| *r == relay.id)
            .and_then(|(_, c)| c.parse::<u64>().ok());
        let members: Vec<Arc<Peer>> = room.members.read().map(|m| m.clone()).unwrap_or_default();
        let mut frame = Vec::with_capacity(data.len() + 2);
        frame.extend_from_slice(b"m:");
        frame.extend_from_slice(data);
        for m in members.iter().filter(|m| Some(m.id) != skip) {
            let _ = m.send(&frame).await;
        }
    }
}

async fn join(relay: &Arc<Relay>, me: &Arc<Peer>, room: &str) -> anyhow::Result<()> {
    let mut rooms = relay.rooms.lock().await;
    if let Some(r) = rooms.get(room) {
        if let Ok(mut m) = r.members.write() {
            m.push(me.clone());
        }
        return Ok(());
    }
    let sub = relay.nats.subscribe(format!("b2.room.{room}")).await?;
    relay.nats.flush().await?;
    let r = Arc::new(Room {
        members: RwLock::new(vec![me.clone()]),
        task: std::sync::Mutex::new(None),
    });
    let feed = tokio::spawn(room_feed(relay.clone(), r.clone(), sub));
    if let Ok(mut t) = r.task.lock() {
        *t = Some(feed);
    }
    rooms.insert(room.to_owned(), r);
    Ok(())
}

async fn leave_all(relay: &Arc<Relay>, me: u64, joined: &[String]) {
    let mut rooms = relay.rooms.lock().await;
    for room in joined {
        let empty = match rooms.get(room) {
            Some(r) => match r.members.write() {
                Ok(mut m) => {
                    m.retain(|p| p.id != me);
                    m.is_empty()
                }
                Err(_) => false,
            },
            None => false,
        };
        if empty
            && let Some(r) = rooms.remove(room)
            && let Ok(mut t) = r.task.lock()
            && let Some(t) = t.take()
        {
            t.abort();
        }
    }
}

async fn conn(relay: Arc<Relay>, ws: Ws) {
    let (mut rd, wr) = ws.split(tokio::io::split);
    let me = Arc::new(Peer {
        id: relay.next.fetch_add(1, Ordering::Relaxed),
        wr: tokio::sync::Mutex::new(wr),
    });
    if let Ok(mut c) = relay.conns.write() {
        c.insert(me.id, me.clone());
    }
    let reply_to = format!("b2.gw.{}.{}", relay.id, me.id);
    let origin = format!("{}:{}", relay.id, me.id);
    let obligations = me.clone();
    let mut send_fn = move |f: Frame<'_>| {
        let p = obligations.clone();
        let op = f.opcode;
        let payload = f.payload.to_vec();
        async move {
            p.wr.lock()
                .await
                .write_frame(Frame::new(true, op, None, Payload::Owned(payload)))
                .await
        }
    };
    let mut joined: Vec<String> = Vec::new();
    let mut n: u64 = 0;
    loop {
        let frame = match rd.read_frame(&mut send_fn).await {
            Ok(f) => f,
            Err(_) => break,
        };
        match frame.opcode {
            OpCode::Text => {}
            OpCode::Close => break,
            _ => continue,
        }
        let f: &[u8] = &frame.payload;
        let ok = match f {
            [b'e', b':', ..] => {
                let reply = if relay.reply_per_request {
                    n += 1;
                    format!("{reply_to}.{n}")
                } else {
                    reply_to.clone()
                };
                relay
                    .nats
                    .publish_with_reply("b2.echo", reply, Bytes::copy_from_slice(f))
                    .await
                    .is_ok()
            }
            [b'j', b':', room @ ..] if valid_room(room) => {
                let room = String::from_utf8_lossy(room).into_owned();
                match join(&relay, &me, &room).await {
                    Ok(()) => {
                        joined.push(room);
                        me.send(b"k").await.is_ok()
                    }
                    Err(_) => me.send(b"x").await.is_ok(),
                }
            }
            [b'p', b':', rest @ ..] => {
                if let Some(colon) = rest.iter().position(|b| *b == b':') {
                    let (room, data) = (&rest[..colon], &rest[colon + 1..]);
                    let mut msg = Vec::with_capacity(room.len() + origin.len() + data.len() + 2);
                    msg.extend_from_slice(room);
                    msg.push(b'\n');
                    msg.extend_from_slice(origin.as_bytes());
                    msg.push(b'\n');
                    msg.extend_from_slice(data);
                    relay.nats.publish("b2.pub", msg.into()).await.is_ok()
                } else {
                    true
                }
            }
            _ => true,
        };
        if !ok {
            break;
        }
    }
    if let Ok(mut c) = relay.conns.write() {
        c.remove(&me.id);
    }
    leave_all(&relay, me.id, &joined).await;
}

/// The trivial worker: echo requests, republish room messages.
pub async fn echo_worker(nats_url: &str) -> anyhow::Result<()> {
    let nats = connect(nats_url, "b2-echo-worker").await?;
    let mut echo = nats.queue_subscribe("b2.echo", "b2".into()).await?;
    let mut pubs = nats.queue_subscribe("b2.pub", "b2".into()).await?;
    nats.flush().await?;
    eprintln!("b2-echo-worker serving, NATS {nats_url}");
    loop {
        tokio::select! {
            m = echo.next() => {
                let Some(m) = m else { break };
                if let Some(reply) = m.reply {
                    let _ = nats.publish(reply, m.payload).await;
                }
            }
            m = pubs.next() => {
                let Some(m) = m else { break };
                let p = m.payload;
                let Some(nl) = p.iter().position(|b| *b == b'\n') else { continue };
                if !valid_room(&p[..nl]) {
                    continue;
                }
                let room = String::from_utf8_lossy(&p[..nl]).into_owned();
                let _ = nats.publish(format!("b2.room.{room}"), p.slice(nl + 1..)).await;
            }
        }
    }
    Ok(())
}
