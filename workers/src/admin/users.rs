//! One user's live connections as the presence service registered them
//! (`UserKeys::presence_conns`: `<gateway>:<conn>` → connected-at ms).

use deadpool_redis::redis;
use switchboard_proto::admin::{Connection, UserConnectionsRequest, UserConnectionsResponse};
use switchboard_shared::ids::{TenantId, UserId};
use switchboard_shared::keys::UserKeys;
use switchboard_shared::members::ConnMember;
use tonic::Status;

use super::api::{AdminApi, Paging, app, unavailable, user};

impl AdminApi {
    /// The user's connections, in no particular order.
    pub(super) async fn connections_of(
        &self,
        tenant: &TenantId,
        u: &UserId,
    ) -> Result<Vec<(ConnMember, u64)>, Status> {
        let mut r = self.pool.get().await.map_err(unavailable)?;
        let rows: Vec<(String, u64)> = redis::cmd("HGETALL")
            .arg(UserKeys::new(tenant, u).presence_conns)
            .query_async(&mut r)
            .await
            .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .filter_map(|(m, at)| ConnMember::parse(&m).map(|c| (c, at)))
            .collect())
    }

    pub(super) async fn user_connections_(
        &self,
        req: UserConnectionsRequest,
    ) -> Result<UserConnectionsResponse, Status> {
        let tenant = app("app", &req.app)?;
        let u = user("user", &req.user)?;
        let paging = Paging::new(req.page_size, &req.page_token)?;
        let all = self
            .connections_of(&tenant, &u)
            .await?
            .into_iter()
            .map(|(c, since_ms)| Connection {
                gateway: c.gw.to_string(),
                conn: c.conn,
                since_ms,
            })
            .collect();
        let (connections, next_page_token) =
            paging.apply(all, |c| format!("{}:{:020}", c.gateway, c.conn));
        Ok(UserConnectionsResponse {
            connections,
            next_page_token,
        })
    }
}
