//! Asking every gateway at once: one request on `sb.ctl.gw.all.<cmd>` with
//! a reply inbox, answers collected until `admin.deadline_ms` or until every
//! gateway that presence knows (`keys::GATEWAYS`, by heartbeat) has
//! answered. Known gateways that did not answer are reported, never waited
//! on past the deadline. A gateway too new to be known yet is listed if it
//! answers before the others have.

use std::collections::BTreeMap;
use std::time::Duration;

use deadpool_redis::redis;
use futures::StreamExt;
use switchboard_shared::ids::GatewayId;
use switchboard_shared::keys;
use switchboard_shared::redis::Pool;
use switchboard_shared::subjects::{self, GatewayCommand};
use tonic::Status;

use super::api::unavailable;

/// Gateways presence has recorded heartbeats of: id → last heartbeat (Unix
/// ms). A gateway stays here until presence declares it dead.
pub async fn known_gateways(pool: &Pool) -> Result<BTreeMap<String, u64>, Status> {
    let mut r = pool.get().await.map_err(unavailable)?;
    let rows: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(keys::GATEWAYS)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut r)
        .await
        .map_err(unavailable)?;
    Ok(rows
        .into_iter()
        .filter(|(g, _)| GatewayId::parse(g).is_ok())
        .map(|(g, at)| (g, at as u64))
        .collect())
}

/// What the gateways answered, by gateway id, and the known gateways that
/// did not answer in time.
#[derive(Debug)]
pub struct Gathered<T> {
    pub answers: BTreeMap<String, T>,
    pub unresponsive: Vec<String>,
    /// Every gateway presence knows, with its last heartbeat (Unix ms).
    pub known: BTreeMap<String, u64>,
}

/// Sends `cmd` with `payload` to every gateway and collects the answers
/// (decoded as `T`, keyed by `id(&T)`) until `deadline`.
pub async fn gather<T: prost::Message + Default>(
    nats: &async_nats::Client,
    pool: &Pool,
    cmd: GatewayCommand,
    payload: bytes::Bytes,
    deadline: Duration,
    id: impl Fn(&T) -> &str,
) -> Result<Gathered<T>, Status> {
    let known = known_gateways(pool).await?;
    let inbox = nats.new_inbox();
    let mut sub = nats.subscribe(inbox.clone()).await.map_err(unavailable)?;
    nats.publish_with_reply(subjects::gateway_control_all(cmd), inbox, payload)
        .await
        .map_err(unavailable)?;
    let end = tokio::time::Instant::now() + deadline;
    let mut answers = BTreeMap::new();
    loop {
        if !known.is_empty() && known.keys().all(|g| answers.contains_key(g)) {
            break;
        }
        let msg = tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            m = sub.next() => match m {
                Some(m) => m,
                None => break,
            },
        };
        match T::decode(msg.payload) {
            Ok(a) => {
                answers.insert(id(&a).to_owned(), a);
            }
            Err(e) => tracing::warn!(error = %e, "a gateway's control answer does not decode"),
        }
    }
    let _ = sub.unsubscribe().await;
    let unresponsive = known
        .keys()
        .filter(|g| !answers.contains_key(*g))
        .cloned()
        .collect();
    Ok(Gathered {
        answers,
        unresponsive,
        known,
    })
}

/// Sends `cmd` with `payload` to one gateway and waits for its answer until
/// `deadline`: `NOT_FOUND` when no gateway of that id listens,
/// `UNAVAILABLE` when it does not answer in time.
pub async fn ask<T: prost::Message + Default>(
    nats: &async_nats::Client,
    gw: &GatewayId,
    cmd: GatewayCommand,
    payload: bytes::Bytes,
    deadline: Duration,
) -> Result<T, Status> {
    let asked = nats.request(subjects::gateway_control(gw, cmd), payload);
    let msg = match tokio::time::timeout(deadline, asked).await {
        Err(_) => {
            return Err(Status::unavailable(format!(
                "gateway {gw} did not answer within {} ms",
                deadline.as_millis()
            )));
        }
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            return Err(Status::not_found(format!("no gateway {gw} is running")));
        }
        Ok(Err(e)) => return Err(unavailable(e)),
        Ok(Ok(m)) => m,
    };
    T::decode(msg.payload)
        .map_err(|e| Status::internal(format!("gateway {gw} answered garbage: {e}")))
}
