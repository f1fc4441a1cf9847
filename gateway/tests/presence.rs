//! Presence end to end: devices, statuses, watchers, room presence, tenant
//! isolation, and a gateway process killed without a goodbye.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_shared::config::Config;
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, Gateway, GatewayProcess, Stack, Workers};

async fn connect(gw: &Gateway, cfg: &Config, app: &str, user: &str) -> Client {
    Client::connect(&gw.ws_url(), &token(cfg, app, user))
        .await
        .unwrap()
}

async fn setup() -> (Stack, Config, Workers, Gateway) {
    let stack = Stack::start();
    let cfg = stack.config();
    let w = Workers::start(cfg.clone(), &["rooms", "presence"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    (stack, cfg, w, gw)
}

/// Waits for a `presence` push saying `user` is `status`. A user's change can
/// arrive twice (watch list and shared room; same `ver`), so earlier ones are
/// skipped.
async fn presence_until(c: &mut Client, user: &str, status: &str) -> Value {
    loop {
        let p = presence_of(c, user).await;
        if p["status"] == status {
            return p;
        }
    }
}

/// Whether no `presence` push about `user` is waiting (pushes about others,
/// such as the client's own state on connect, are dropped).
fn no_presence_about(c: &mut Client, user: &str) -> bool {
    while let Some(p) = c.take_event("presence") {
        if p["user"] == user {
            return false;
        }
    }
    true
}

/// The next `presence` push about `user`.
async fn presence_of(c: &mut Client, user: &str) -> Value {
    loop {
        let p = c.event("presence").await;
        if p["user"] == user {
            return p;
        }
    }
}

#[tokio::test]
async fn a_user_is_online_while_any_device_is_connected() {
    let (_s, cfg, _w, gw) = setup().await;
    let mut watcher = connect(&gw, &cfg, "demo", "watcher").await;
    let snap = watcher
        .ok("presence.subscribe", json!({"users": ["alice"]}))
        .await;
    assert_eq!(snap["users"][0]["status"], "offline");

    let phone = connect(&gw, &cfg, "demo", "alice").await;
    let p = presence_of(&mut watcher, "alice").await;
    assert_eq!(
        (p["status"].clone(), p["last_seen"].clone()),
        (json!("online"), Value::Null)
    );
    let laptop = connect(&gw, &cfg, "demo", "alice").await;
    phone.close().await;
    // One device left: still online, and no push claimed otherwise.
    let mut other = connect(&gw, &cfg, "demo", "other").await;
    let got = other.ok("presence.get", json!({"users": ["alice"]})).await;
    assert_eq!(got["users"][0]["status"], "online");

    laptop.close().await;
    let p = presence_of(&mut watcher, "alice").await;
    assert_eq!(p["status"], "offline");
    assert!(p["last_seen"].as_u64().unwrap() > 0);
    assert!(
        no_presence_about(&mut watcher, "alice"),
        "exactly one offline push"
    );
}

#[tokio::test]
async fn status_and_text_are_per_user_and_pushed_to_watchers() {
    let (_s, cfg, _w, gw) = setup().await;
    let mut watcher = connect(&gw, &cfg, "demo", "watcher").await;
    let snap = watcher
        .ok("presence.subscribe", json!({"users": ["alice", "nobody"]}))
        .await;
    assert_eq!(snap["users"][0]["status"], "offline");
    assert_eq!(snap["users"][1]["status"], "offline");
    let mut alice = connect(&gw, &cfg, "demo", "alice").await;
    presence_until(&mut watcher, "alice", "online").await;

    let me = alice
        .ok(
            "presence.set",
            json!({"status": "away", "text": "at lunch"}),
        )
        .await;
    assert_eq!(
        (me["status"].clone(), me["text"].clone()),
        (json!("away"), json!("at lunch"))
    );
    let p = presence_of(&mut watcher, "alice").await;
    assert_eq!(
        (p["status"].clone(), p["text"].clone()),
        (json!("away"), json!("at lunch"))
    );

    // A second device sees the same user-level status.
    let mut laptop = connect(&gw, &cfg, "demo", "alice").await;
    let got = laptop.ok("presence.get", json!({"users": ["alice"]})).await;
    assert_eq!(got["users"][0]["status"], "away");

    alice.ok("presence.set", json!({"text": null})).await;
    let p = presence_of(&mut watcher, "alice").await;
    assert_eq!(
        (p["status"].clone(), p["text"].clone()),
        (json!("away"), Value::Null)
    );

    // Appearing offline: watchers see offline, the user sees their choice.
    let me = alice.ok("presence.set", json!({"status": "offline"})).await;
    assert_eq!(me["status"], "offline");
    assert_eq!(
        presence_of(&mut watcher, "alice").await["status"],
        "offline"
    );

    assert_eq!(
        alice
            .err("presence.set", json!({"status": "sleeping"}))
            .await,
        "bad_request"
    );
    let long = "x".repeat(300);
    assert_eq!(
        alice.err("presence.set", json!({"text": long})).await,
        "bad_request"
    );
    assert_eq!(
        alice.err("presence.get", json!({"users": ["a b"]})).await,
        "invalid_id"
    );

    // After unsubscribing, no more pushes.
    watcher
        .ok("presence.unsubscribe", json!({"users": ["alice"]}))
        .await;
    alice.ok("presence.set", json!({"status": "busy"})).await;
    watcher
        .ok("presence.get", json!({"users": ["alice"]}))
        .await;
    assert!(no_presence_about(&mut watcher, "alice"));
}

#[tokio::test]
async fn room_members_see_each_others_presence() {
    let (_s, cfg, _w, gw) = setup().await;
    let mut a = connect(&gw, &cfg, "demo", "a").await;
    let mut b = connect(&gw, &cfg, "demo", "b").await;
    a.ok("rooms.create", json!({"room": "team"})).await;
    a.ok("rooms.join", json!({"room": "team"})).await;
    b.ok("rooms.join", json!({"room": "team"})).await;
    let snap = a.ok("presence.room", json!({"room": "team"})).await;
    let mut statuses: Vec<(String, String)> = snap["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user"].as_str().unwrap().into(),
                m["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [("a".into(), "online".into()), ("b".into(), "online".into())]
    );
    b.ok(
        "presence.set",
        json!({"status": "busy", "text": "in a call"}),
    )
    .await;
    let p = presence_of(&mut a, "b").await;
    assert_eq!(
        (p["status"].clone(), p["text"].clone()),
        (json!("busy"), json!("in a call"))
    );
}

#[tokio::test]
async fn presence_never_crosses_apps() {
    let (_s, cfg, _w, gw) = setup().await;
    let mut watcher = connect(&gw, &cfg, "app2", "watcher").await;
    watcher
        .ok("presence.subscribe", json!({"users": ["alice"]}))
        .await;
    let mut alice1 = connect(&gw, &cfg, "app1", "alice").await;
    alice1.ok("presence.set", json!({"status": "busy"})).await;
    // app2's alice is someone else, and offline.
    let got = watcher
        .ok("presence.get", json!({"users": ["alice"]}))
        .await;
    assert_eq!(got["users"][0]["status"], "offline");
    assert!(no_presence_about(&mut watcher, "alice"));
    let _alice2 = connect(&gw, &cfg, "app2", "alice").await;
    let p = presence_of(&mut watcher, "alice").await;
    assert_eq!(p["status"], "online");
}

#[tokio::test]
async fn users_of_a_killed_gateway_go_offline_and_leave_their_rooms() {
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg.gateway.heartbeat_interval_ms = 300;
    cfg.presence.gateway_dead_after_ms = 1_500;
    cfg.presence.reap_interval_ms = 200;
    let _w = Workers::start(cfg.clone(), &["rooms", "presence"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let mut doomed = GatewayProcess::start(env!("CARGO_BIN_EXE_switchboard-gateway"), &cfg).await;

    let mut bob = connect(&gw, &cfg, "demo", "bob").await;
    bob.ok("rooms.create", json!({"room": "pair", "max_members": 2}))
        .await;
    bob.ok("rooms.join", json!({"room": "pair"})).await;
    bob.ok("presence.subscribe", json!({"users": ["alice"]}))
        .await;
    let mut alice = Client::connect(&doomed.ws_url(), &token(&cfg, "demo", "alice"))
        .await
        .unwrap();
    alice.ok("rooms.join", json!({"room": "pair"})).await;
    assert_eq!(bob.event("member_joined").await["user"], "alice");
    assert_eq!(presence_of(&mut bob, "alice").await["status"], "online");

    let killed = Instant::now();
    doomed.kill();
    let left = bob.event("member_left").await;
    assert_eq!(
        (left["user"].clone(), left["members"].clone()),
        (json!("alice"), json!(1))
    );
    presence_until(&mut bob, "alice", "offline").await;
    let bound =
        Duration::from_millis(cfg.presence.gateway_dead_after_ms + cfg.presence.reap_interval_ms)
            + Duration::from_secs(3);
    assert!(killed.elapsed() < bound, "took {:?}", killed.elapsed());
    // The seat is free again.
    let mut carol = connect(&gw, &cfg, "demo", "carol").await;
    carol.ok("rooms.join", json!({"room": "pair"})).await;
    drop(alice);
}
