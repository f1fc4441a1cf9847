//! Counts for operators, read from Redis (a few reads per app, no scans)
//! and from the gateways: per app, open connections (presence's
//! `AppKeys::conns`), live rooms (`AppKeys::rooms`), stored notifications
//! not expired, waiting matchmaking tickets (`quotas::usage`), and the
//! connections the answering gateways hold; cluster-wide, calls ringing and
//! call parties inside their reconnect grace.

use std::collections::BTreeSet;

use deadpool_redis::redis;
use switchboard_proto::admin::{
    AppStats, ClusterStatsRequest, ClusterStatsResponse, MatchmakingStatsRequest,
    MatchmakingStatsResponse, QueueStats,
};
use switchboard_shared::ids::TenantId;
use switchboard_shared::keys::{self, MatchmakingKeys};
use switchboard_shared::{now_ms, quotas};
use tonic::Status;

use super::api::{AdminApi, Paging, app, unavailable};

/// Most apps one call may name.
const MAX_APPS: usize = 1_000;

fn named_apps(apps: &[String]) -> Result<Vec<TenantId>, Status> {
    if apps.len() > MAX_APPS {
        return Err(super::api::invalid(
            "apps",
            format!("at most {MAX_APPS} apps per call"),
        ));
    }
    apps.iter().map(|a| app("apps", a)).collect()
}

/// Members of a set of app ids; malformed ones are skipped.
async fn app_set(r: &mut deadpool_redis::Connection, key: &str) -> Result<Vec<String>, Status> {
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(key)
        .query_async(r)
        .await
        .map_err(unavailable)?;
    Ok(ids
        .into_iter()
        .filter(|a| TenantId::parse(a).is_ok())
        .collect())
}

impl AdminApi {
    pub(super) async fn cluster_stats_(
        &self,
        req: ClusterStatsRequest,
    ) -> Result<ClusterStatsResponse, Status> {
        let paging = Paging::new(req.page_size, &req.page_token)?;
        let named = named_apps(&req.apps)?;
        let g = self.gateway_stats().await?;
        let mut r = self.pool.get().await.map_err(unavailable)?;
        let mut apps: BTreeSet<String> = named.iter().map(ToString::to_string).collect();
        if named.is_empty() {
            for s in g.answers.values() {
                apps.extend(s.app_connections.keys().cloned());
            }
            apps.extend(app_set(&mut r, keys::QUOTA_ROOM_APPS).await?);
            apps.extend(app_set(&mut r, keys::MATCHMAKING_TENANTS).await?);
        }
        let (page, next_page_token) = paging.apply(apps.into_iter().collect(), Clone::clone);
        let now = now_ms();
        let mut out = Vec::with_capacity(page.len());
        for a in page {
            let tenant = app("apps", &a)?;
            let u = quotas::usage(&mut r, &tenant, now)
                .await
                .map_err(unavailable)?;
            out.push(AppStats {
                connections: u.connections,
                live_rooms: u.live_rooms,
                pending_notifications: u.notifications,
                waiting_tickets: u.waiting_tickets,
                gateway_connections: g
                    .answers
                    .values()
                    .filter_map(|s| s.app_connections.get(&a))
                    .sum(),
                app: a,
            });
        }
        let (ringing, grace): (u64, u64) = redis::pipe()
            .zcard(keys::CALLS_RINGING)
            .zcard(keys::CALLS_GRACE)
            .query_async(&mut r)
            .await
            .map_err(unavailable)?;
        Ok(ClusterStatsResponse {
            apps: out,
            calls_ringing: ringing,
            calls_in_grace: grace,
            gateways_answered: g.answers.len() as u32,
            gateways_unresponsive: g.unresponsive.len() as u32,
            next_page_token,
        })
    }

    pub(super) async fn matchmaking_stats_(
        &self,
        req: MatchmakingStatsRequest,
    ) -> Result<MatchmakingStatsResponse, Status> {
        let named = named_apps(&req.apps)?;
        let mut r = self.pool.get().await.map_err(unavailable)?;
        let mut apps: Vec<String> = named.iter().map(ToString::to_string).collect();
        if apps.is_empty() {
            apps = app_set(&mut r, keys::MATCHMAKING_TENANTS).await?;
        }
        apps.sort();
        if apps.is_empty() {
            return Ok(MatchmakingStatsResponse::default());
        }
        let mut pipe = redis::pipe();
        for a in &apps {
            pipe.zcard(MatchmakingKeys::new(&app("apps", a)?).queue);
        }
        let lens: Vec<u64> = pipe.query_async(&mut r).await.map_err(unavailable)?;
        Ok(MatchmakingStatsResponse {
            queues: apps
                .into_iter()
                .zip(lens)
                .map(|(app, waiting_tickets)| QueueStats {
                    app,
                    waiting_tickets,
                })
                .collect(),
        })
    }
}
