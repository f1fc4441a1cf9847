//! Loopback-only networking for the load generator.
//!
//! - [`WsUrl`] parses `ws://127.x.y.z:port/path` and refuses anything outside
//!   127.0.0.0/8: this tool never sends load off the machine.
//! - [`Sources`] spreads client sockets over many `127.a.b.c` source
//!   addresses, so one address's ~28k ephemeral ports (and the TIME_WAIT
//!   sockets of earlier runs) never limit a run.
//! - [`open`] performs a minimal client-side HTTP/1.1 upgrade on a plain
//!   `TcpStream` and hands the socket to fastwebsockets as split read/write
//!   halves (no hyper client task per connection, so the client stays cheap).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, bail};
use fastwebsockets::{Frame, Role, WebSocketRead, WebSocketWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub type WsRead = WebSocketRead<OwnedReadHalf>;
pub type WsWrite = WebSocketWrite<OwnedWriteHalf>;

/// A parsed `ws://` URL on the loopback network.
#[derive(Debug, Clone)]
pub struct WsUrl {
    pub addr: SocketAddrV4,
    /// `Host` header value.
    pub host: String,
    /// Path and query, e.g. `/ws` or `/socket.io/?EIO=4&transport=websocket`.
    pub path: String,
    pub raw: String,
}

impl WsUrl {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let rest = s
            .strip_prefix("ws://")
            .with_context(|| format!("{s}: only ws:// URLs are supported"))?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = hostport
            .rsplit_once(':')
            .with_context(|| format!("{s}: the URL needs an explicit port"))?;
        let port: u16 = port
            .parse()
            .with_context(|| format!("{s}: bad port {port:?}"))?;
        let ip: Ipv4Addr = if host == "localhost" {
            Ipv4Addr::LOCALHOST
        } else {
            host.parse()
                .with_context(|| format!("{s}: the host must be an IPv4 loopback address"))?
        };
        check_loopback(IpAddr::V4(ip))?;
        Ok(Self {
            addr: SocketAddrV4::new(ip, port),
            host: hostport.to_owned(),
            path: path.to_owned(),
            raw: s.to_owned(),
        })
    }
}

/// Refuses addresses outside 127.0.0.0/8.
pub fn check_loopback(ip: IpAddr) -> anyhow::Result<()> {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Ok(()),
        other => bail!("refusing {other}: the load generator only uses 127.0.0.0/8"),
    }
}

/// Parses a listen address for the baseline servers (loopback only).
pub fn loopback_listen(s: &str) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = s.parse().with_context(|| format!("bad address {s:?}"))?;
    check_loopback(addr.ip())?;
    Ok(addr)
}

/// Client sockets per source address by default.
pub const PER_SOURCE_IP: usize = 500;

/// First source port handed out on each source address. `bind()` with port 0
/// makes the kernel search for a free port among all bound sockets, which
/// costs ~1 ms per socket with tens of thousands open; binding an explicit
/// (address, port) is a single lookup. The ports sit above the default
/// ephemeral range (32768–60999), so they never meet the kernel's own picks.
const FIRST_SOURCE_PORT: u16 = 61_000;

/// Source addresses `127.a.b.c` for client sockets, `per_ip` sockets each.
#[derive(Debug, Clone, Copy)]
pub struct Sources {
    a: u8,
    b: u8,
    per_ip: usize,
}

impl Sources {
    /// `seed` picks the `127.a.b.0/24`-ish block; different seeds (runs,
    /// child processes) use different blocks so their TIME_WAIT sockets never
    /// collide. Never uses 127.0.x.x, where the servers listen.
    pub fn new(seed: u64, per_ip: usize) -> Self {
        let a = 10 + (seed % 240) as u8;
        let b = ((seed / 240) % 250) as u8;
        Self {
            a,
            b,
            // Keeps the explicit source ports below 65536.
            per_ip: per_ip.clamp(1, 4000),
        }
    }

    /// A fresh seed for this process (time and pid mixed).
    pub fn random_seed() -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        (nanos / 1000) ^ (u64::from(std::process::id()) << 7)
    }

    /// The source address and port of connection `i`.
    pub fn addr(&self, i: usize) -> SocketAddrV4 {
        let k = i / self.per_ip; // 0..
        let c = (k % 254) as u8 + 1;
        let b = self.b.wrapping_add((k / 254) as u8);
        let port = FIRST_SOURCE_PORT + (i % self.per_ip) as u16;
        SocketAddrV4::new(Ipv4Addr::new(127, self.a, b, c), port)
    }
}

/// Why a connection attempt failed; `kind()` is what reports count.
#[derive(Debug)]
pub enum ConnectError {
    Http(u16, String),
    Io(std::io::Error),
    Timeout,
    Protocol(String),
}

impl ConnectError {
    pub fn kind(&self) -> String {
        match self {
            Self::Http(status, _) => format!("http_{status}"),
            Self::Io(e) => format!("io_{:?}", e.kind()).to_lowercase(),
            Self::Timeout => "timeout".into(),
            Self::Protocol(_) => "protocol".into(),
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http(status, body) => write!(f, "HTTP {status}: {}", body.trim()),
            Self::Io(e) => write!(f, "{e}"),
            Self::Timeout => f.write_str("handshake timed out"),
            Self::Protocol(m) => f.write_str(m),
        }
    }
}

impl From<std::io::Error> for ConnectError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// The longest HTTP response head accepted from a server.
const MAX_HEAD: usize = 8192;

/// Connects from `src`, performs the WebSocket upgrade with `headers`, and
/// returns the split socket (auto-pong and auto-close off: callers answer
/// pings themselves) and the selected subprotocol.
pub async fn open(
    url: &WsUrl,
    src: SocketAddrV4,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<(WsRead, WsWrite, Option<String>), ConnectError> {
    match tokio::time::timeout(timeout, open_inner(url, src, headers)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout),
    }
}

async fn open_inner(
    url: &WsUrl,
    src: SocketAddrV4,
    headers: &[(&str, &str)],
) -> Result<(WsRead, WsWrite, Option<String>), ConnectError> {
    let sock = TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    if sock.bind(SocketAddr::V4(src)).is_err() {
        // Taken (by a listener on the wildcard address, say): let the kernel pick.
        sock.bind(SocketAddr::new(IpAddr::V4(*src.ip()), 0))?;
    }
    let mut stream = sock.connect(SocketAddr::V4(url.addr)).await?;
    stream.set_nodelay(true)?;

    let key = fastwebsockets::handshake::generate_key();
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
        url.path, url.host
    );
    for (k, v) in headers {
        req.push_str(k);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;

    // Read exactly the response head, leaving any frame the server sends
    // right after it (a welcome, an Engine.IO open) in the socket.
    let mut buf = vec![0u8; MAX_HEAD];
    let mut seen = 0;
    let head_len = loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(ConnectError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if let Some(end) = find(&buf[..n], b"\r\n\r\n") {
            break end + 4;
        }
        if n == buf.len() {
            return Err(ConnectError::Protocol("response head too large".into()));
        }
        if n == seen {
            // Only part of the head has arrived; wait for the rest.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seen = n;
    };
    let mut head = vec![0u8; head_len];
    stream.read_exact(&mut head).await?;
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ConnectError::Protocol("malformed status line".into()))?;
    let mut protocol = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("sec-websocket-protocol")
        {
            protocol = Some(v.trim().to_owned());
        }
    }
    if status != 101 {
        let mut body = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut body))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        return Err(ConnectError::Http(
            status,
            String::from_utf8_lossy(&body[..n]).into_owned(),
        ));
    }
    let (r, w) = stream.into_split();
    let (mut rd, wr) = fastwebsockets::after_handshake_split(r, w, Role::Client);
    rd.set_auto_pong(false);
    rd.set_auto_close(false);
    Ok((rd, wr, protocol))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `send_fn` for `read_frame` when auto-pong and auto-close are off: it
/// is never called with anything that must be sent.
pub fn no_obligations(_: Frame<'_>) -> std::future::Ready<Result<(), std::io::Error>> {
    std::future::ready(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_are_accepted() {
        let u = WsUrl::parse("ws://127.0.0.1:18080/ws").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u.addr.port(), 18080);
        assert_eq!(u.path, "/ws");
        let u = WsUrl::parse("ws://127.3.2.1:9/socket.io/?EIO=4&transport=websocket")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u.path, "/socket.io/?EIO=4&transport=websocket");
        assert!(WsUrl::parse("ws://10.0.0.1:80/ws").is_err());
        assert!(WsUrl::parse("ws://example.com:80/ws").is_err());
        assert!(WsUrl::parse("wss://127.0.0.1:80/ws").is_err());
        assert!(WsUrl::parse("ws://127.0.0.1/ws").is_err());
        assert!(loopback_listen("0.0.0.0:80").is_err());
        assert!(loopback_listen("127.0.0.1:80").is_ok());
    }

    #[test]
    fn sources_stay_in_loopback_and_spread() {
        let s = Sources::new(12345, 2);
        let a = s.addr(0);
        assert_eq!(a.ip(), s.addr(1).ip());
        assert_ne!(a.port(), s.addr(1).port());
        assert_ne!(a.ip(), s.addr(2).ip());
        let s = Sources::new(99, PER_SOURCE_IP);
        let mut seen = std::collections::HashSet::new();
        for i in 0..200_000 {
            let a = s.addr(i);
            assert!(a.ip().is_loopback());
            assert_ne!(a.ip().octets()[1], 0);
            assert_ne!(a.ip().octets()[3], 0);
            assert!(a.port() >= FIRST_SOURCE_PORT);
            assert!(seen.insert(a), "{a} twice");
        }
    }
}
