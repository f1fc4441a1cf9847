//! Rooms as stored by the rooms service (`RoomKeys`): metadata and counts,
//! and the member connections (`conns`: `<gateway>:<conn>` → user), read
//! whole and paged by connection.

use std::collections::HashMap;

use deadpool_redis::redis;
use switchboard_proto::admin::{
    ListRoomMembersRequest, ListRoomMembersResponse, RoomInfoRequest, RoomInfoResponse, RoomMember,
};
use switchboard_shared::ids::{RoomId, TenantId};
use switchboard_shared::keys::RoomKeys;
use switchboard_shared::members::ConnMember;
use tonic::Status;

use super::api::{AdminApi, Paging, app, room, unavailable};

impl AdminApi {
    /// `NOT_FOUND` unless the room exists (its meta hash does).
    pub(super) async fn room_exists(&self, tenant: &TenantId, r: &RoomId) -> Result<(), Status> {
        let mut c = self.pool.get().await.map_err(unavailable)?;
        let n: u64 = redis::cmd("EXISTS")
            .arg(RoomKeys::new(tenant, r).meta)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        if n == 0 {
            return Err(Status::not_found(format!("no room {r} in app {tenant}")));
        }
        Ok(())
    }

    pub(super) async fn room_info_(
        &self,
        req: RoomInfoRequest,
    ) -> Result<RoomInfoResponse, Status> {
        let tenant = app("app", &req.app)?;
        let r = room("room", &req.room)?;
        let k = RoomKeys::new(&tenant, &r);
        let mut c = self.pool.get().await.map_err(unavailable)?;
        let (meta, conns, users, gws, hist): (HashMap<String, String>, u64, u64, u64, u64) =
            redis::pipe()
                .hgetall(&k.meta)
                .hlen(&k.conns)
                .hlen(&k.users)
                .hlen(&k.gateways)
                .cmd("XLEN")
                .arg(&k.history)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
        if meta.is_empty() {
            return Err(Status::not_found(format!("no room {r} in app {tenant}")));
        }
        let num = |f: &str| meta.get(f).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(RoomInfoResponse {
            room: r.to_string(),
            max_members: num("max_members"),
            private: meta.get("private").map(String::as_str) == Some("1"),
            created_by: meta.get("created_by").cloned().unwrap_or_default(),
            created_at_ms: num("created_at"),
            seq: num("seq"),
            member_connections: conns,
            member_users: users,
            gateways: gws,
            history_len: hist,
        })
    }

    pub(super) async fn list_room_members_(
        &self,
        req: ListRoomMembersRequest,
    ) -> Result<ListRoomMembersResponse, Status> {
        let tenant = app("app", &req.app)?;
        let r = room("room", &req.room)?;
        let paging = Paging::new(req.page_size, &req.page_token)?;
        self.room_exists(&tenant, &r).await?;
        let mut c = self.pool.get().await.map_err(unavailable)?;
        let rows: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(RoomKeys::new(&tenant, &r).conns)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let all = rows
            .into_iter()
            .filter_map(|(m, user)| {
                ConnMember::parse(&m).map(|cm| RoomMember {
                    user,
                    gateway: cm.gw.to_string(),
                    conn: cm.conn,
                })
            })
            .collect();
        let (members, next_page_token) =
            paging.apply(all, |m| format!("{}:{:020}", m.gateway, m.conn));
        Ok(ListRoomMembersResponse {
            members,
            next_page_token,
        })
    }
}
