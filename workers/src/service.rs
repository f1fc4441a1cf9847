//! The generic worker runner: subscribes a service to its request subjects
//! (`sb.svc.<service>.*`) and to connection events as a queue group, decodes
//! envelopes, bounds concurrency, and sends exactly one reply per request.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use switchboard_proto::bus::{
    ConnEvent, ConnRef, Error as BusErrorMsg, Interest, Push, ReplayBatch, ReplayRequest, Reply,
    Request, conn_event,
};
use switchboard_shared::error::{ClientError, ErrorCode};
use switchboard_shared::ids::{GatewayId, TenantId, UserId};
use switchboard_shared::keys;
use switchboard_shared::{Shutdown, bus, subjects};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::WorkerError;

/// What a successful request produces.
#[derive(Debug, Default)]
pub struct Outcome {
    /// JSON for the client's `data`.
    pub data: Vec<u8>,
    pub attach: Vec<Interest>,
    pub detach: Vec<String>,
}

impl Outcome {
    pub fn json(v: &serde_json::Value) -> Self {
        Self {
            data: serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec()),
            ..Self::default()
        }
    }
}

/// A worker service.
pub trait Service: Send + Sync + 'static {
    /// The service name: subject token and queue group.
    fn name(&self) -> &'static str;

    /// Handles one client request for `op`.
    fn handle(
        &self,
        op: &str,
        req: Request,
    ) -> impl Future<Output = Result<Outcome, ClientError>> + Send;

    /// Returns a range of a sequenced feed, for a gateway filling a gap.
    fn replay(
        &self,
        req: ReplayRequest,
    ) -> impl Future<Output = Result<ReplayBatch, ClientError>> + Send;

    /// Reacts to a connection event (one replica of the service gets each).
    fn on_conn_event(&self, ev: ConnEvent) -> impl Future<Output = ()> + Send;
}

/// Who is asking, from the envelope the gateway built (tenant and user come
/// from the verified token, never from client data).
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantId,
    pub user: UserId,
    pub gw: GatewayId,
    pub conn: u64,
    /// Room grants from the token.
    pub grants: Vec<String>,
}

impl Caller {
    pub fn from_request(req: &Request) -> Result<Self, ClientError> {
        let bad = |what: &str| {
            ClientError::new(ErrorCode::Internal, format!("malformed envelope: {what}"))
        };
        let conn = req.conn.as_ref().ok_or_else(|| bad("conn"))?;
        Ok(Self {
            tenant: TenantId::parse(&req.tenant).map_err(|_| bad("tenant"))?,
            user: UserId::parse(&req.user).map_err(|_| bad("user"))?,
            gw: GatewayId::parse(&conn.gateway).map_err(|_| bad("gateway"))?,
            conn: conn.conn,
            grants: req.grants.clone(),
        })
    }

    /// `<gateway>:<conn>`, the connection's name in Redis.
    pub fn member(&self) -> String {
        keys::conn_member(&self.gw, self.conn)
    }

    pub fn origin(&self) -> ConnRef {
        ConnRef {
            gateway: self.gw.to_string(),
            conn: self.conn,
        }
    }
}

/// A connection event's fields, validated: `(kind, gateway, conn, tenant,
/// user)`. Heartbeats carry no tenant or user and come back as `None`.
pub fn conn_event_parts(
    ev: &ConnEvent,
) -> Option<(conn_event::Kind, GatewayId, u64, TenantId, UserId)> {
    let conn = ev.conn.as_ref()?;
    Some((
        ev.kind(),
        GatewayId::parse(&conn.gateway).ok()?,
        conn.conn,
        TenantId::parse(&ev.tenant).ok()?,
        UserId::parse(&ev.user).ok()?,
    ))
}

/// `{"event": <event>, "data": <data>}`, the client frame of a push.
pub fn event_frame(event: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(serde_json::json!({"event": event, "data": data}).to_string())
}

/// Sends a client frame to one connection, on its per-connection subject.
pub async fn push_to_conn(nats: &async_nats::Client, gw: &GatewayId, conn: u64, frame: Bytes) {
    let push = Push {
        frame,
        ..Push::default()
    };
    if let Err(e) = nats
        .publish(subjects::conn(gw, conn), bus::encode(&push))
        .await
    {
        tracing::warn!(error = %e, "could not push to a connection");
    }
}

/// `<gateway>:<conn>` (see [`Caller::member`]) back into its parts.
pub fn split_member(member: &str) -> Option<(GatewayId, u64)> {
    let (gw, conn) = member.rsplit_once(':')?;
    Some((GatewayId::parse(gw).ok()?, conn.parse().ok()?))
}

/// How long a connection's "gone" marker outlives its disconnect: long enough
/// for any `CONNECTED` event of that connection still in flight.
pub const GONE_TTL_SECS: u64 = 600;

/// Adds "this connection is gone" to `pipe`. A `CONNECTED` handled after the
/// `DISCONNECTED` of the same connection sees it and undoes itself.
pub fn mark_gone<'a>(
    pipe: &'a mut deadpool_redis::redis::Pipeline,
    gw: &GatewayId,
    conn: u64,
) -> &'a mut deadpool_redis::redis::Pipeline {
    pipe.cmd("SET")
        .arg(keys::conn_gone(gw, conn))
        .arg(1)
        .arg("EX")
        .arg(GONE_TTL_SECS)
        .ignore()
}

/// Parses a request's JSON payload into `T`, with a client-facing error.
/// Absent data (`null`) reads as `{}`, so ops whose fields are all optional
/// need no `data`.
pub fn parse<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, ClientError> {
    let payload: &[u8] = match req.payload.as_ref() {
        b"" | b"null" => b"{}",
        p => p,
    };
    serde_json::from_slice(payload)
        .map_err(|e| ClientError::new(ErrorCode::BadRequest, format!("invalid data: {e}")))
}

/// A service's queue-group subscriptions: its requests and connection events.
pub struct Subscriptions {
    requests: async_nats::Subscriber,
    events: async_nats::Subscriber,
}

/// Subscribes the queue group `name` to its subjects.
pub async fn subscribe(
    nats: &async_nats::Client,
    name: &str,
) -> Result<Subscriptions, WorkerError> {
    Ok(Subscriptions {
        requests: nats
            .queue_subscribe(subjects::service_wildcard(name), name.to_owned())
            .await?,
        events: nats
            .queue_subscribe(subjects::CONN_EVENTS, name.to_owned())
            .await?,
    })
}

/// Serves `svc` until `shutdown`, then waits for in-flight handlers.
pub async fn serve<S: Service>(
    svc: Arc<S>,
    subs: Subscriptions,
    nats: async_nats::Client,
    concurrency: usize,
    shutdown: Shutdown,
) -> Result<(), WorkerError> {
    let name = svc.name();
    let Subscriptions {
        mut requests,
        mut events,
    } = subs;
    let limit = Arc::new(Semaphore::new(concurrency));
    tracing::info!(service = name, "serving");
    // On shutdown: drain (unsubscribe, then handle what was already delivered
    // to this replica), so no request routed here goes unanswered.
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let (mut requests_open, mut events_open) = (true, true);
    while requests_open || events_open {
        tokio::select! {
            _ = shutdown.cancelled(), if drain_deadline.is_none() => {
                drain_deadline = Some(tokio::time::Instant::now() + std::time::Duration::from_secs(5));
                if let Err(e) = requests.drain().await {
                    tracing::warn!(error = %e, "drain failed");
                }
                let _ = events.drain().await;
            }
            _ = switchboard_shared::sleep_until_opt(drain_deadline), if drain_deadline.is_some() => break,
            msg = requests.next(), if requests_open => {
                let Some(msg) = msg else { requests_open = false; continue };
                let Ok(permit) = limit.clone().acquire_owned().await else { break };
                let svc = svc.clone();
                let nats = nats.clone();
                tokio::spawn(async move {
                    handle_request(&*svc, &nats, msg).await;
                    drop(permit);
                });
            }
            ev = events.next(), if events_open => {
                let Some(ev) = ev else { events_open = false; continue };
                match bus::decode::<ConnEvent>(&ev.payload) {
                    Ok(ev) => {
                        let Ok(permit) = limit.clone().acquire_owned().await else { break };
                        let svc = svc.clone();
                        tokio::spawn(async move {
                            svc.on_conn_event(ev).await;
                            drop(permit);
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "dropping malformed connection event"),
                }
            }
        }
    }
    // Wait for in-flight handlers.
    let _ = limit.acquire_many(concurrency as u32).await;
    tracing::info!(service = name, "stopped");
    Ok(())
}

fn error_reply(e: &ClientError) -> Reply {
    Reply {
        ok: false,
        error: Some(BusErrorMsg {
            code: e.code.as_str().to_owned(),
            message: e.message.clone(),
        }),
        ..Reply::default()
    }
}

async fn handle_request<S: Service>(svc: &S, nats: &async_nats::Client, msg: async_nats::Message) {
    let Some(reply_to) = msg.reply.clone() else {
        tracing::debug!(subject = %msg.subject, "request without reply subject dropped");
        return;
    };
    let op = msg
        .subject
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    let reply = if op == subjects::REPLAY_OP {
        match bus::decode::<ReplayRequest>(&msg.payload) {
            Ok(req) => match svc.replay(req).await {
                Ok(batch) => Reply {
                    ok: true,
                    data: bus::encode(&batch),
                    ..Reply::default()
                },
                Err(e) => error_reply(&e),
            },
            Err(e) => error_reply(&ClientError::new(ErrorCode::BadRequest, e.to_string())),
        }
    } else {
        match bus::decode::<Request>(&msg.payload) {
            Ok(req) => {
                let span = tracing::debug_span!("request", service = svc.name(), %op, traceparent = %req.traceparent);
                match svc.handle(&op, req).instrument(span).await {
                    Ok(out) => Reply {
                        ok: true,
                        data: Bytes::from(out.data),
                        error: None,
                        attach: out.attach,
                        detach: out.detach,
                    },
                    Err(e) => error_reply(&e),
                }
            }
            Err(e) => error_reply(&ClientError::new(ErrorCode::BadRequest, e.to_string())),
        }
    };
    if let Err(e) = nats.publish(reply_to, bus::encode(&reply)).await {
        tracing::warn!(error = %e, "could not publish reply");
    }
}
