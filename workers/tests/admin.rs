//! The admin gRPC API end to end: real gRPC over loopback against real
//! NATS and Redis, gateways and workers in-process, clients over real
//! WebSockets.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use switchboard_proto::admin::admin_client::AdminClient;
use switchboard_proto::admin::publish_request::Target;
use switchboard_proto::admin::*;
use switchboard_shared::config::Config;
use switchboard_shared::{Shutdown, keys};
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, Gateway, Stack, Workers};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const TOKEN: &str = "admin-token-0123456789";
const ROTATED: &str = "admin-token-rotated-9876";

type Api = AdminClient<InterceptedService<Channel, Bearer>>;

#[derive(Clone)]
struct Bearer(Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Ok(req)
    }
}

/// The admin API running in this process.
struct AdminServer {
    addr: SocketAddr,
    _shutdown: DropCancel,
}

struct DropCancel(Shutdown);

impl Drop for DropCancel {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl AdminServer {
    async fn start(cfg: &Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let nats = switchboard_shared::bus::connect(&cfg.nats, "admin-test")
            .await
            .unwrap();
        let pool = switchboard_shared::redis::connect(&cfg.redis)
            .await
            .unwrap();
        let shutdown = Shutdown::new();
        tokio::spawn(switchboard_workers::admin::serve(
            Arc::new(cfg.clone()),
            listener,
            nats,
            pool,
            shutdown.clone(),
        ));
        Self {
            addr,
            _shutdown: DropCancel(shutdown),
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn client(&self, token: Option<&str>) -> Api {
        AdminClient::with_interceptor(self.channel().await, Bearer(token.map(str::to_owned)))
    }
}

fn config(stack: &Stack) -> Config {
    let mut cfg = stack.config();
    cfg.admin.tokens = vec![TOKEN.into(), ROTATED.into()];
    cfg.admin.deadline_ms = 1_000;
    cfg.gateway.heartbeat_interval_ms = 100;
    cfg
}

/// Waits until presence has recorded a heartbeat of `n` gateways.
async fn gateways_known(cfg: &Config, n: usize) {
    let pool = switchboard_shared::redis::connect(&cfg.redis)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut r = pool.get().await.unwrap();
        let count: usize = deadpool_redis::redis::cmd("ZCARD")
            .arg(keys::GATEWAYS)
            .query_async(&mut r)
            .await
            .unwrap();
        if count >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "heartbeats not recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn calls_need_a_configured_token_and_health_and_reflection_answer() {
    let stack = Stack::start();
    let cfg = config(&stack);
    let admin = AdminServer::start(&cfg).await;

    let err = admin
        .client(None)
        .await
        .list_gateways(ListGatewaysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = admin
        .client(Some("not-the-admin-token-123"))
        .await
        .list_gateways(ListGatewaysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    for t in [TOKEN, ROTATED] {
        admin
            .client(Some(t))
            .await
            .list_gateways(ListGatewaysRequest::default())
            .await
            .unwrap();
    }

    let mut health = tonic_health::pb::health_client::HealthClient::new(admin.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "switchboard.admin.v1.Admin".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(admin.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"switchboard.admin.v1.Admin".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn with_no_token_configured_every_call_is_refused() {
    let stack = Stack::start();
    let mut cfg = config(&stack);
    cfg.admin.tokens.clear();
    let admin = AdminServer::start(&cfg).await;
    let err = admin
        .client(Some(TOKEN))
        .await
        .list_gateways(ListGatewaysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn list_gateways_reports_a_stopped_gateway_unresponsive_within_the_deadline() {
    let stack = Stack::start();
    let mut cfg = config(&stack);
    // The stopped gateway stays known (not yet declared dead).
    cfg.presence.gateway_dead_after_ms = 60_000;
    let _w = Workers::start(cfg.clone(), &["presence"]).await;
    let g1 = Gateway::start(cfg.clone()).await;
    let g2 = Gateway::start(cfg.clone()).await;
    let _c = Client::connect(&g1.ws_url(), &token(&cfg, "demo", "alice"))
        .await
        .unwrap();
    gateways_known(&cfg, 2).await;
    let admin = AdminServer::start(&cfg).await;
    let mut api = admin.client(Some(TOKEN)).await;

    let all = api
        .list_gateways(ListGatewaysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.gateways.len(), 2, "{all:?}");
    assert!(all.gateways.iter().all(|g| !g.unresponsive && g.ready));
    let addrs: Vec<&str> = all.gateways.iter().map(|g| g.address.as_str()).collect();
    assert!(addrs.contains(&g1.addr.to_string().as_str()), "{addrs:?}");
    let busy = all
        .gateways
        .iter()
        .find(|g| g.address == g1.addr.to_string())
        .unwrap();
    assert_eq!(busy.connections, 1);

    // Paged one at a time.
    let first = api
        .list_gateways(ListGatewaysRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.gateways.len(), 1);
    let second = api
        .list_gateways(ListGatewaysRequest {
            page_size: 1,
            page_token: first.next_page_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.gateways.len(), 1);
    assert_ne!(first.gateways[0].id, second.gateways[0].id);
    assert!(second.next_page_token.is_empty());

    g2.stop().await;
    let started = tokio::time::Instant::now();
    let after = api
        .list_gateways(ListGatewaysRequest::default())
        .await
        .unwrap()
        .into_inner();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(3_000), "took {took:?}");
    let flags: Vec<(bool, u64)> = after
        .gateways
        .iter()
        .map(|g| (g.unresponsive, g.connections))
        .collect();
    assert_eq!(after.gateways.len(), 2, "{after:?}");
    assert!(
        flags.contains(&(true, 0)) && flags.contains(&(false, 1)),
        "{flags:?}"
    );
}

#[tokio::test]
async fn disconnect_user_closes_every_device_with_the_operator_code_and_reason() {
    let stack = Stack::start();
    let cfg = config(&stack);
    let _w = Workers::start(cfg.clone(), &["rooms"]).await;
    let g1 = Gateway::start(cfg.clone()).await;
    let g2 = Gateway::start(cfg.clone()).await;
    let mut a1 = Client::connect(&g1.ws_url(), &token(&cfg, "demo", "alice"))
        .await
        .unwrap();
    let mut a2 = Client::connect(&g2.ws_url(), &token(&cfg, "demo", "alice"))
        .await
        .unwrap();
    let mut bob = Client::connect(&g1.ws_url(), &token(&cfg, "demo", "bob"))
        .await
        .unwrap();
    let admin = AdminServer::start(&cfg).await;
    let mut api = admin.client(Some(TOKEN)).await;

    let bad = api
        .disconnect_user(DisconnectUserRequest {
            app: "demo".into(),
            user: "has space".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("user:"), "{}", bad.message());
    let bad = api
        .disconnect_user(DisconnectUserRequest {
            app: "de.mo".into(),
            user: "alice".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("app:"), "{}", bad.message());

    let r = api
        .disconnect_user(DisconnectUserRequest {
            app: "demo".into(),
            user: "alice".into(),
            reason: "account suspended".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.closed, 2);
    for a in [&mut a1, &mut a2] {
        assert_eq!(a.closed().await, Some((4000, "account suspended".into())));
    }
    // Bob is untouched.
    bob.ok("rooms.create", json!({"room": "still-here"})).await;
}

#[tokio::test]
async fn disconnect_connection_closes_that_one_and_unknown_ones_are_not_found() {
    let stack = Stack::start();
    let cfg = config(&stack);
    let _w = Workers::start(cfg.clone(), &["presence"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let mut a = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "alice"))
        .await
        .unwrap();
    let admin = AdminServer::start(&cfg).await;
    let mut api = admin.client(Some(TOKEN)).await;
    // Presence registers the connection shortly after the handshake.
    let conns = loop {
        let c = api
            .user_connections(UserConnectionsRequest {
                app: "demo".into(),
                user: "alice".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .connections;
        if !c.is_empty() {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(conns.len(), 1);
    let missing = api
        .disconnect_connection(DisconnectConnectionRequest {
            gateway: conns[0].gateway.clone(),
            conn: conns[0].conn + 100,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    api.disconnect_connection(DisconnectConnectionRequest {
        gateway: conns[0].gateway.clone(),
        conn: conns[0].conn,
        reason: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(
        a.closed().await,
        Some((4000, "disconnected by the operator".into()))
    );
}

#[tokio::test]
async fn drain_gateway_closes_its_clients_with_1012() {
    let stack = Stack::start();
    let mut cfg = config(&stack);
    cfg.gateway.drain_window_ms = 200;
    let gw = Gateway::start(cfg.clone()).await;
    let mut c = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "alice"))
        .await
        .unwrap();
    let admin = AdminServer::start(&cfg).await;
    let mut api = admin.client(Some(TOKEN)).await;
    let id = api
        .list_gateways(ListGatewaysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .gateways[0]
        .id
        .clone();
    let bad = api
        .drain_gateway(DrainGatewayRequest {
            gateway: "gw.*".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let r = api
        .drain_gateway(DrainGatewayRequest { gateway: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.connections, 1);
    assert_eq!(c.closed().await.map(|c| c.0), Some(1012));
}

#[tokio::test]
async fn publish_to_a_room_reaches_its_members_and_notifications_are_delivered() {
    let stack = Stack::start();
    let cfg = config(&stack);
    let _w = Workers::start(cfg.clone(), &["rooms", "presence", "notifications"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let mut a = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "alice"))
        .await
        .unwrap();
    let mut b = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "bob"))
        .await
        .unwrap();
    a.event("notifications").await;
    a.ok("rooms.create", json!({"room": "lobby"})).await;
    a.ok("rooms.join", json!({"room": "lobby"})).await;
    b.ok("rooms.join", json!({"room": "lobby"})).await;
    let admin = AdminServer::start(&cfg).await;
    let mut api = admin.client(Some(TOKEN)).await;

    let r = api
        .publish(PublishRequest {
            app: "demo".into(),
            data_json: r#"{"text":"maintenance at noon"}"#.into(),
            target: Some(Target::Room("lobby".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.addressed, 1);
    for c in [&mut a, &mut b] {
        let ev = c.event("admin").await;
        assert_eq!(
            ev,
            json!({"scope": "room", "room": "lobby", "data": {"text": "maintenance at noon"}})
        );
    }
    let missing = api
        .publish(PublishRequest {
            app: "demo".into(),
            data_json: "1".into(),
            target: Some(Target::Room("nowhere".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let bad = api
        .publish(PublishRequest {
            app: "demo".into(),
            data_json: "{not json".into(),
            target: Some(Target::AppWide(true)),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("data_json:"), "{}", bad.message());

    let info = api
        .room_info(RoomInfoRequest {
            app: "demo".into(),
            room: "lobby".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.member_users, info.created_by.as_str()), (2, "alice"));
    let members = api
        .list_room_members(ListRoomMembersRequest {
            app: "demo".into(),
            room: "lobby".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    let mut users: Vec<String> = members.into_iter().map(|m| m.user).collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);

    let sent = api
        .send_notification(SendNotificationRequest {
            request_json:
                json!({"app": "demo", "to": {"user": "alice"}, "type": "ops", "content": {"k": 1}})
                    .to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let reply: serde_json::Value = serde_json::from_str(&sent.reply_json).unwrap();
    assert_eq!(reply["recipients"], json!(1), "{reply}");
    let n = a.event("notification").await;
    assert_eq!(
        (n["type"].clone(), n["content"].clone()),
        (json!("ops"), json!({"k": 1}))
    );
    let bad = api
        .send_notification(SendNotificationRequest {
            request_json: json!({"app": "demo", "to": {"user": "alice"}}).to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}
