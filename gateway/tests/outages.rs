//! Outages of NATS and Redis, and a gateway the cluster declared dead while
//! it was only paused. Requests during an outage fail promptly as
//! `unavailable`; afterwards the cluster's view of connections converges
//! (connects and disconnects that happened meanwhile are repaired), and
//! nothing stored is lost.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_shared::config::Config;
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, Gateway, GatewayProcess, Stack, Workers};

const SERVICES: &[&str] = &["rooms", "presence", "notifications"];

/// Test timings: heartbeats every 300 ms, a gateway dead after 1.5 s.
fn config(stack: &Stack) -> Config {
    let mut cfg = stack.config();
    cfg.gateway.heartbeat_interval_ms = 300;
    cfg.presence.gateway_dead_after_ms = 1_500;
    cfg.presence.reap_interval_ms = 200;
    cfg.redis.timeout_ms = 500;
    cfg.gateway.request_timeout_ms = 3_000;
    cfg
}

/// How long the cluster may take to notice a repaired connection: two
/// heartbeats to see the difference, one round to repair it, and slack for
/// clients reconnecting to NATS.
fn convergence_bound(cfg: &Config) -> Duration {
    Duration::from_millis(4 * cfg.gateway.heartbeat_interval_ms) + Duration::from_secs(4)
}

async fn connect(url: &str, cfg: &Config, user: &str) -> Client {
    Client::connect(url, &token(cfg, "demo", user))
        .await
        .unwrap()
}

async fn presence_until(c: &mut Client, user: &str, status: &str) {
    loop {
        let p = c.event("presence").await;
        if p["user"] == user && p["status"] == status {
            return;
        }
    }
}

async fn send(nats: &async_nats::Client, req: Value) -> Value {
    let msg = tokio::time::timeout(
        Duration::from_secs(10),
        nats.request("sb.api.notifications.send", req.to_string().into()),
    )
    .await
    .unwrap()
    .unwrap();
    serde_json::from_slice(&msg.payload).unwrap()
}

async fn http_status(url: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (addr, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Waits until the gateway's `/readyz` answers `status`.
async fn readyz_becomes(gw: &Gateway, status: u16, bound: Duration) {
    eventually(bound, async || {
        http_status(&gw.http_url("/readyz")).await == status
    })
    .await;
}

/// Rooms workers, a gateway, and carol as the member of room `r`.
async fn carol_in_room_r(stack: &Stack) -> (Config, Workers, Gateway, Client) {
    let cfg = config(stack);
    let w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let mut carol = connect(&gw.ws_url(), &cfg, "carol").await;
    carol.ok("rooms.create", json!({"room": "r"})).await;
    carol.ok("rooms.join", json!({"room": "r"})).await;
    (cfg, w, gw, carol)
}

/// A new connection (dave) joins room `r` and publishes; carol gets it.
async fn newcomer_reaches_carol_in_r(gw: &Gateway, cfg: &Config, carol: &mut Client) {
    let mut dave = connect(&gw.ws_url(), cfg, "dave").await;
    dave.ok("rooms.join", json!({"room": "r"})).await;
    dave.ok("rooms.publish", json!({"room": "r", "data": 1}))
        .await;
    assert_eq!(carol.event("message").await["data"], 1);
}

/// Polls `f` until it is true, failing after `bound`. For states that
/// produce no event to wait on (an HTTP status).
async fn eventually(bound: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !f().await {
        assert!(Instant::now() < deadline, "not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_that_connects_while_redis_is_down_is_repaired_when_it_returns() {
    let mut stack = Stack::start_durable();
    let cfg = config(&stack);
    let _w = Workers::start(cfg.clone(), SERVICES).await;
    let gw = Gateway::start(cfg.clone()).await;
    let nats = stack.nats_client().await;
    let mut watcher = connect(&gw.ws_url(), &cfg, "watcher").await;
    watcher
        .ok("presence.subscribe", json!({"users": ["alice"]}))
        .await;
    // Something stored before the outage must survive it.
    assert_eq!(
        send(
            &nats,
            json!({"app": "demo", "to": {"user": "alice"}, "type": "before"})
        )
        .await["ok"],
        true
    );

    stack.redis.stop().unwrap();
    readyz_becomes(&gw, 503, Duration::from_secs(5)).await;
    let mut alice = connect(&gw.ws_url(), &cfg, "alice").await;
    let asked = Instant::now();
    let e = alice.err("presence.set", json!({"status": "busy"})).await;
    assert_eq!(e, "unavailable");
    assert!(
        asked.elapsed() < Duration::from_millis(2_500),
        "took {:?}",
        asked.elapsed()
    );

    stack.redis.resume().unwrap();
    let back = Instant::now();
    // Alice's connect, lost during the outage, is repaired: watchers see her,
    // she gets what was stored for her and live notifications reach her.
    presence_until(&mut watcher, "alice", "online").await;
    assert!(
        back.elapsed() < convergence_bound(&cfg),
        "took {:?}",
        back.elapsed()
    );
    let pending = alice.event("notifications").await;
    assert_eq!(pending["items"][0]["type"], "before", "{pending}");
    assert_eq!(
        send(
            &nats,
            json!({"app": "demo", "to": {"user": "alice"}, "type": "after"})
        )
        .await["ok"],
        true
    );
    assert_eq!(alice.event("notification").await["type"], "after");
    readyz_becomes(&gw, 200, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_client_that_leaves_while_nats_is_down_is_forgotten_when_it_returns() {
    let mut stack = Stack::start();
    let cfg = config(&stack);
    let _w = Workers::start(cfg.clone(), SERVICES).await;
    let gw = Gateway::start(cfg.clone()).await;
    let mut carol = connect(&gw.ws_url(), &cfg, "carol").await;
    carol.ok("rooms.create", json!({"room": "r"})).await;
    carol.ok("rooms.join", json!({"room": "r"})).await;
    carol
        .ok("presence.subscribe", json!({"users": ["bob"]}))
        .await;
    let mut bob = connect(&gw.ws_url(), &cfg, "bob").await;
    bob.ok("rooms.join", json!({"room": "r"})).await;
    assert_eq!(carol.event("member_joined").await["user"], "bob");
    presence_until(&mut carol, "bob", "online").await;

    stack.nats.stop().unwrap();
    // While the bus is down: requests fail at once, readiness is false and
    // new connections are refused.
    let asked = Instant::now();
    assert_eq!(
        carol.err("rooms.info", json!({"room": "r"})).await,
        "unavailable"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "took {:?}",
        asked.elapsed()
    );
    assert_eq!(http_status(&gw.http_url("/readyz")).await, 503);
    let refused = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "dave")).await;
    assert_eq!(refused.err().and_then(|e| e.status()), Some(503));
    bob.close().await;

    stack.nats.resume().unwrap();
    let back = Instant::now();
    let left = carol.event("member_left").await;
    assert_eq!(left["user"], "bob");
    presence_until(&mut carol, "bob", "offline").await;
    assert!(
        back.elapsed() < convergence_bound(&cfg),
        "took {:?}",
        back.elapsed()
    );
    // And the room works again.
    newcomer_reaches_carol_in_r(&gw, &cfg, &mut carol).await;
}

#[tokio::test]
async fn a_gateway_declared_dead_while_paused_resets_its_connections_when_it_wakes() {
    let stack = Stack::start();
    let cfg = config(&stack);
    let _w = Workers::start(cfg.clone(), SERVICES).await;
    let gw = Gateway::start(cfg.clone()).await;
    let paused = GatewayProcess::start(env!("CARGO_BIN_EXE_switchboard-gateway"), &cfg).await;
    let mut watcher = connect(&gw.ws_url(), &cfg, "watcher").await;
    watcher
        .ok("presence.subscribe", json!({"users": ["sleeper"]}))
        .await;
    let mut sleeper = connect(&paused.ws_url(), &cfg, "sleeper").await;
    presence_until(&mut watcher, "sleeper", "online").await;

    let pid = paused.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Declared dead: the cluster forgets its connections.
    presence_until(&mut watcher, "sleeper", "offline").await;
    assert!(
        std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Awake again, it learns it was declared dead and tells its clients to
    // reconnect rather than serving connections the cluster forgot.
    let woke = Instant::now();
    assert_eq!(sleeper.closed().await.map(|(code, _)| code), Some(1012));
    assert!(
        woke.elapsed() < convergence_bound(&cfg),
        "took {:?}",
        woke.elapsed()
    );
    let _again = connect(&paused.ws_url(), &cfg, "sleeper").await;
    presence_until(&mut watcher, "sleeper", "online").await;
}

#[tokio::test]
async fn while_nats_is_down_requests_fail_fast_and_new_connections_are_refused() {
    let mut stack = Stack::start();
    let (cfg, _w, gw, mut carol) = carol_in_room_r(&stack).await;

    stack.nats.stop().unwrap();
    readyz_becomes(&gw, 503, Duration::from_secs(5)).await;
    let asked = Instant::now();
    assert_eq!(
        carol.err("rooms.info", json!({"room": "r"})).await,
        "unavailable"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "took {:?}",
        asked.elapsed()
    );
    let refused = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "dave")).await;
    assert_eq!(refused.err().and_then(|e| e.status()), Some(503));

    // Everything works again once the bus is back, on the same connection.
    stack.nats.resume().unwrap();
    readyz_becomes(&gw, 200, Duration::from_secs(10)).await;
    // The workers' subscriptions come back on their own; requests succeed
    // again within the bound.
    newcomer_reaches_carol_in_r(&gw, &cfg, &mut carol).await;
}

#[tokio::test]
async fn while_redis_is_down_the_gateway_is_unready_and_requests_are_unavailable() {
    let mut stack = Stack::start_durable();
    let (cfg, _w, gw, mut carol) = carol_in_room_r(&stack).await;
    assert_eq!(http_status(&gw.http_url("/readyz")).await, 200);

    stack.redis.stop().unwrap();
    readyz_becomes(&gw, 503, Duration::from_secs(5)).await;
    // The documented policy: still accepting connections, storage requests
    // answered `unavailable` promptly.
    let mut dave = connect(&gw.ws_url(), &cfg, "dave").await;
    let asked = Instant::now();
    assert_eq!(
        dave.err("rooms.join", json!({"room": "r"})).await,
        "unavailable"
    );
    assert!(
        asked.elapsed() < Duration::from_millis(2_500),
        "took {:?}",
        asked.elapsed()
    );

    stack.redis.resume().unwrap();
    readyz_becomes(&gw, 200, Duration::from_secs(5)).await;
    // Nothing stored was lost, and the same connection works again.
    dave.ok("rooms.join", json!({"room": "r"})).await;
    carol
        .ok("rooms.publish", json!({"room": "r", "data": 1}))
        .await;
    assert_eq!(dave.event("message").await["data"], 1);
}

/// The repair must never take a live connection for a closed one: under
/// constant churn (so that heartbeats keep seeing events in flight and
/// repairs run), the steady users stay online throughout, and every user
/// who left ends offline.
#[tokio::test]
async fn repairs_under_churn_never_disturb_live_connections() {
    let stack = Stack::start();
    let mut cfg = config(&stack);
    cfg.gateway.heartbeat_interval_ms = 50;
    cfg.presence.gateway_dead_after_ms = 800;
    let _w = Workers::start(cfg.clone(), SERVICES).await;
    let gw = Gateway::start(cfg.clone()).await;
    let steady: Vec<String> = (0..5).map(|i| format!("steady{i}")).collect();
    let churned: Vec<String> = (0..20).map(|i| format!("churn{i}")).collect();
    let mut watcher = connect(&gw.ws_url(), &cfg, "watcher").await;
    let all: Vec<&String> = steady.iter().chain(&churned).collect();
    watcher
        .ok("presence.subscribe", json!({ "users": all }))
        .await;
    let mut keep = Vec::new();
    for u in &steady {
        keep.push(connect(&gw.ws_url(), &cfg, u).await);
    }
    let mut online = std::collections::HashSet::new();
    while online.len() < steady.len() {
        let p = watcher.event("presence").await;
        if p["status"] == "online" {
            online.insert(p["user"].as_str().unwrap().to_owned());
        }
    }

    let churn = {
        let (url, cfg, churned) = (gw.ws_url(), cfg.clone(), churned.clone());
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(3);
            let mut i = 0;
            while Instant::now() < until {
                let mut batch = Vec::new();
                for u in churned.iter().skip(i % 4 * 5).take(5) {
                    batch.push(connect(&url, &cfg, u).await);
                }
                for c in batch {
                    c.close().await;
                }
                i += 1;
            }
            i
        })
    };
    // Meanwhile no steady user ever goes offline. Afterwards every
    // churned user ends offline.
    let mut last: std::collections::HashMap<String, String> = Default::default();
    let settle = Duration::from_secs(2) + convergence_bound(&cfg);
    loop {
        // While churning, look every 100 ms whether it is over; then wait
        // for silence.
        let wait = if churn.is_finished() {
            settle
        } else {
            Duration::from_millis(100)
        };
        let p = match tokio::time::timeout(wait, watcher.event("presence")).await {
            Ok(p) => p,
            Err(_) if churn.is_finished() && wait == settle => break,
            Err(_) => continue,
        };
        let user = p["user"].as_str().unwrap().to_owned();
        assert!(
            !(steady.contains(&user) && p["status"] == "offline"),
            "a live connection was taken for closed: {p}"
        );
        last.insert(user, p["status"].as_str().unwrap().to_owned());
    }
    assert!(
        churn.await.unwrap() > 5,
        "too little churn to test anything"
    );
    for u in &churned {
        assert_eq!(last.get(u).map(String::as_str), Some("offline"), "{u}");
    }
    for c in keep {
        c.close().await;
    }
}
