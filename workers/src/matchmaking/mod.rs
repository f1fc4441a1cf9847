//! The `matchmaking` service: a per-app queue of tickets (properties plus a
//! query of required / optional terms and numeric ranges, and a group
//! size), matched continuously into private rooms made by the rooms service.
//!
//! Invariants:
//! - One ticket per user per app; joining again replaces it. A ticket leaves
//!   the queue exactly once: matched (claimed), left, its connection gone,
//!   or expired after `matchmaking.ticket_ttl_secs`.
//! - All of an app's queue lives under one hash tag (`sb:{mm:<app>}:…`), and
//!   every change is one Lua script, so replicas run concurrently without
//!   locks. A matching pass loads a bounded window in one round trip,
//!   proposes groups in memory (see `matcher`), then claims each group with
//!   one script that removes all its tickets only if all are still waiting:
//!   no ticket is ever matched twice, whatever the number of replicas.
//! - Tickets of different apps never meet: queues are per app.
//! - A claimed group gets a room through `sb.svc.rooms._create_for`, then
//!   each member a `match_found` push on the connection that joined. When
//!   the room cannot be made, the tickets go back to the queue.
//! - Waiting tickets get `queue_status` every `matchmaking.status_interval_ms`
//!   from one replica per app (a short Redis lease).

mod matcher;
mod scripts;
mod ticket;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::redis;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_proto::bus::{Push, Reply, Request};
use switchboard_shared::config::MatchmakingConfig;
use switchboard_shared::error::ErrorCode;
use switchboard_shared::ids::{GatewayId, TenantId, UserId};
use switchboard_shared::redis::Pool;
use switchboard_shared::{bus, now_ms, subjects};

use crate::error::ServiceError;
use crate::service::{Caller, Outcome, Service, parse};
use switchboard_shared::conn_events::ConnLifecycle;
use ticket::{JoinReq, Ticket};

/// Set of app ids with (possibly) waiting tickets: where passes look.
const TENANTS: &str = "sb:{mm}:tenants";

/// How long a closed connection stays marked gone (joins racing with the
/// disconnect are refused meanwhile).
const GONE_TTL_SECS: u64 = 600;

/// Tickets expired per app per tick (the rest go on the next tick).
const EXPIRE_BATCH: u64 = 500;

/// Queue slice read per round trip when sending position updates.
const STATUS_PAGE: i64 = 2_000;

/// Room creations in flight at once per pass.
const ROOM_CONCURRENCY: usize = 128;

/// How long to wait for the rooms service.
const ROOM_TIMEOUT: Duration = Duration::from_secs(5);

/// Match-rate window for wait estimates.
const RATE_WINDOW_MS: u64 = 60_000;

/// The keys of one app's queue, all under the hash tag `{mm:<app>}`.
#[derive(Debug, Clone)]
struct MmKeys {
    /// Sorted set: ticket id → enqueued at (ms). Waiting = member here.
    queue: String,
    /// Hash: ticket id → ticket JSON.
    tickets: String,
    /// Hash: ticket id → `<gateway>|<conn>|<user>`.
    owners: String,
    /// Hash: user → ticket id.
    users: String,
    /// Sorted set: ticket id → expires at (ms).
    expiry: String,
    /// List of recent matches, newest first: `<ms> <tickets>`.
    stats: String,
    /// Hash: `last_pass` (ms of the latest matching pass).
    meta: String,
    /// String: set while one replica sends this app's position updates.
    status_lease: String,
    tag: String,
}

impl MmKeys {
    fn new(tenant: &TenantId) -> Self {
        let tag = format!("sb:{{mm:{tenant}}}");
        Self {
            queue: format!("{tag}:queue"),
            tickets: format!("{tag}:tickets"),
            owners: format!("{tag}:owners"),
            users: format!("{tag}:users"),
            expiry: format!("{tag}:expiry"),
            stats: format!("{tag}:stats"),
            meta: format!("{tag}:meta"),
            status_lease: format!("{tag}:status_lease"),
            tag,
        }
    }

    /// In the order the Lua scripts expect them as KEYS.
    fn all(&self) -> [&str; 7] {
        [
            &self.queue,
            &self.tickets,
            &self.owners,
            &self.users,
            &self.expiry,
            &self.stats,
            &self.meta,
        ]
    }

    /// Marks a closed connection (same slot as the queue).
    fn gone(&self, gw: &str, conn: u64) -> String {
        format!("{}:gone:{gw}:{conn}", self.tag)
    }
}

/// Why a matched group got no room.
#[derive(Debug, thiserror::Error)]
enum RoomError {
    #[error("no answer from the rooms service within {0:?}")]
    Timeout(Duration),
    #[error("request to the rooms service failed: {0}")]
    Request(#[from] async_nats::RequestError),
    #[error("malformed reply from the rooms service: {0}")]
    Decode(#[from] bus::BusError),
    #[error("rooms service refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("rooms service reply has no room id")]
    NoRoom,
}

/// The matchmaking service.
pub struct Matchmaking {
    inner: Arc<Inner>,
}

struct Inner {
    nats: async_nats::Client,
    pool: Pool,
    cfg: MatchmakingConfig,
    /// A status round is running in the background.
    status_running: AtomicBool,
    /// When this replica last started a status round (ms).
    last_status_ms: AtomicU64,
}

/// `gw|conn|user`: the connection that owns a ticket.
fn caller_owner(c: &Caller) -> String {
    owner(c.gw.as_str(), c.conn, c.user.as_str())
}

fn owner(gw: &str, conn: u64, user: &str) -> String {
    format!("{gw}|{conn}|{user}")
}

/// Splits an owner into its gateway and connection.
fn parse_owner(o: &str) -> Option<(GatewayId, u64)> {
    let mut parts = o.splitn(3, '|');
    let gw = GatewayId::parse(parts.next()?).ok()?;
    let conn = parts.next()?.parse().ok()?;
    Some((gw, conn))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Script {
        script: "matchmaking",
        detail: e.to_string(),
    }
}

/// A fresh ticket id (`t` + 20 base-32 characters).
fn new_ticket_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut rng = rand::rng();
    let mut s = String::with_capacity(21);
    s.push('t');
    for _ in 0..20 {
        s.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    s
}

/// Estimated wait for the ticket at 1-based `position`, from how many
/// tickets this app matched per second over the last minute (counting at
/// least 10 s, so one early match does not promise the moon). `None` when
/// nothing was matched recently: there is no honest number to give.
fn estimate_wait_ms(stats: &[String], now: u64, position: u64) -> Option<u64> {
    let mut matched = 0u64;
    let mut oldest = now;
    for entry in stats {
        let mut it = entry.split(' ');
        let (Some(Ok(ts)), Some(Ok(n))) = (
            it.next().map(str::parse::<u64>),
            it.next().map(str::parse::<u64>),
        ) else {
            continue;
        };
        if ts + RATE_WINDOW_MS < now {
            continue;
        }
        matched += n;
        oldest = oldest.min(ts);
    }
    if matched == 0 {
        return None;
    }
    let span = now.saturating_sub(oldest).clamp(10_000, RATE_WINDOW_MS);
    Some(position.saturating_mul(span) / matched)
}

fn push_bytes(event: &str, data: Value) -> Bytes {
    let frame = json!({"event": event, "data": data});
    bus::encode(&Push {
        frame: Bytes::from(serde_json::to_vec(&frame).unwrap_or_default()),
        ..Push::default()
    })
}

impl Matchmaking {
    pub fn new(nats: async_nats::Client, pool: Pool, cfg: MatchmakingConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                nats,
                pool,
                cfg,
                status_running: AtomicBool::new(false),
                last_status_ms: AtomicU64::new(0),
            }),
        }
    }

    /// One matching pass (called every `matchmaking.tick_ms`): matches and
    /// expires tickets of every app with waiting tickets, and starts a
    /// round of position updates when one is due.
    pub async fn tick(&self) {
        let inner = &self.inner;
        let tenants: Vec<String> = match inner.conn().await {
            Ok(mut r) => match redis::cmd("SMEMBERS")
                .arg(TENANTS)
                .query_async(&mut r)
                .await
            {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "matchmaking: listing apps failed");
                    return;
                }
            },
            Err(_) => return,
        };
        let tenants: Vec<TenantId> = tenants
            .iter()
            .filter_map(|t| TenantId::parse(t).ok())
            .collect();
        for t in &tenants {
            inner.pass(t).await;
            inner.expire(t).await;
        }
        let now = now_ms();
        let last = inner.last_status_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= inner.cfg.status_interval_ms.max(1)
            && !inner.status_running.swap(true, Ordering::AcqRel)
        {
            inner.last_status_ms.store(now, Ordering::Relaxed);
            let inner = self.inner.clone();
            tokio::spawn(async move {
                for t in &tenants {
                    inner.status_round(t).await;
                }
                inner.status_running.store(false, Ordering::Release);
            });
        }
    }
}

impl Inner {
    async fn conn(&self) -> Result<deadpool_redis::Connection, ServiceError> {
        self.pool.get().await.map_err(internal)
    }

    async fn push_to(&self, gw: &GatewayId, conn: u64, push: Bytes) {
        if let Err(e) = self.nats.publish(subjects::conn(gw, conn), push).await {
            tracing::warn!(error = %e, "matchmaking: could not push");
        }
    }

    async fn join(&self, c: &Caller, req: JoinReq) -> Result<Outcome, ServiceError> {
        let spec = req.validate()?;
        let k = MmKeys::new(&c.tenant);
        let now = now_ms();
        let t = Ticket {
            id: new_ticket_id(),
            user: c.user.to_string(),
            gw: c.gw.to_string(),
            conn: c.conn,
            at: now,
            exp: now.saturating_add(self.cfg.ticket_ttl_secs.max(1).saturating_mul(1000)),
            min: spec.min,
            max: spec.max,
            props: spec.props,
            required: spec.required,
            optional: spec.optional,
        };
        let stored = serde_json::to_string(&t).map_err(internal)?;
        let mut r = self.conn().await?;
        let (status, rank, waiting, replaced): (i64, u64, u64, String) = scripts::JOIN
            .key(k.all().as_slice())
            .key(k.gone(&t.gw, t.conn))
            .arg(&t.id)
            .arg(&t.user)
            .arg(caller_owner(c))
            .arg(&stored)
            .arg(t.at)
            .arg(t.exp)
            .invoke_async(&mut r)
            .await
            .map_err(internal)?;
        if status == -1 {
            return Err(ServiceError::client(
                ErrorCode::NotFound,
                "connection is closed",
            ));
        }
        let (_, stats): (i64, Vec<String>) = redis::pipe()
            .sadd(TENANTS, c.tenant.as_str())
            .lrange(&k.stats, 0, -1)
            .query_async(&mut r)
            .await
            .map_err(internal)?;
        let position = rank + 1;
        Ok(Outcome::json(&json!({
            "ticket": t.id,
            "position": position,
            "waiting": waiting,
            "estimated_wait_ms": estimate_wait_ms(&stats, now, position),
            "expires_at": t.exp,
            "replaced": if replaced.is_empty() { Value::Null } else { Value::from(replaced) },
        })))
    }

    async fn leave(&self, c: &Caller) -> Result<Outcome, ServiceError> {
        let k = MmKeys::new(&c.tenant);
        let mut r = self.conn().await?;
        let id: String = scripts::LEAVE
            .key(k.all().as_slice())
            .key(k.gone(c.gw.as_str(), c.conn))
            .arg(c.user.as_str())
            .arg("")
            .arg(0)
            .invoke_async(&mut r)
            .await
            .map_err(internal)?;
        Ok(Outcome::json(&json!({
            "left": !id.is_empty(),
            "ticket": if id.is_empty() { Value::Null } else { Value::from(id) },
        })))
    }

    async fn status(&self, c: &Caller) -> Result<Outcome, ServiceError> {
        let k = MmKeys::new(&c.tenant);
        let mut r = self.conn().await?;
        let (id, stored, rank, waiting, last_pass, stats): (
            String,
            String,
            u64,
            u64,
            u64,
            Vec<String>,
        ) = scripts::STATUS
            .key(k.all().as_slice())
            .arg(c.user.as_str())
            .invoke_async(&mut r)
            .await
            .map_err(internal)?;
        if id.is_empty() {
            return Err(ServiceError::client(
                ErrorCode::NotFound,
                "no ticket: join the queue first",
            ));
        }
        let t: Ticket = serde_json::from_str(&stored).map_err(internal)?;
        let now = now_ms();
        let position = rank + 1;
        Ok(Outcome::json(&json!({
            "ticket": id,
            "state": "waiting",
            "position": position,
            "waiting": waiting,
            "estimated_wait_ms": estimate_wait_ms(&stats, now, position),
            "waited_ms": now.saturating_sub(t.at),
            "relaxed": t.relaxed(now, &self.cfg.relax_after_secs),
            "enqueued_at": t.at,
            "expires_at": t.exp,
            "last_pass_at": last_pass,
            "min": t.min,
            "max": t.max,
            "props": t.props_json(),
            "query": t.query_json(),
        })))
    }

    async fn disconnected(&self, tenant: &TenantId, user: &UserId, gw: &GatewayId, conn: u64) {
        let k = MmKeys::new(tenant);
        let Ok(mut r) = self.conn().await else { return };
        let res: Result<String, _> = scripts::LEAVE
            .key(k.all().as_slice())
            .key(k.gone(gw.as_str(), conn))
            .arg(user.as_str())
            .arg(owner(gw.as_str(), conn, user.as_str()))
            .arg(GONE_TTL_SECS)
            .invoke_async(&mut r)
            .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "matchmaking: disconnect cleanup failed");
        }
    }

    /// One matching pass over one app's queue.
    async fn pass(&self, tenant: &TenantId) {
        let k = MmKeys::new(tenant);
        let Ok(mut r) = self.conn().await else { return };
        let started = std::time::Instant::now();
        let now = now_ms();
        let window = self.cfg.max_tickets_per_pass.max(2);
        let loaded: Result<(u64, Vec<String>), _> = scripts::LOAD
            .key(k.all().as_slice())
            .arg(now)
            .arg(window)
            .arg(rand::random_range(0..1_000_000u32))
            .invoke_async(&mut r)
            .await;
        let (waiting, raw) = match loaded {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, tenant = %tenant, "matchmaking: loading the queue failed");
                return;
            }
        };
        if waiting == 0 {
            drop(r);
            self.forget_if_empty(tenant, &k).await;
            return;
        }
        let mut tickets: Vec<Ticket> = raw
            .iter()
            .filter_map(|s| match serde_json::from_str(s) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "matchmaking: unreadable ticket skipped");
                    None
                }
            })
            .collect();
        tickets.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
        tickets.dedup_by(|a, b| a.id == b.id);
        let loaded_in = started.elapsed();
        let groups = matcher::propose(&tickets, now, &self.cfg.relax_after_secs);
        let proposed_in = started.elapsed();
        if groups.is_empty() {
            return;
        }
        // One round trip claims every proposed group, each atomically.
        let mut pipe = redis::pipe();
        pipe.load_script(&scripts::CLAIM).ignore();
        let invocations: Vec<_> = groups
            .iter()
            .map(|g| {
                let mut inv = scripts::CLAIM.prepare_invoke();
                inv.key(k.all().as_slice()).arg(now);
                for &i in g {
                    inv.arg(&tickets[i].id).arg(&tickets[i].user);
                }
                inv
            })
            .collect();
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        let claimed: Vec<i64> = match pipe.query_async(&mut r).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "matchmaking: claiming matches failed");
                return;
            }
        };
        drop(r);
        let won: Vec<Vec<&Ticket>> = groups
            .iter()
            .zip(claimed)
            .filter(|(_, ok)| *ok == 1)
            .map(|(g, _)| g.iter().map(|&i| &tickets[i]).collect())
            .collect();
        let claimed_in = started.elapsed();
        let k = &k;
        futures::stream::iter(won.iter())
            .for_each_concurrent(ROOM_CONCURRENCY, |g| self.complete(tenant, k, g))
            .await;
        tracing::debug!(
            tenant = %tenant, waiting, loaded = tickets.len(), proposed = groups.len(),
            matched = won.len(), ?loaded_in, ?proposed_in, ?claimed_in, total = ?started.elapsed(),
            "matchmaking pass"
        );
    }

    /// Makes the room for a claimed group and tells its members; puts the
    /// tickets back when the room cannot be made.
    async fn complete(&self, tenant: &TenantId, k: &MmKeys, group: &[&Ticket]) {
        let room = match self.create_room(tenant, group).await {
            Ok(room) => room,
            Err(e) => {
                tracing::warn!(error = %e, tenant = %tenant, "matchmaking: no room for a match; requeueing");
                self.requeue(k, group).await;
                return;
            }
        };
        for me in group {
            let peers: Vec<Value> = group
                .iter()
                .filter(|p| p.id != me.id)
                .map(|p| json!({"user": p.user, "props": p.props_json()}))
                .collect();
            let Ok(gw) = GatewayId::parse(&me.gw) else {
                continue;
            };
            let data = json!({"ticket": me.id, "room": room, "peers": peers});
            self.push_to(&gw, me.conn, push_bytes("match_found", data))
                .await;
        }
    }

    async fn create_room(&self, tenant: &TenantId, group: &[&Ticket]) -> Result<String, RoomError> {
        let members: Vec<&str> = group.iter().map(|t| t.user.as_str()).collect();
        let payload = json!({"members": members, "max_members": group.len()});
        let req = Request {
            tenant: tenant.to_string(),
            op: "_create_for".into(),
            payload: Bytes::from(serde_json::to_vec(&payload).unwrap_or_default()),
            ..Request::default()
        };
        let msg = tokio::time::timeout(
            ROOM_TIMEOUT,
            self.nats.request(
                subjects::service_op("rooms", "_create_for"),
                bus::encode(&req),
            ),
        )
        .await
        .map_err(|_| RoomError::Timeout(ROOM_TIMEOUT))??;
        let reply: Reply = bus::decode(&msg.payload)?;
        if !reply.ok {
            let e = reply.error.unwrap_or_default();
            return Err(RoomError::Refused {
                code: e.code,
                message: e.message,
            });
        }
        let data: Value = serde_json::from_slice(&reply.data).map_err(|_| RoomError::NoRoom)?;
        data["room"]
            .as_str()
            .map(str::to_owned)
            .ok_or(RoomError::NoRoom)
    }

    async fn requeue(&self, k: &MmKeys, group: &[&Ticket]) {
        let Ok(mut r) = self.conn().await else { return };
        let mut inv = scripts::REQUEUE.prepare_invoke();
        inv.key(k.all().as_slice());
        for t in group {
            inv.key(k.gone(&t.gw, t.conn));
        }
        for t in group {
            inv.arg(&t.id)
                .arg(&t.user)
                .arg(owner(&t.gw, t.conn, &t.user))
                .arg(serde_json::to_string(t).unwrap_or_default())
                .arg(t.at)
                .arg(t.exp);
        }
        if let Err(e) = inv.invoke_async::<i64>(&mut r).await {
            tracing::warn!(error = %e, "matchmaking: requeue failed");
        }
    }

    /// Drops an app from the tenant set when its queue is empty. A join that
    /// races with this re-adds it (it adds after enqueueing; we re-check
    /// after removing).
    async fn forget_if_empty(&self, tenant: &TenantId, k: &MmKeys) {
        let Ok(mut r) = self.conn().await else { return };
        let _: Result<i64, _> = redis::cmd("SREM")
            .arg(TENANTS)
            .arg(tenant.as_str())
            .query_async(&mut r)
            .await;
        let left: u64 = redis::cmd("ZCARD")
            .arg(&k.queue)
            .query_async(&mut r)
            .await
            .unwrap_or(1);
        if left > 0 {
            let _: Result<i64, _> = redis::cmd("SADD")
                .arg(TENANTS)
                .arg(tenant.as_str())
                .query_async(&mut r)
                .await;
        }
    }

    /// Removes expired tickets and tells their owners.
    async fn expire(&self, tenant: &TenantId) {
        let k = MmKeys::new(tenant);
        let Ok(mut r) = self.conn().await else { return };
        let now = now_ms();
        let expired: Vec<String> = match scripts::EXPIRE
            .key(k.all().as_slice())
            .arg(now)
            .arg(EXPIRE_BATCH)
            .invoke_async(&mut r)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "matchmaking: expiry sweep failed");
                return;
            }
        };
        drop(r);
        for e in expired.chunks(3) {
            let [id, owner, at] = e else { continue };
            let Some((gw, conn)) = parse_owner(owner) else {
                continue;
            };
            let at: u64 = at.parse().unwrap_or(0);
            let data = json!({"ticket": id, "waited_ms": now.saturating_sub(at)});
            self.push_to(&gw, conn, push_bytes("ticket_expired", data))
                .await;
        }
    }

    /// Sends `queue_status` to every waiting ticket of one app, unless
    /// another replica holds this interval's lease.
    async fn status_round(&self, tenant: &TenantId) {
        let k = MmKeys::new(tenant);
        let Ok(mut r) = self.conn().await else { return };
        let lease_ms = self
            .cfg
            .status_interval_ms
            .saturating_sub(self.cfg.tick_ms / 2)
            .max(1);
        let got: Option<String> = redis::cmd("SET")
            .arg(&k.status_lease)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(lease_ms)
            .query_async(&mut r)
            .await
            .unwrap_or(None);
        if got.is_none() {
            return;
        }
        let (waiting, stats): (u64, Vec<String>) = match redis::pipe()
            .zcard(&k.queue)
            .lrange(&k.stats, 0, -1)
            .query_async(&mut r)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "matchmaking: status round failed");
                return;
            }
        };
        let now = now_ms();
        let mut start: i64 = 0;
        while (start as u64) < waiting {
            let page: Vec<String> = match scripts::PAGE
                .key(k.all().as_slice())
                .arg(start)
                .arg(start + STATUS_PAGE - 1)
                .invoke_async(&mut r)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "matchmaking: status page failed");
                    return;
                }
            };
            if page.is_empty() {
                break;
            }
            for (i, e) in page.chunks(2).enumerate() {
                let [id, owner] = e else { continue };
                let Some((gw, conn)) = parse_owner(owner) else {
                    continue;
                };
                let position = start as u64 + i as u64 + 1;
                let data = json!({
                    "ticket": id,
                    "position": position,
                    "waiting": waiting,
                    "estimated_wait_ms": estimate_wait_ms(&stats, now, position),
                });
                self.push_to(&gw, conn, push_bytes("queue_status", data))
                    .await;
            }
            start += STATUS_PAGE;
        }
    }
}

impl Service for Matchmaking {
    fn name(&self) -> &'static str {
        "matchmaking"
    }

    async fn handle(&self, op: &str, req: Request) -> Result<Outcome, ServiceError> {
        let c = Caller::from_request(&req)?;
        match op {
            "join" => self.inner.join(&c, parse(&req)?).await,
            "leave" => {
                parse::<Empty>(&req)?;
                self.inner.leave(&c).await
            }
            "status" => {
                parse::<Empty>(&req)?;
                self.inner.status(&c).await
            }
            other => Err(ServiceError::client(
                ErrorCode::UnknownOp,
                format!("matchmaking has no op {other:?}"),
            )),
        }
    }

    async fn on_conn_event(&self, ev: ConnLifecycle) {
        if let ConnLifecycle::Disconnected(c) = ev {
            self.inner
                .disconnected(&c.tenant, &c.user, &c.gw, c.conn)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag_per_app() {
        let t = TenantId::parse("demo").unwrap_or_else(|e| panic!("{e}"));
        let k = MmKeys::new(&t);
        for key in k.all() {
            assert!(key.starts_with("sb:{mm:demo}:"), "{key}");
        }
        assert!(k.gone("gw-1", 7).starts_with("sb:{mm:demo}:"));
        assert!(k.status_lease.starts_with("sb:{mm:demo}:"));
    }

    #[test]
    fn owners_round_trip_even_with_pipes_in_user_ids() {
        let o = owner("gw-abc", 42, "we|ird");
        let (gw, conn) = parse_owner(&o).unwrap_or_else(|| panic!("unparsed"));
        assert_eq!((gw.as_str(), conn), ("gw-abc", 42));
        assert!(parse_owner("nope").is_none());
    }

    #[test]
    fn wait_estimates_come_from_the_recent_match_rate() {
        let now = 1_000_000;
        assert_eq!(estimate_wait_ms(&[], now, 1), None);
        // Stale matches do not count.
        assert_eq!(estimate_wait_ms(&["1000 2".into()], now, 1), None);
        // 20 tickets over the last 20 s: one per second.
        let stats: Vec<String> = (0..10)
            .map(|i| format!("{} 2", now - 2_000 * i - 1_000))
            .collect();
        let e = estimate_wait_ms(&stats, now, 5).unwrap_or_default();
        assert!((4_000..=5_000).contains(&e), "{e}");
        // One fresh match counts over at least 10 s.
        assert_eq!(estimate_wait_ms(&[format!("{now} 2")], now, 1), Some(5_000));
        assert_eq!(estimate_wait_ms(&["garbage".into()], now, 1), None);
    }

    #[test]
    fn ticket_ids_are_distinct() {
        let a = new_ticket_id();
        assert_eq!(a.len(), 21);
        assert_ne!(a, new_ticket_id());
    }
}
