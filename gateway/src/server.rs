//! The HTTP side: the accept loop with admission control, and the routes
//! `/ws` (WebSocket upgrade), `/healthz` (alive) and `/readyz` (NATS connected,
//! Redis answering and not draining: see `health`).
//!
//! Admission of an upgrade, in order: draining, the bus, per-address limits,
//! the handshake (origin, subprotocol, token), the app's connection quota
//! ([`AppConns`]), `gateway.max_connections`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use switchboard_shared::error::ClientError;
use switchboard_shared::ids::TenantId;
use switchboard_shared::quotas::{self, Quota};
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
        (&Method::GET, "/ws") => upgrade(state, ip, req).await,
        (_, "/ws" | "/healthz" | "/readyz") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

async fn upgrade(state: Arc<State>, ip: IpAddr, mut req: Request<Incoming>) -> Response<Body> {
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
    let who = &accepted.identity;
    if let Some(wait) = state.limits.benched(
        who.tenant.as_str(),
        who.user.as_str(),
        switchboard_shared::now_ms(),
    ) {
        tracing::debug!(user = %who.user, "upgrade refused: closed for abuse lately");
        let body = serde_json::json!({"error": {
            "code": "rate_limited",
            "message": "this user was closed for sending too fast; retry later",
            "retry_after_ms": wait.as_millis().max(1) as u64,
        }});
        return json(StatusCode::TOO_MANY_REQUESTS, body.to_string());
    }
    if let Err(max) = admit_app(&state, &accepted.identity.tenant).await {
        let e = ClientError::limit_exceeded(
            Quota::ConnectionsPerApp,
            max,
            "this app has too many connections open",
        );
        tracing::debug!(app = %accepted.identity.tenant, max, "upgrade refused: app at its connection quota");
        let body = serde_json::json!({"error": e.to_json()});
        return json(StatusCode::TOO_MANY_REQUESTS, body.to_string());
    }
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

/// How fresh an app's connection count must be to decide on it.
const COUNT_FRESH: Duration = Duration::from_secs(1);
/// Longest wait for a count at the handshake; past it the app is admitted.
const COUNT_READ_TIMEOUT: Duration = Duration::from_millis(250);
/// Apps remembered beyond which old counts are forgotten.
const COUNT_APPS: usize = 10_000;

/// Each app's open connections across the cluster (the `connections_per_app`
/// quota), as last read from Redis (the presence service keeps the count),
/// plus the connections this gateway admitted since: the count decides for
/// at most [`COUNT_FRESH`], and only one handshake per app reads it again
/// while the others decide on the previous reading.
#[derive(Debug, Default)]
pub struct AppConns {
    seen: Mutex<HashMap<TenantId, Seen>>,
}

#[derive(Debug)]
struct Seen {
    count: u64,
    read_at: Instant,
    admitted: u64,
    reading: bool,
}

/// What [`AppConns::check`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Admit,
    Refuse,
    /// No fresh count: the caller reads it, then [`AppConns::read`]s.
    Read,
}

impl AppConns {
    fn check(&self, app: &TenantId, max: u64, now: Instant) -> Admission {
        let Ok(mut seen) = self.seen.lock() else {
            return Admission::Admit;
        };
        let Some(s) = seen.get_mut(app) else {
            return Admission::Read;
        };
        if now.duration_since(s.read_at) >= COUNT_FRESH && !s.reading {
            s.reading = true;
            return Admission::Read;
        }
        if s.count.saturating_add(s.admitted) >= max {
            return Admission::Refuse;
        }
        s.admitted += 1;
        Admission::Admit
    }

    /// Stores a count read at `at` (`None`: the read failed).
    fn read(&self, app: &TenantId, count: Option<u64>, at: Instant) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let Some(count) = count else {
            if let Some(s) = seen.get_mut(app) {
                s.reading = false;
            }
            return;
        };
        if seen.len() >= COUNT_APPS {
            seen.retain(|_, s| at.duration_since(s.read_at) < COUNT_FRESH * 60);
        }
        seen.insert(
            app.clone(),
            Seen {
                count,
                read_at: at,
                admitted: 0,
                reading: false,
            },
        );
    }
}

/// Whether one more connection of `app` fits its `connections_per_app`
/// quota; `Err(quota)` when not. When the count cannot be read (Redis down
/// or slow) the connection is admitted: the quota fails open.
async fn admit_app(state: &State, app: &TenantId) -> Result<(), u64> {
    let max = state
        .cfg
        .quotas
        .limit(app.as_str(), Quota::ConnectionsPerApp);
    if max == 0 {
        return Ok(());
    }
    let now = Instant::now();
    match state.app_conns.check(app, max, now) {
        Admission::Admit => return Ok(()),
        Admission::Refuse => return Err(max),
        Admission::Read => {}
    }
    let count = if state.redis_up.load(Ordering::Relaxed) {
        let read = async {
            let mut r = state.redis.get().await.ok()?;
            quotas::app_connections(&mut r, app).await.ok()
        };
        tokio::time::timeout(COUNT_READ_TIMEOUT, read)
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    state.app_conns.read(app, count, now);
    if count.is_none() {
        tracing::debug!(%app, "app connection count unreadable: admitting");
        return Ok(());
    }
    match state.app_conns.check(app, max, now) {
        Admission::Refuse => Err(max),
        Admission::Admit | Admission::Read => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_count_and_local_admissions_decide_then_one_caller_reads_again() {
        let c = AppConns::default();
        let app = TenantId::parse("a").unwrap_or_else(|e| panic!("{e}"));
        let t0 = Instant::now();
        assert_eq!(c.check(&app, 3, t0), Admission::Read);
        c.read(&app, Some(1), t0);
        assert_eq!(c.check(&app, 3, t0), Admission::Admit);
        assert_eq!(c.check(&app, 3, t0), Admission::Admit);
        assert_eq!(c.check(&app, 3, t0), Admission::Refuse, "1 + 2 admitted");
        let later = t0 + COUNT_FRESH;
        assert_eq!(c.check(&app, 3, later), Admission::Read);
        assert_eq!(
            c.check(&app, 3, later),
            Admission::Refuse,
            "others decide on the old count meanwhile"
        );
        c.read(&app, Some(0), later);
        assert_eq!(c.check(&app, 3, later), Admission::Admit);
        // A failed read lets the next caller try again.
        let much_later = later + COUNT_FRESH;
        assert_eq!(c.check(&app, 3, much_later), Admission::Read);
        c.read(&app, None, much_later);
        assert_eq!(c.check(&app, 3, much_later), Admission::Read);
    }
}
