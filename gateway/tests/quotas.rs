//! Quotas end to end: what one connection, one user and one app may make
//! the cluster hold. Past a quota a request gets `limit_exceeded` naming the
//! quota and its value, and leaves nothing behind; per-user and per-app
//! quotas hold across gateways and worker replicas; a quota freed by a
//! leave, a close, a clear or an expiry is usable again.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_shared::config::Config;
use switchboard_shared::quotas::AppQuotas;
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, Gateway, Stack, Workers};

async fn connect(gw: &Gateway, cfg: &Config, app: &str, user: &str) -> Client {
    Client::connect(&gw.ws_url(), &token(cfg, app, user))
        .await
        .unwrap()
}

/// Connects and waits until presence has registered the connection (it
/// pushes the user's own presence when it has).
async fn registered(gw: &Gateway, cfg: &Config, app: &str, user: &str) -> Client {
    let mut c = connect(gw, cfg, app, user).await;
    loop {
        if c.event("presence").await["self"] == true {
            return c;
        }
    }
}

/// Sets one app's quotas.
fn app_quotas(cfg: &mut Config, app: &str, q: AppQuotas) {
    cfg.quotas.apps.insert(app.into(), q);
}

/// A stack whose app `demo` has quotas `q`, workers of `services` and one
/// gateway.
async fn demo_with(q: AppQuotas, services: &[&str]) -> (Stack, Config, Workers, Gateway) {
    let stack = Stack::start();
    let mut cfg = stack.config();
    app_quotas(&mut cfg, "demo", q);
    let w = Workers::start(cfg.clone(), services).await;
    let gw = Gateway::start(cfg.clone()).await;
    (stack, cfg, w, gw)
}

/// The error of a request that must be refused over quota `limit` of
/// `value`; returns the whole error object.
async fn over(c: &mut Client, op: &str, data: Value, limit: &str, value: u64) -> Value {
    let r = c.request(op, data.clone()).await;
    assert_eq!(r["ok"], false, "{op} {data} should be over quota: {r}");
    let e = r["error"].clone();
    assert_eq!(
        (e["code"].clone(), e["limit"].clone(), e["value"].clone()),
        (json!("limit_exceeded"), json!(limit), json!(value)),
        "{r}"
    );
    e
}

/// Retries `op` until it succeeds (a quota freed by something no client
/// sees, e.g. an expiry); each refusal must be `limit_exceeded`.
async fn eventually_ok(c: &mut Client, op: &str, data: Value, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = c.request(op, data.clone()).await;
        if r["ok"] == true {
            return r["data"].clone();
        }
        assert_eq!(r["error"]["code"], "limit_exceeded", "{r}");
        assert!(Instant::now() < deadline, "{op} {data} still refused: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_connection_past_its_rooms_is_refused_holds_nothing_for_them_and_a_leave_frees_one() {
    let (_stack, cfg, _w, gw) = demo_with(
        AppQuotas {
            rooms_per_connection: Some(20),
            ..AppQuotas::default()
        },
        &["rooms"],
    )
    .await;
    let mut a = connect(&gw, &cfg, "demo", "alice").await;
    let mut b = connect(&gw, &cfg, "demo", "bob").await;
    for i in 0..25 {
        b.ok("rooms.create", json!({"room": format!("r{i}")})).await;
    }
    for i in 0..20 {
        a.ok("rooms.join", json!({"room": format!("r{i}")})).await;
    }
    for i in 20..25 {
        let e = over(
            &mut a,
            "rooms.join",
            json!({"room": format!("r{i}")}),
            "rooms_per_connection",
            20,
        )
        .await;
        assert!(e["message"].as_str().unwrap().contains("20"), "{e}");
    }
    // Joining a room the connection is in again is not a new room.
    a.ok("rooms.join", json!({"room": "r0"})).await;
    // Another app's connections have the default quota.
    let mut other = connect(&gw, &cfg, "other", "carol").await;
    for i in 0..22 {
        other
            .ok("rooms.create", json!({"room": format!("o{i}")}))
            .await;
        other
            .ok("rooms.join", json!({"room": format!("o{i}")}))
            .await;
    }

    // A refused join holds nothing: no membership, no feed.
    b.ok("rooms.join", json!({"room": "r21"})).await;
    let members = b.ok("rooms.members", json!({"room": "r21"})).await;
    assert_eq!(members["count"], 1, "{members}");
    b.ok("rooms.join", json!({"room": "r0"})).await;
    b.ok(
        "rooms.publish",
        json!({"room": "r21", "data": "not for alice"}),
    )
    .await;
    b.ok("rooms.publish", json!({"room": "r0", "data": "for alice"}))
        .await;
    let m = a.event("message").await;
    assert_eq!(
        (m["room"].clone(), m["data"].clone()),
        (json!("r0"), json!("for alice"))
    );

    // A leave frees a place: the refused room can be joined now.
    a.ok("rooms.leave", json!({"room": "r1"})).await;
    a.ok("rooms.join", json!({"room": "r21"})).await;
    over(
        &mut a,
        "rooms.join",
        json!({"room": "r22"}),
        "rooms_per_connection",
        20,
    )
    .await;
    b.ok(
        "rooms.publish",
        json!({"room": "r21", "data": "now for alice"}),
    )
    .await;
    let m = a.event("message").await;
    assert_eq!(
        (m["room"].clone(), m["data"].clone()),
        (json!("r21"), json!("now for alice"))
    );
    // Refused joins of rooms that do not exist take no place either.
    a.ok("rooms.leave", json!({"room": "r2"})).await;
    for _ in 0..3 {
        assert_eq!(
            a.err("rooms.join", json!({"room": "nowhere"})).await,
            "not_found"
        );
    }
    a.ok("rooms.join", json!({"room": "r22"})).await;
}

/// Sends `n` creates at once on `c`; returns the replies.
async fn creates(c: &mut Client, prefix: &str, n: usize) -> Vec<Value> {
    for i in 0..n {
        c.send_json(&json!({"id": format!("{prefix}{i}"), "op": "rooms.create",
            "data": {"room": format!("{prefix}{i}")}}))
            .await;
    }
    let mut out = Vec::new();
    for i in 0..n {
        out.push(c.reply(&json!(format!("{prefix}{i}"))).await);
    }
    out
}

#[tokio::test]
async fn room_creation_per_user_holds_exactly_across_two_gateways_and_two_replicas() {
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg.rooms.idle_ttl_secs = 1;
    app_quotas(
        &mut cfg,
        "demo",
        AppQuotas {
            rooms_created_per_user: Some(5),
            ..AppQuotas::default()
        },
    );
    app_quotas(
        &mut cfg,
        "tiny",
        AppQuotas {
            live_rooms_per_app: Some(3),
            ..AppQuotas::default()
        },
    );
    let _w1 = Workers::start(cfg.clone(), &["rooms"]).await;
    let _w2 = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw1 = Gateway::start(cfg.clone()).await;
    let gw2 = Gateway::start(cfg.clone()).await;
    let mut on1 = connect(&gw1, &cfg, "demo", "maker").await;
    let mut on2 = connect(&gw2, &cfg, "demo", "maker").await;

    let (r1, r2) = tokio::join!(creates(&mut on1, "a", 8), creates(&mut on2, "b", 8));
    let all: Vec<&Value> = r1.iter().chain(&r2).collect();
    let made: Vec<&Value> = all.iter().copied().filter(|r| r["ok"] == true).collect();
    assert_eq!(made.len(), 5, "exactly the quota: {all:?}");
    for replies in [&r1, &r2] {
        assert!(
            replies.iter().any(|r| r["ok"] == false),
            "refused on both gateways: {replies:?}"
        );
    }
    for r in all.iter().filter(|r| r["ok"] != true) {
        assert_eq!(
            (
                r["error"]["code"].clone(),
                r["error"]["limit"].clone(),
                r["error"]["value"].clone()
            ),
            (
                json!("limit_exceeded"),
                json!("rooms_created_per_user"),
                json!(5)
            ),
            "{r}"
        );
    }
    // The rooms made exist; the refused ones do not.
    for r in &all {
        let id = r["id"].as_str().unwrap();
        let info = on1.request("rooms.info", json!({"room": id})).await;
        assert_eq!(info["ok"], r["ok"], "{id}: {info}");
    }
    let pool = switchboard_shared::redis::connect(&cfg.redis)
        .await
        .unwrap();
    let mut redis = pool.get().await.unwrap();
    let app = switchboard_shared::ids::TenantId::parse("demo").unwrap();
    let user = switchboard_shared::ids::UserId::parse("maker").unwrap();
    assert_eq!(
        switchboard_shared::quotas::user_rooms_created(&mut redis, &app, &user)
            .await
            .unwrap(),
        5
    );
    // Another user of the app is not affected.
    let mut someone = connect(&gw2, &cfg, "demo", "someone").await;
    someone.ok("rooms.create", json!({"room": "theirs"})).await;

    // An app's live rooms, whoever creates them.
    let mut t1 = connect(&gw1, &cfg, "tiny", "u1").await;
    let mut t2 = connect(&gw2, &cfg, "tiny", "u2").await;
    t1.ok("rooms.create", json!({"room": "x1"})).await;
    t2.ok("rooms.create", json!({"room": "x2"})).await;
    t1.ok("rooms.join", json!({"room": "x1"})).await;
    t1.ok("rooms.create", json!({"room": "x3"})).await;
    over(
        &mut t2,
        "rooms.create",
        json!({"room": "x4"}),
        "live_rooms_per_app",
        3,
    )
    .await;
    let tiny = switchboard_shared::ids::TenantId::parse("tiny").unwrap();
    let usage = switchboard_shared::quotas::usage(&mut redis, &tiny, switchboard_shared::now_ms())
        .await
        .unwrap();
    assert_eq!(usage.live_rooms, 3, "{usage:?}");
    // Nobody joined the first user's rooms: they expire, and the quota
    // comes back.
    let back = eventually_ok(
        &mut on2,
        "rooms.create",
        json!({"room": "after-expiry"}),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(back["room"], "after-expiry");

    // x2 and x3 expire (nobody is in them); x1 has a member and stays.
    eventually_ok(
        &mut t2,
        "rooms.create",
        json!({"room": "x4"}),
        Duration::from_secs(15),
    )
    .await;
    t1.ok("rooms.info", json!({"room": "x1"})).await;
    // The sweep leaves exactly the rooms that exist counted: x1 and x4.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = switchboard_shared::now_ms();
        let u = switchboard_shared::quotas::usage(&mut redis, &tiny, now)
            .await
            .unwrap();
        if u.live_rooms == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{u:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn presence_subscriptions_past_the_cap_are_refused_whole() {
    let (_stack, cfg, _w, gw) = demo_with(
        AppQuotas {
            presence_subscriptions_per_connection: Some(3),
            ..AppQuotas::default()
        },
        &["presence"],
    )
    .await;
    let mut watcher = registered(&gw, &cfg, "demo", "watcher").await;
    watcher
        .ok("presence.subscribe", json!({"users": ["a", "b"]}))
        .await;
    // Already followed users count once.
    watcher
        .ok("presence.subscribe", json!({"users": ["a", "b"]}))
        .await;
    over(
        &mut watcher,
        "presence.subscribe",
        json!({"users": ["c", "d"]}),
        "presence_subscriptions_per_connection",
        3,
    )
    .await;
    // Refused whole: c is not followed.
    let _c = registered(&gw, &cfg, "demo", "c").await;
    let _b = registered(&gw, &cfg, "demo", "b").await;
    let p = watcher.event("presence").await;
    assert_eq!(p["user"], "b", "c's change must not reach the watcher: {p}");
    watcher
        .ok("presence.subscribe", json!({"users": ["c"]}))
        .await;
    over(
        &mut watcher,
        "presence.subscribe",
        json!({"users": ["d"]}),
        "presence_subscriptions_per_connection",
        3,
    )
    .await;
    // Unsubscribing frees places.
    watcher
        .ok("presence.unsubscribe", json!({"users": ["a"]}))
        .await;
    let snap = watcher
        .ok("presence.subscribe", json!({"users": ["d"]}))
        .await;
    assert_eq!(snap["users"][0]["user"], "d");
}

#[tokio::test]
async fn signalling_in_too_many_rooms_at_once_is_refused_until_one_ends() {
    let (_stack, cfg, _w, gw) = demo_with(
        AppQuotas {
            signal_rooms_per_connection: Some(2),
            ..AppQuotas::default()
        },
        &["rooms"],
    )
    .await;
    let mut a = connect(&gw, &cfg, "demo", "typist").await;
    for r in ["s1", "s2", "s3"] {
        a.ok("rooms.create", json!({"room": r})).await;
        a.ok("rooms.join", json!({"room": r})).await;
    }
    a.ok("rooms.typing", json!({"room": "s1", "typing": true}))
        .await;
    a.ok("rooms.cursor", json!({"room": "s2", "data": {"x": 1}}))
        .await;
    a.ok("rooms.typing", json!({"room": "s2", "typing": true}))
        .await;
    over(
        &mut a,
        "rooms.typing",
        json!({"room": "s3", "typing": true}),
        "signal_rooms_per_connection",
        2,
    )
    .await;
    over(
        &mut a,
        "rooms.cursor",
        json!({"room": "s3", "data": {}}),
        "signal_rooms_per_connection",
        2,
    )
    .await;
    a.ok("rooms.typing", json!({"room": "s1", "typing": false}))
        .await;
    a.ok("rooms.typing", json!({"room": "s3", "typing": true}))
        .await;
}

#[tokio::test]
async fn an_app_over_its_connections_is_refused_at_the_handshake_on_every_gateway() {
    let stack = Stack::start();
    let mut cfg = stack.config();
    app_quotas(
        &mut cfg,
        "small",
        AppQuotas {
            connections_per_app: Some(2),
            ..AppQuotas::default()
        },
    );
    let _w = Workers::start(cfg.clone(), &["presence"]).await;
    let gw1 = Gateway::start(cfg.clone()).await;
    let gw2 = Gateway::start(cfg.clone()).await;
    let first = registered(&gw1, &cfg, "small", "u1").await;
    let _second = registered(&gw1, &cfg, "small", "u2").await;
    for gw in [&gw1, &gw2] {
        let refused = Client::connect(&gw.ws_url(), &token(&cfg, "small", "u3"))
            .await
            .err()
            .unwrap();
        assert_eq!(refused.status(), Some(429), "{refused}");
        let switchboard_test_harness::ConnectError::Http { body, .. } = &refused else {
            panic!("{refused}");
        };
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            body["error"],
            json!({"code": "limit_exceeded", "message": body["error"]["message"],
                "limit": "connections_per_app", "value": 2}),
        );
    }
    // Another app is not affected.
    let _big = registered(&gw2, &cfg, "big", "u1").await;

    // A closed connection gives its place back (once presence has seen the
    // close and the gateway's count is fresh again: poll, bounded).
    first.close().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(&gw2.ws_url(), &token(&cfg, "small", "u3")).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.status(), Some(429), "{e}");
                assert!(Instant::now() < deadline, "the place never came back");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A ticket that matches nobody else's.
fn alone(me: &str) -> Value {
    json!({"props": {"who": me}, "query": {"required": {"who": me}}})
}

#[tokio::test]
async fn tickets_and_calls_per_user_are_bounded_and_an_apps_queue_is_capped() {
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg.matchmaking.tick_ms = 100;
    app_quotas(
        &mut cfg,
        "demo",
        AppQuotas {
            waiting_tickets_per_app: Some(2),
            ..AppQuotas::default()
        },
    );
    let _w = Workers::start(
        cfg.clone(),
        &["rooms", "presence", "signaling", "matchmaking"],
    )
    .await;
    let gw1 = Gateway::start(cfg.clone()).await;
    let gw2 = Gateway::start(cfg.clone()).await;

    // One waiting ticket per user, whatever the number of devices.
    let mut u_phone = registered(&gw1, &cfg, "demo", "u").await;
    let mut u_laptop = registered(&gw2, &cfg, "demo", "u").await;
    let first = u_phone.ok("matchmaking.join", alone("u")).await;
    let second = u_laptop.ok("matchmaking.join", alone("u")).await;
    assert_eq!(second["replaced"], first["ticket"]);
    assert_eq!(second["waiting"], 1);
    // The app's queue holds 2.
    let mut v = registered(&gw1, &cfg, "demo", "v").await;
    let mut w = registered(&gw2, &cfg, "demo", "w").await;
    v.ok("matchmaking.join", alone("v")).await;
    over(
        &mut w,
        "matchmaking.join",
        alone("w"),
        "waiting_tickets_per_app",
        2,
    )
    .await;
    assert_eq!(w.err("matchmaking.status", json!({})).await, "not_found");
    // A replacement is not a new ticket.
    v.ok("matchmaking.join", alone("v")).await;
    // Leaving frees a place.
    v.ok("matchmaking.leave", json!({})).await;
    w.ok("matchmaking.join", alone("w")).await;

    // One call at a time per user, across devices and gateways.
    let mut bob = registered(&gw1, &cfg, "demo", "bob").await;
    let _carol = registered(&gw2, &cfg, "demo", "carol").await;
    u_phone.ok("signaling.call", json!({"to": "bob"})).await;
    bob.event("call_incoming").await;
    assert_eq!(
        u_laptop.err("signaling.call", json!({"to": "carol"})).await,
        "conflict"
    );
    assert_eq!(
        bob.err("signaling.call", json!({"to": "carol"})).await,
        "conflict"
    );
}

#[tokio::test]
async fn an_apps_stored_notifications_are_capped_and_a_clear_frees_them() {
    let stack = Stack::start();
    let mut cfg = stack.config();
    app_quotas(
        &mut cfg,
        "news",
        AppQuotas {
            notifications_per_app: Some(3),
            ..AppQuotas::default()
        },
    );
    let _w = Workers::start(cfg.clone(), &["notifications"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let nats = stack.nats_client().await;
    let send = |users: Vec<&str>| {
        let nats = nats.clone();
        let req = json!({"app": "news", "to": {"users": users}, "type": "t"});
        async move {
            let msg = tokio::time::timeout(
                Duration::from_secs(10),
                nats.request("sb.api.notifications.send", req.to_string().into()),
            )
            .await
            .unwrap()
            .unwrap();
            serde_json::from_slice::<Value>(&msg.payload).unwrap()
        }
    };
    assert_eq!(send(vec!["a", "b"]).await["ok"], true);
    // Refused whole: neither c nor d gets it.
    let r = send(vec!["c", "d"]).await;
    assert_eq!(
        (
            r["ok"].clone(),
            r["error"]["code"].clone(),
            r["error"]["limit"].clone(),
            r["error"]["value"].clone()
        ),
        (
            json!(false),
            json!("limit_exceeded"),
            json!("notifications_per_app"),
            json!(3)
        ),
        "{r}"
    );
    let mut c = connect(&gw, &cfg, "news", "c").await;
    let pending = c.event("notifications").await;
    assert_eq!(pending["items"], json!([]), "{pending}");
    assert_eq!(send(vec!["c"]).await["ok"], true);
    assert_eq!(send(vec!["d"]).await["error"]["code"], "limit_exceeded");
    // Another app is not affected.
    let other = json!({"app": "other", "to": {"users": ["d"]}, "type": "t"});
    let msg = nats
        .request("sb.api.notifications.send", other.to_string().into())
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&msg.payload).unwrap()["ok"],
        true
    );
    // A user clearing theirs frees places.
    let mut a = connect(&gw, &cfg, "news", "a").await;
    a.event("notifications").await;
    a.ok("notifications.clear", json!({"all": true})).await;
    assert_eq!(send(vec!["d"]).await["ok"], true);
}
