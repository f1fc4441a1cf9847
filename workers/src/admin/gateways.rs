//! Gateways: the list (scatter-gather `stats`), closing a user's or one
//! connection (`kick`, close 4000 with the operator's reason) and draining
//! one gateway (`drain`: as on SIGTERM, then the process exits).

use bytes::Bytes;
use switchboard_proto::admin::{
    DisconnectConnectionRequest, DisconnectResponse, DisconnectUserRequest, DrainGatewayRequest,
    DrainGatewayResponse, Gateway, ListGatewaysRequest, ListGatewaysResponse,
};
use switchboard_proto::bus::{DrainReply, GatewayStats, KickReply, KickRequest};
use switchboard_shared::bus;
use switchboard_shared::subjects::GatewayCommand;
use tonic::Status;

use super::api::{AdminApi, Paging, app, gateway, invalid, user};
use super::gather::{ask, gather};

/// The WebSocket close code an operator's disconnect sends (docs/protocol.md).
pub const OPERATOR_CLOSE: u32 = 4000;

/// Longest operator reason accepted (it is cut to 123 bytes in the frame).
const MAX_REASON: usize = 1_024;

fn reason(s: &str) -> Result<String, Status> {
    if s.len() > MAX_REASON {
        return Err(invalid("reason", format!("longer than {MAX_REASON} bytes")));
    }
    Ok(s.to_owned())
}

impl AdminApi {
    /// Every gateway's stats (scatter-gather).
    pub(super) async fn gateway_stats(
        &self,
    ) -> Result<super::gather::Gathered<GatewayStats>, Status> {
        gather(
            &self.nats,
            &self.pool,
            GatewayCommand::Stats,
            Bytes::new(),
            self.deadline(),
            |s: &GatewayStats| s.gateway.as_str(),
        )
        .await
    }

    pub(super) async fn list_gateways_(
        &self,
        req: ListGatewaysRequest,
    ) -> Result<ListGatewaysResponse, Status> {
        let paging = Paging::new(req.page_size, &req.page_token)?;
        let g = self.gateway_stats().await?;
        let mut all: Vec<Gateway> = g
            .answers
            .into_values()
            .map(|s| Gateway {
                last_heartbeat_ms: g.known.get(&s.gateway).copied().unwrap_or(0),
                id: s.gateway,
                address: s.address,
                connections: s.connections,
                uptime_ms: s.uptime_ms,
                draining: s.draining,
                ready: s.ready,
                unresponsive: false,
            })
            .collect();
        all.extend(g.unresponsive.into_iter().map(|id| Gateway {
            last_heartbeat_ms: g.known.get(&id).copied().unwrap_or(0),
            id,
            unresponsive: true,
            ..Gateway::default()
        }));
        let (gateways, next_page_token) = paging.apply(all, |g| g.id.clone());
        Ok(ListGatewaysResponse {
            gateways,
            next_page_token,
        })
    }

    pub(super) async fn disconnect_user_(
        &self,
        req: DisconnectUserRequest,
    ) -> Result<DisconnectResponse, Status> {
        let tenant = app("app", &req.app)?;
        let u = user("user", &req.user)?;
        let kick = KickRequest {
            tenant: tenant.to_string(),
            user: u.to_string(),
            conn: 0,
            code: OPERATOR_CLOSE,
            reason: reason(&req.reason)?,
        };
        let g = gather(
            &self.nats,
            &self.pool,
            GatewayCommand::Kick,
            bus::encode(&kick),
            self.deadline(),
            |k: &KickReply| k.gateway.as_str(),
        )
        .await?;
        let closed = g.answers.values().map(|k| k.closed).sum();
        tracing::info!(app = %tenant, user = %u, closed, "operator disconnected a user");
        Ok(DisconnectResponse {
            closed,
            unresponsive: g.unresponsive,
        })
    }

    pub(super) async fn disconnect_connection_(
        &self,
        req: DisconnectConnectionRequest,
    ) -> Result<DisconnectResponse, Status> {
        let gw = gateway("gateway", &req.gateway)?;
        if req.conn == 0 {
            return Err(invalid("conn", "connection ids start at 1"));
        }
        let kick = KickRequest {
            conn: req.conn,
            code: OPERATOR_CLOSE,
            reason: reason(&req.reason)?,
            ..KickRequest::default()
        };
        let reply: KickReply = ask(
            &self.nats,
            &gw,
            GatewayCommand::Kick,
            bus::encode(&kick),
            self.deadline(),
        )
        .await?;
        if reply.closed == 0 {
            return Err(Status::not_found(format!(
                "gateway {gw} has no connection {}",
                req.conn
            )));
        }
        Ok(DisconnectResponse {
            closed: reply.closed,
            unresponsive: Vec::new(),
        })
    }

    pub(super) async fn drain_gateway_(
        &self,
        req: DrainGatewayRequest,
    ) -> Result<DrainGatewayResponse, Status> {
        let gw = gateway("gateway", &req.gateway)?;
        let reply: DrainReply = ask(
            &self.nats,
            &gw,
            GatewayCommand::Drain,
            Bytes::new(),
            self.deadline(),
        )
        .await?;
        tracing::warn!(gateway = %gw, connections = reply.connections, "operator drained a gateway");
        Ok(DrainGatewayResponse {
            connections: reply.connections,
            drain_window_ms: reply.drain_window_ms,
        })
    }
}
