//! The baseline servers, measured in the same run as Switchboard:
//!
//! - [`b1`]: the wire limit — a bare fastwebsockets echo/broadcast server
//!   (no auth, no NATS, no per-connection queue or writer task);
//! - [`b2`]: the architecture limit — WebSocket → NATS → trivial echo worker
//!   → NATS → WebSocket, with nothing else.
//!
//! Both accept upgrades the way the gateway does (hyper 1 http1 server with
//! upgrades, fastwebsockets), and speak the tiny text protocol described in
//! [`crate::wire`]. Both listen on loopback only and run until killed.

pub mod b1;
pub mod b2;

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{WebSocket, WebSocketWrite};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::WriteHalf;
use tokio::net::TcpListener;

pub type Io = TokioIo<Upgraded>;
pub type Ws = WebSocket<Io>;
pub type Wr = WebSocketWrite<WriteHalf<Io>>;

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

/// Accepts connections forever; every WebSocket upgrade (any path) is handed
/// to `on_ws`, any other request gets `200 ok` (a health check).
pub async fn serve<H, F>(listener: TcpListener, on_ws: H)
where
    H: Fn(Ws) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let on_ws = on_ws.clone();
        tokio::spawn(async move {
            let service = service_fn(move |mut req: Request<Incoming>| {
                let on_ws = on_ws.clone();
                async move {
                    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
                        return Ok::<_, Infallible>(text(StatusCode::OK, "ok\n"));
                    }
                    match fastwebsockets::upgrade::upgrade(&mut req) {
                        Ok((response, fut)) => {
                            tokio::spawn(async move {
                                if let Ok(ws) = fut.await {
                                    on_ws(ws).await;
                                }
                            });
                            let (parts, _) = response.into_parts();
                            Ok(Response::from_parts(parts, Full::new(Bytes::new())))
                        }
                        Err(_) => Ok(text(StatusCode::BAD_REQUEST, "bad upgrade\n")),
                    }
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// Room names the baselines accept: what Switchboard accepts for room ids.
pub fn valid_room(r: &[u8]) -> bool {
    !r.is_empty()
        && r.len() <= 64
        && r.iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}
