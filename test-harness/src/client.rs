//! A protocol-speaking WebSocket client for tests (tokio-tungstenite, so the
//! gateway is checked against an independent WebSocket implementation).
//!
//! Replies are matched to requests by id; pushes that arrive meanwhile are
//! kept in order and handed out by [`Client::event`].

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("{0}")]
    Other(String),
}

impl ConnectError {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            Self::Other(_) => None,
        }
    }
}

/// A connected test client.
pub struct Client {
    ws: Ws,
    events: VecDeque<Value>,
    replies: VecDeque<Value>,
    next_id: u64,
    /// The subprotocol the server selected.
    pub protocol: Option<String>,
    /// The `welcome` push's data.
    pub welcome: Value,
}

impl Client {
    /// Connects with `Authorization: Bearer` and the `switchboard.v1` subprotocol.
    pub async fn connect(url: &str, token: &str) -> Result<Self, ConnectError> {
        Self::connect_with(url, &[("Authorization", &format!("Bearer {token}"))]).await
    }

    /// Connects with the given extra headers (and the subprotocol unless a
    /// `Sec-WebSocket-Protocol` header is among them).
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Self, ConnectError> {
        let ws = connect_raw(url, headers).await?;
        let (ws, protocol) = ws;
        let mut c = Self {
            ws,
            events: VecDeque::new(),
            replies: VecDeque::new(),
            next_id: 0,
            protocol,
            welcome: Value::Null,
        };
        c.welcome = c.event("welcome").await;
        Ok(c)
    }

    /// Sends a request and returns the whole reply frame.
    pub async fn request(&mut self, op: &str, data: Value) -> Value {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        self.send_json(&json!({"id": id, "op": op, "data": data}))
            .await;
        self.reply(&json!(id)).await
    }

    /// Sends a request that must succeed and returns its `data`.
    pub async fn ok(&mut self, op: &str, data: Value) -> Value {
        let r = self.request(op, data.clone()).await;
        if r["ok"] != json!(true) {
            panic!("{op} {data} failed: {r}");
        }
        r["data"].clone()
    }

    /// Sends a request that must fail and returns its error code.
    pub async fn err(&mut self, op: &str, data: Value) -> String {
        let r = self.request(op, data.clone()).await;
        if r["ok"] != json!(false) {
            panic!("{op} {data} should have failed: {r}");
        }
        r["error"]["code"].as_str().unwrap_or_default().to_owned()
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, s: &str) {
        self.send(Message::text(s)).await;
    }

    pub async fn send(&mut self, m: Message) {
        if let Err(e) = self.ws.send(m).await {
            panic!("send failed: {e}");
        }
    }

    /// Waits for the reply to request `id` (raw JSON id).
    pub async fn reply(&mut self, id: &Value) -> Value {
        if let Some(pos) = self.replies.iter().position(|r| &r["id"] == id) {
            return self.replies.remove(pos).unwrap_or_default();
        }
        loop {
            let v = self.next_json().await;
            if v.get("event").is_some() {
                self.events.push_back(v);
            } else if &v["id"] == id {
                return v;
            } else {
                self.replies.push_back(v);
            }
        }
    }

    /// Waits for the next reply frame whatever its id (for malformed requests).
    pub async fn any_reply(&mut self) -> Value {
        if let Some(r) = self.replies.pop_front() {
            return r;
        }
        loop {
            let v = self.next_json().await;
            if v.get("event").is_some() {
                self.events.push_back(v);
            } else {
                return v;
            }
        }
    }

    /// Waits for the next push named `name` and returns its `data`. Pushes
    /// with other names stay queued, in order, for later calls.
    pub async fn event(&mut self, name: &str) -> Value {
        if let Some(data) = self.take_event(name) {
            return data;
        }
        loop {
            let v = self.next_json().await;
            if v.get("event").is_none() {
                self.replies.push_back(v);
            } else if v["event"] == name {
                return v["data"].clone();
            } else {
                self.events.push_back(v);
            }
        }
    }

    /// Takes an already received push named `name`, without waiting.
    pub fn take_event(&mut self, name: &str) -> Option<Value> {
        let pos = self.events.iter().position(|e| e["event"] == name)?;
        self.events.remove(pos).map(|e| e["data"].clone())
    }

    /// Waits for the next push, whatever its name: `(event, data)`.
    pub async fn next_event(&mut self) -> (String, Value) {
        let e = match self.events.pop_front() {
            Some(e) => e,
            None => loop {
                let v = self.next_json().await;
                if v.get("event").is_some() {
                    break v;
                }
                self.replies.push_back(v);
            },
        };
        (
            e["event"].as_str().unwrap_or_default().to_owned(),
            e["data"].clone(),
        )
    }

    /// The next push, or `None` once the connection has ended (closed,
    /// reset or killed): for tests that outlive their gateway.
    pub async fn event_or_end(&mut self) -> Option<(String, Value)> {
        if let Some(e) = self.events.pop_front() {
            return Some((e["event"].as_str()?.to_owned(), e["data"].clone()));
        }
        loop {
            let m = match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(_)) | None) => return None,
                Err(_) => panic!("nothing received within {WAIT:?}"),
            };
            match m {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("server sent bad JSON {t}: {e}"));
                    match v["event"].as_str() {
                        Some(name) => return Some((name.to_owned(), v["data"].clone())),
                        None => self.replies.push_back(v),
                    }
                }
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    async fn next_json(&mut self) -> Value {
        loop {
            let m = match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => panic!("connection failed: {e}"),
                Ok(None) => panic!("connection closed"),
                Err(_) => panic!("nothing received within {WAIT:?}"),
            };
            match m {
                Message::Text(t) => {
                    return serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("server sent bad JSON {t}: {e}"));
                }
                Message::Close(c) => panic!("closed by server: {c:?}"),
                _ => {}
            }
        }
    }

    /// Waits for the server to close the connection; returns the close
    /// code and reason (`None` when the socket ended without a close frame).
    pub async fn closed(&mut self) -> Option<(u16, String)> {
        closed(&mut self.ws).await
    }

    /// Closes from the client side.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    pub fn ws(&mut self) -> &mut Ws {
        &mut self.ws
    }
}

/// Waits for a server close on a raw socket: `(code, reason)`.
pub async fn closed(ws: &mut Ws) -> Option<(u16, String)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("not closed within {WAIT:?}"),
            Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Close(c)))) => {
                return c.map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string()));
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Opens a WebSocket with extra headers; returns the socket and the selected
/// subprotocol. Adds `Sec-WebSocket-Protocol: switchboard.v1` unless given.
pub async fn connect_raw(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, Option<String>), ConnectError> {
    let mut req = url
        .into_client_request()
        .map_err(|e| ConnectError::Other(e.to_string()))?;
    let mut has_protocol = false;
    for (k, v) in headers {
        has_protocol |= k.eq_ignore_ascii_case("sec-websocket-protocol");
        let name: tungstenite::http::HeaderName = k
            .parse()
            .map_err(|_| ConnectError::Other(format!("bad header {k}")))?;
        let value = HeaderValue::from_str(v).map_err(|e| ConnectError::Other(e.to_string()))?;
        req.headers_mut().append(name, value);
    }
    if !has_protocol {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("switchboard.v1"),
        );
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await {
        Err(_) => Err(ConnectError::Other("handshake timed out".into())),
        Ok(Ok((ws, resp))) => {
            let protocol = resp
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok((ws, protocol))
        }
        Ok(Err(tungstenite::Error::Http(resp))) => Err(ConnectError::Http {
            status: resp.status().as_u16(),
            body: resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        }),
        Ok(Err(e)) => Err(ConnectError::Other(e.to_string())),
    }
}
