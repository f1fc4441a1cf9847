//! The runner every service shares: subscribes a service to its request
//! subjects (`sb.svc.<service>.*`), to connection events and to its backend
//! API subjects, each as a queue group; decodes envelopes; bounds
//! concurrency; sends exactly one reply per request; and on shutdown drains
//! (unsubscribes, then finishes what was already delivered), under a deadline.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use switchboard_proto::bus::{Error as BusErrorMsg, ReplayRequest, Reply, Request};
use switchboard_shared::conn_events::ConnLifecycle;
use switchboard_shared::error::ClientError;
use switchboard_shared::{Shutdown, bus, subjects};
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::Service;
use crate::WorkerError;
use crate::error::{ErrorKind, ServiceError};

/// How long a stopping service waits for requests already delivered to it.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// A service's queue-group subscriptions.
pub struct Subscriptions {
    requests: async_nats::Subscriber,
    events: async_nats::Subscriber,
    api: Vec<async_nats::Subscriber>,
}

/// Subscribes the queue group of `svc` to its subjects.
pub async fn subscribe<S: Service>(
    nats: &async_nats::Client,
    svc: &S,
) -> Result<Subscriptions, WorkerError> {
    let name = svc.name();
    let mut api = Vec::new();
    for subject in svc.api_subjects() {
        api.push(nats.queue_subscribe(*subject, name.to_owned()).await?);
    }
    Ok(Subscriptions {
        requests: nats
            .queue_subscribe(subjects::service_wildcard(name), name.to_owned())
            .await?,
        events: nats
            .queue_subscribe(subjects::CONN_EVENTS, name.to_owned())
            .await?,
        api,
    })
}

/// One message for the service, from any of its subscriptions.
enum Inbound {
    Request(async_nats::Message),
    Event(async_nats::Message),
    Api(async_nats::Message),
}

/// Serves `svc` until `shutdown`, then waits (bounded) for in-flight work.
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
        api,
    } = subs;
    let limit = Arc::new(Semaphore::new(concurrency));
    tracing::info!(service = name, "serving");
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let (mut requests_open, mut events_open) = (true, true);
    let mut api_open = !api.is_empty();
    let mut api = futures::stream::select_all(api);
    while requests_open || events_open || api_open {
        let inbound = tokio::select! {
            _ = shutdown.cancelled(), if drain_deadline.is_none() => {
                // Drain: unsubscribe, then handle what was already delivered
                // to this replica, so no request routed here goes unanswered.
                drain_deadline = Some(tokio::time::Instant::now() + DRAIN_DEADLINE);
                if let Err(e) = requests.drain().await {
                    tracing::warn!(service = name, error = %e, "draining requests failed");
                }
                if let Err(e) = events.drain().await {
                    tracing::warn!(service = name, error = %e, "draining connection events failed");
                }
                for sub in api.iter_mut() {
                    if let Err(e) = sub.drain().await {
                        tracing::warn!(service = name, error = %e, "draining the backend API failed");
                    }
                }
                continue;
            }
            _ = switchboard_shared::sleep_until_opt(drain_deadline), if drain_deadline.is_some() => break,
            msg = requests.next(), if requests_open => match msg {
                Some(m) => Inbound::Request(m),
                None => { requests_open = false; continue }
            },
            ev = events.next(), if events_open => match ev {
                Some(m) => Inbound::Event(m),
                None => { events_open = false; continue }
            },
            msg = api.next(), if api_open => match msg {
                Some(m) => Inbound::Api(m),
                None => { api_open = false; continue }
            },
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let svc = svc.clone();
        let nats = nats.clone();
        tokio::spawn(async move {
            match inbound {
                Inbound::Request(msg) => handle_request(&*svc, &nats, msg).await,
                Inbound::Event(msg) => match ConnLifecycle::decode(&msg.payload) {
                    Ok(ev) => svc.on_conn_event(ev).await,
                    Err(e) => {
                        tracing::warn!(service = svc.name(), error = %e, "dropping a malformed connection event")
                    }
                },
                Inbound::Api(msg) => {
                    let body = svc.handle_api(&msg.subject, msg.payload).await;
                    if let Some(reply) = msg.reply
                        && let Err(e) = nats.publish(reply, body).await
                    {
                        tracing::warn!(service = svc.name(), error = %e, "could not answer a backend API request");
                    }
                }
            }
            drop(permit);
        });
    }
    // Wait for in-flight handlers, bounded.
    let deadline = drain_deadline.unwrap_or_else(|| tokio::time::Instant::now() + DRAIN_DEADLINE);
    if tokio::time::timeout_at(deadline, limit.acquire_many(concurrency as u32))
        .await
        .is_err()
    {
        tracing::warn!(service = name, "stopped with handlers still running");
    }
    tracing::info!(service = name, "stopped");
    Ok(())
}

/// A failed request's reply. Its `data` (unused when not ok) carries the
/// error's extra fields as a JSON object, here the quota of a
/// `limit_exceeded`; the gateway adds them to the client's error object.
fn error_reply(e: &ClientError) -> Reply {
    Reply {
        ok: false,
        data: e
            .exceeded
            .as_ref()
            .map(|x| Bytes::from(x.to_json().to_string()))
            .unwrap_or_default(),
        error: Some(BusErrorMsg {
            code: e.code.as_str().to_owned(),
            message: e.message.clone(),
        }),
        ..Reply::default()
    }
}

/// The client's view of a failed request; failures that are ours are logged
/// here, once, with the service and op.
fn failed(service: &str, op: &str, e: ServiceError) -> Reply {
    match e.kind() {
        ErrorKind::Client(_) => {}
        kind => tracing::error!(service, op, ?kind, error = %e, "request failed"),
    }
    error_reply(&e.to_client())
}

async fn handle_request<S: Service>(svc: &S, nats: &async_nats::Client, msg: async_nats::Message) {
    let Some(reply_to) = msg.reply.clone() else {
        tracing::debug!(subject = %msg.subject, "request without reply subject dropped");
        return;
    };
    let name = svc.name();
    let op = msg.subject.rsplit('.').next().unwrap_or_default();
    let reply = if op == subjects::REPLAY_OP {
        match bus::decode::<ReplayRequest>(&msg.payload) {
            Ok(req) => match svc.replay(req).await {
                Ok(batch) => Reply {
                    ok: true,
                    data: bus::encode(&batch),
                    ..Reply::default()
                },
                Err(e) => failed(name, op, e),
            },
            Err(e) => failed(name, op, ServiceError::bad_request(e.to_string())),
        }
    } else {
        match bus::decode::<Request>(&msg.payload) {
            Ok(req) => {
                let span = tracing::debug_span!("request", service = name, %op, traceparent = %req.traceparent);
                match svc.handle(op, req).instrument(span).await {
                    Ok(out) => Reply {
                        ok: true,
                        data: Bytes::from(out.data),
                        error: None,
                        attach: out.attach,
                        detach: out.detach,
                    },
                    Err(e) => failed(name, op, e),
                }
            }
            Err(e) => failed(name, op, ServiceError::bad_request(e.to_string())),
        }
    };
    if let Err(e) = nats.publish(reply_to, bus::encode(&reply)).await {
        tracing::warn!(service = name, error = %e, "could not publish reply");
    }
}
