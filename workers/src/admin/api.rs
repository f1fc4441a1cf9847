//! The `Admin` service: argument checks (a bad argument is
//! `INVALID_ARGUMENT` naming its field), paging, error mapping, and the
//! dispatch of each call to its feature file.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use switchboard_proto::admin::admin_server::Admin;
use switchboard_proto::admin::*;
use switchboard_shared::config::Config;
use switchboard_shared::ids::{GatewayId, RoomId, TenantId, UserId};
use switchboard_shared::redis::Pool;
use tonic::{Request, Response, Status};

/// Items per page when `page_size` is 0.
pub const DEFAULT_PAGE: usize = 100;
/// Most items per page (a larger `page_size` is read as this).
pub const MAX_PAGE: usize = 1_000;
/// Longest `page_token`.
const MAX_TOKEN: usize = 512;

/// The admin API's state: configuration, the bus, Redis.
#[derive(Clone)]
pub struct AdminApi {
    pub(super) cfg: Arc<Config>,
    pub(super) nats: async_nats::Client,
    pub(super) pool: Pool,
}

impl AdminApi {
    pub fn new(cfg: Arc<Config>, nats: async_nats::Client, pool: Pool) -> Self {
        Self { cfg, nats, pool }
    }

    /// How long a call waits for gateways.
    pub(super) fn deadline(&self) -> Duration {
        Duration::from_millis(self.cfg.admin.deadline_ms)
    }
}

/// A dependency (Redis, NATS) failed.
pub fn unavailable(e: impl Display) -> Status {
    Status::unavailable(e.to_string())
}

/// `INVALID_ARGUMENT` for `field`.
pub fn invalid(field: &str, why: impl Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

pub fn app(field: &str, s: &str) -> Result<TenantId, Status> {
    TenantId::parse(s).map_err(|e| invalid(field, e))
}

pub fn user(field: &str, s: &str) -> Result<UserId, Status> {
    UserId::parse(s).map_err(|e| invalid(field, e))
}

pub fn room(field: &str, s: &str) -> Result<RoomId, Status> {
    RoomId::parse(s).map_err(|e| invalid(field, e))
}

pub fn gateway(field: &str, s: &str) -> Result<GatewayId, Status> {
    GatewayId::parse(s).map_err(|e| invalid(field, e))
}

/// A page request: at most `size` items whose key sorts after `after`.
#[derive(Debug, Clone)]
pub struct Paging {
    pub size: usize,
    pub after: Option<String>,
}

impl Paging {
    pub fn new(page_size: u32, page_token: &str) -> Result<Self, Status> {
        if page_token.len() > MAX_TOKEN || page_token.chars().any(char::is_control) {
            return Err(invalid("page_token", "not a token this API gave out"));
        }
        Ok(Self {
            size: match page_size as usize {
                0 => DEFAULT_PAGE,
                n => n.min(MAX_PAGE),
            },
            after: (!page_token.is_empty()).then(|| page_token.to_owned()),
        })
    }

    /// Sorts `items` by `key` and keeps this page; returns it with the next
    /// page's token (empty on the last page).
    pub fn apply<T>(&self, mut items: Vec<T>, key: impl Fn(&T) -> String) -> (Vec<T>, String) {
        items.sort_by_key(|a| key(a));
        if let Some(after) = &self.after {
            items.retain(|i| key(i).as_str() > after.as_str());
        }
        let more = items.len() > self.size;
        items.truncate(self.size);
        let next = match (more, items.last()) {
            (true, Some(last)) => key(last),
            _ => String::new(),
        };
        (items, next)
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn list_gateways(&self, r: Request<ListGatewaysRequest>) -> Answer<ListGatewaysResponse> {
        self.list_gateways_(r.into_inner()).await.map(Response::new)
    }

    async fn cluster_stats(&self, r: Request<ClusterStatsRequest>) -> Answer<ClusterStatsResponse> {
        self.cluster_stats_(r.into_inner()).await.map(Response::new)
    }

    async fn user_connections(
        &self,
        r: Request<UserConnectionsRequest>,
    ) -> Answer<UserConnectionsResponse> {
        self.user_connections_(r.into_inner())
            .await
            .map(Response::new)
    }

    async fn disconnect_user(
        &self,
        r: Request<DisconnectUserRequest>,
    ) -> Answer<DisconnectResponse> {
        self.disconnect_user_(r.into_inner())
            .await
            .map(Response::new)
    }

    async fn disconnect_connection(
        &self,
        r: Request<DisconnectConnectionRequest>,
    ) -> Answer<DisconnectResponse> {
        self.disconnect_connection_(r.into_inner())
            .await
            .map(Response::new)
    }

    async fn publish(&self, r: Request<PublishRequest>) -> Answer<PublishResponse> {
        self.publish_(r.into_inner()).await.map(Response::new)
    }

    async fn send_notification(
        &self,
        r: Request<SendNotificationRequest>,
    ) -> Answer<SendNotificationResponse> {
        self.send_notification_(r.into_inner())
            .await
            .map(Response::new)
    }

    async fn room_info(&self, r: Request<RoomInfoRequest>) -> Answer<RoomInfoResponse> {
        self.room_info_(r.into_inner()).await.map(Response::new)
    }

    async fn list_room_members(
        &self,
        r: Request<ListRoomMembersRequest>,
    ) -> Answer<ListRoomMembersResponse> {
        self.list_room_members_(r.into_inner())
            .await
            .map(Response::new)
    }

    async fn close_room(&self, r: Request<CloseRoomRequest>) -> Answer<CloseRoomResponse> {
        let req = r.into_inner();
        app("app", &req.app)?;
        room("room", &req.room)?;
        Err(Status::unimplemented(
            "CloseRoom is not served yet: the rooms service has no way to end a room",
        ))
    }

    async fn matchmaking_stats(
        &self,
        r: Request<MatchmakingStatsRequest>,
    ) -> Answer<MatchmakingStatsResponse> {
        self.matchmaking_stats_(r.into_inner())
            .await
            .map(Response::new)
    }

    async fn drain_gateway(&self, r: Request<DrainGatewayRequest>) -> Answer<DrainGatewayResponse> {
        self.drain_gateway_(r.into_inner()).await.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_token_and_end_with_an_empty_one() {
        let p = Paging::new(2, "").unwrap_or_else(|e| panic!("{e}"));
        let items = vec!["c", "a", "e", "b", "d"];
        let (page, next) = p.apply(items.clone(), |s| (*s).to_owned());
        assert_eq!((page, next.as_str()), (vec!["a", "b"], "b"));
        let p = Paging::new(2, &next).unwrap_or_else(|e| panic!("{e}"));
        let (page, next) = p.apply(items.clone(), |s| (*s).to_owned());
        assert_eq!((page, next.as_str()), (vec!["c", "d"], "d"));
        let p = Paging::new(2, &next).unwrap_or_else(|e| panic!("{e}"));
        let (page, next) = p.apply(items, |s| (*s).to_owned());
        assert_eq!((page, next.as_str()), (vec!["e"], ""));
        assert_eq!(Paging::new(0, "").map(|p| p.size).ok(), Some(DEFAULT_PAGE));
        assert_eq!(Paging::new(50_000, "").map(|p| p.size).ok(), Some(MAX_PAGE));
        let bad = Paging::new(1, "a\nb").err().map(|s| s.code());
        assert_eq!(bad, Some(tonic::Code::InvalidArgument));
    }
}
