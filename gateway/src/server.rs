//! The HTTP side: the accept loop with admission control, and the routes
//! `/ws` (WebSocket upgrade), `/healthz` (alive) and `/readyz` (NATS connected,
//! Redis answering and not draining: see `health`).

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::State;
use crate::handshake::{self, SUBPROTOCOL};
use crate::limits::IpRefusal;

type Body = Full<Bytes>;

/// Accepts connections until shutdown. Each HTTP connection is a tracked
/// task that, on shutdown, finishes the request it is serving and closes.
pub async fn accept_loop(state: &Arc<State>, listener: &TcpListener) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        state.tasks.clone().spawn(async move {
            let svc_state = state.clone();
            let ip = peer.ip();
            let service = service_fn(move |req| route(svc_state.clone(), ip, req));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_millis(
                    state.cfg.gateway.handshake_timeout_ms,
                ))
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = state.shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn route(
    state: Arc<State>,
    ip: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if state.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, "/ws") => upgrade(state, ip, req),
        (_, "/ws" | "/healthz" | "/readyz") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

fn upgrade(state: Arc<State>, ip: IpAddr, mut req: Request<Incoming>) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return text(StatusCode::UPGRADE_REQUIRED, "WebSocket upgrade required\n");
    }
    if state.draining.load(Ordering::Relaxed) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    if !state.bus_up() {
        // Nothing a connection asks for could be served: the client retries
        // (with backoff) until the bus is back.
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":{"code":"unavailable","message":"the message bus is unavailable; retry shortly"}}"#
                .to_owned(),
        );
    }
    // Per-address limits come before the token check, so a flood of
    // handshakes costs no signature verification.
    let ip_slot = match state.limits.admit_ip(ip) {
        Ok(slot) => slot,
        Err(refusal) => {
            let (message, retry_after_ms) = match refusal {
                IpRefusal::Rate(d) => (
                    "too many new connections from this address".to_owned(),
                    d.as_millis().max(1) as u64,
                ),
                IpRefusal::Open(max) => {
                    (format!("at most {max} connections from one address"), 1_000)
                }
            };
            tracing::debug!(%ip, %message, "upgrade refused");
            let body = serde_json::json!({"error": {
                "code": "rate_limited", "message": message, "retry_after_ms": retry_after_ms,
            }});
            return json(StatusCode::TOO_MANY_REQUESTS, body.to_string());
        }
    };
    let accepted = match handshake::check(
        req.headers(),
        req.uri().query(),
        &state.cfg.gateway.allowed_origins,
        &state.auth,
    ) {
        Ok(a) => a,
        Err(rej) => {
            tracing::debug!(code = rej.code, reason = %rej.message, "upgrade refused");
            return json(rej.status, rej.body());
        }
    };
    let Ok(permit) = state.conn_limit.clone().try_acquire_owned() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n");
    };
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(error = %e, "bad upgrade request");
            return text(StatusCode::BAD_REQUEST, "bad WebSocket upgrade request\n");
        }
    };
    let timeout = Duration::from_millis(state.cfg.gateway.handshake_timeout_ms);
    state.tasks.clone().spawn(async move {
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(ws)) => crate::conn::serve(state, ws, accepted.identity).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "upgrade failed"),
            Err(_) => tracing::debug!("upgrade timed out"),
        }
        drop(permit);
        drop(ip_slot);
    });
    let (mut parts, _) = response.into_parts();
    if accepted.echo_protocol {
        parts.headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}
