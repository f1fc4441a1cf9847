//! Abuse limits end to end: a user over an op's rate gets a typed
//! `rate_limited` error with the time to wait, other users and other ops
//! carry on, and a client that keeps going is closed with 1008.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use switchboard_shared::limits::Bucket;
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, ConnectError, Gateway, Stack, Workers};

#[tokio::test]
async fn a_flooding_user_is_rate_limited_then_closed_while_others_carry_on() {
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg.limits.enabled = true;
    cfg.limits
        .ops
        .entry("rooms".into())
        .or_default()
        .insert("publish".into(), Bucket::new(1, 3));
    cfg.limits.strikes_to_close = 5;
    cfg.limits.abuse_cooldown_ms = 1_000;
    let _w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let mut flood = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "flood"))
        .await
        .unwrap();
    let mut calm = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "calm"))
        .await
        .unwrap();
    flood.ok("rooms.create", json!({"room": "r"})).await;
    flood.ok("rooms.join", json!({"room": "r"})).await;
    calm.ok("rooms.join", json!({"room": "r"})).await;

    for i in 0..3 {
        flood
            .ok("rooms.publish", json!({"room": "r", "data": i}))
            .await;
    }
    let refused = flood
        .request("rooms.publish", json!({"room": "r", "data": "too much"}))
        .await;
    assert_eq!(refused["error"]["code"], "rate_limited", "{refused}");
    let wait = refused["error"]["retry_after_ms"].as_u64().unwrap();
    assert!((1..=1_000).contains(&wait), "{refused}");
    // Other ops of the same user, and other users, are not affected.
    flood.ok("rooms.info", json!({"room": "r"})).await;
    calm.ok(
        "rooms.publish",
        json!({"room": "r", "data": "calm", "echo": true}),
    )
    .await;
    // The refused message was never delivered.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.push(calm.event("message").await["data"].clone());
    }
    assert_eq!(seen, vec![json!(0), json!(1), json!(2), json!("calm")]);

    // Sustained abuse: the connection is closed with 1008.
    for _ in 0..4 {
        flood
            .send_json(&json!({"id": "x", "op": "rooms.publish", "data": {"room": "r", "data": 0}}))
            .await;
    }
    let (code, reason) = flood.closed().await.unwrap();
    assert_eq!(code, 1008);
    assert!(reason.contains("rate"), "{reason}");
    calm.ok("rooms.info", json!({"room": "r"})).await;

    // Reconnecting at once does not resume the flood: the user is refused
    // for `abuse_cooldown_ms`, told how long to wait; others are not.
    let again = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "flood")).await;
    let Err(ConnectError::Http { status, body }) = again else {
        panic!("reconnected at once");
    };
    assert_eq!(status, 429);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let wait = body["error"]["retry_after_ms"].as_u64().unwrap();
    assert!((1..=1_000).contains(&wait), "{body}");
    Client::connect(&gw.ws_url(), &token(&cfg, "demo", "other"))
        .await
        .unwrap();
    // After the wait it was told, the user is welcome again.
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    let mut back = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "flood"))
        .await
        .unwrap();
    back.ok("rooms.info", json!({"room": "r"})).await;
}

#[tokio::test]
async fn connections_from_one_address_are_capped_and_the_slot_comes_back() {
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg.limits.enabled = true;
    cfg.limits.ip_connections = 2;
    let _w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let t = token(&cfg, "demo", "many");
    let a = Client::connect(&gw.ws_url(), &t).await.unwrap();
    let _b = Client::connect(&gw.ws_url(), &t).await.unwrap();
    let refused = Client::connect(&gw.ws_url(), &t).await.err().unwrap();
    assert_eq!(refused.status(), Some(429));
    assert!(refused.to_string().contains("rate_limited"), "{refused}");
    // A closed connection gives its slot back (once the gateway has let go
    // of it, which takes no event a client can see: poll, bounded).
    a.close().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Client::connect(&gw.ws_url(), &t).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.status(), Some(429), "{e}");
                assert!(std::time::Instant::now() < deadline, "slot never came back");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

/// Connects `user` and waits until presence has registered the device (it
/// pushes the user's own presence when it has).
async fn registered(url: &str, cfg: &switchboard_shared::config::Config, user: &str) -> Client {
    let mut c = Client::connect(url, &token(cfg, "demo", user))
        .await
        .unwrap();
    loop {
        let p = c.event("presence").await;
        if p["self"] == true {
            return c;
        }
    }
}

#[tokio::test]
async fn a_user_over_the_connection_cap_loses_the_oldest_connection_on_any_gateway() {
    use switchboard_shared::limits::OverflowPolicy;
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg.limits.enabled = true;
    cfg.limits.user_connections = 2;
    cfg.limits.user_connections_policy = OverflowPolicy::CloseOldest;
    let _w = Workers::start(cfg.clone(), &["rooms", "presence"]).await;
    let gw1 = Gateway::start(cfg.clone()).await;
    let gw2 = Gateway::start(cfg.clone()).await;
    let mut oldest = registered(&gw1.ws_url(), &cfg, "busy").await;
    let mut second = registered(&gw2.ws_url(), &cfg, "busy").await;
    let mut newest = registered(&gw1.ws_url(), &cfg, "busy").await;
    let (code, reason) = oldest.closed().await.unwrap();
    assert_eq!(code, 1008);
    assert!(reason.contains("too many connections"), "{reason}");
    second
        .ok("rooms.create", json!({"room": "still-here"}))
        .await;
    newest.ok("rooms.join", json!({"room": "still-here"})).await;
    // Another user is not affected by this user's cap.
    let _other = registered(&gw2.ws_url(), &cfg, "other").await;

    // With `refuse`, the newcomer is the one closed.
    cfg.limits.user_connections_policy = OverflowPolicy::Refuse;
    let stack2 = Stack::start();
    let mut cfg2 = stack2.config();
    cfg2.limits = cfg.limits.clone();
    let _w2 = Workers::start(cfg2.clone(), &["rooms", "presence"]).await;
    let gw3 = Gateway::start(cfg2.clone()).await;
    let mut a = registered(&gw3.ws_url(), &cfg2, "busy").await;
    let _b = registered(&gw3.ws_url(), &cfg2, "busy").await;
    let mut c = Client::connect(&gw3.ws_url(), &token(&cfg2, "demo", "busy"))
        .await
        .unwrap();
    assert_eq!(c.closed().await.map(|(code, _)| code), Some(1008));
    a.ok("rooms.create", json!({"room": "first-stays"})).await;
}
