//! B1, the wire limit: a bare fastwebsockets server. One task per
//! connection reads frames; the write half sits behind an async mutex and is
//! written directly by whoever has something to send (the echo, or the
//! publisher's task during a broadcast). No auth, no bus, no queues.
//!
//! Protocol: `e:<x>` is echoed as is; `j:<room>` joins and is answered `k`;
//! `p:<room>:<x>` sends `m:<x>` to the room's other members.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use tokio::net::TcpListener;

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

#[derive(Default)]
struct State {
    rooms: Mutex<HashMap<Vec<u8>, Vec<Arc<Peer>>>>,
    next: AtomicU64,
}

pub async fn run(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!("b1-server listening on {listen}");
    let state = Arc::new(State::default());
    super::serve(listener, move |ws| conn(state.clone(), ws)).await;
    Ok(())
}

async fn conn(state: Arc<State>, ws: Ws) {
    let (mut rd, wr) = ws.split(tokio::io::split);
    let me = Arc::new(Peer {
        id: state.next.fetch_add(1, Ordering::Relaxed),
        wr: tokio::sync::Mutex::new(wr),
    });
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
    let mut joined: Vec<Vec<u8>> = Vec::new();
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
            [b'e', b':', ..] => me.send(f).await.is_ok(),
            [b'j', b':', room @ ..] if valid_room(room) => {
                if let Ok(mut rooms) = state.rooms.lock() {
                    rooms.entry(room.to_vec()).or_default().push(me.clone());
                }
                joined.push(room.to_vec());
                me.send(b"k").await.is_ok()
            }
            [b'p', b':', rest @ ..] => {
                if let Some(colon) = rest.iter().position(|b| *b == b':') {
                    let (room, data) = (&rest[..colon], &rest[colon + 1..]);
                    let members: Vec<Arc<Peer>> = state
                        .rooms
                        .lock()
                        .ok()
                        .and_then(|r| r.get(room).cloned())
                        .unwrap_or_default();
                    let mut msg = Vec::with_capacity(data.len() + 2);
                    msg.extend_from_slice(b"m:");
                    msg.extend_from_slice(data);
                    for m in members.iter().filter(|m| m.id != me.id) {
                        // A member that is gone just misses the message.
                        let _ = m.send(&msg).await;
                    }
                }
                true
            }
            _ => true,
        };
        if !ok {
            break;
        }
    }
    if let Ok(mut rooms) = state.rooms.lock() {
        for room in joined {
            if let Some(list) = rooms.get_mut(&room) {
                list.retain(|p| p.id != me.id);
                if list.is_empty() {
                    rooms.remove(&room);
                }
            }
        }
    }
}
