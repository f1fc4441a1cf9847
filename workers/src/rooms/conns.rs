//! Connection events for rooms: when a connection closes, it leaves every
//! room it joined (announcing users whose last connection that was), after
//! setting the connection-gone marker so a join racing with the close undoes
//! itself (see `service::conns`).

use deadpool_redis::redis;
use switchboard_shared::ids::GatewayId;
use switchboard_shared::keys;
use switchboard_shared::members::TenantRoom;

use super::Rooms;
use crate::error::{LogFailure, ServiceError};
use crate::service::conns::mark_gone;

impl Rooms {
    pub(super) async fn disconnected(&self, gw: &GatewayId, conn: u64) {
        self.leave_all(gw, conn)
            .await
            .log_failure("disconnect cleanup");
    }

    async fn leave_all(&self, gw: &GatewayId, conn: u64) -> Result<(), ServiceError> {
        let rooms_key = keys::conn_rooms(gw, conn);
        let (rooms,): (Vec<String>,) = mark_gone(&mut redis::pipe(), gw, conn)
            .smembers(&rooms_key)
            .query_async(&mut self.conn().await?)
            .await?;
        for entry in rooms {
            let Some(tr) = TenantRoom::parse(&entry) else {
                tracing::warn!(entry = %entry, "skipping a malformed room of a connection");
                continue;
            };
            self.leave_conn(&tr.tenant, &tr.room, gw, conn)
                .await
                .log_failure("leaving a room of a closed connection");
        }
        let () = redis::cmd("DEL")
            .arg(&rooms_key)
            .query_async(&mut self.conn().await?)
            .await?;
        Ok(())
    }
}
