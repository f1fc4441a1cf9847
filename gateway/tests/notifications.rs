//! The notification store end to end: a backend sends over NATS, online
//! devices get it at once, offline users get it on connect, in order, and
//! nothing is lost across a worker restart.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use switchboard_shared::config::Config;
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, Gateway, Stack, Workers};
use switchboard_workers::notifications::{Notifications, SendReq};

const SERVICES: &[&str] = &["rooms", "presence", "notifications"];

/// A trusted backend's send, over NATS request/reply.
async fn send(nats: &async_nats::Client, req: Value) -> Value {
    let msg = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        nats.request("sb.api.notifications.send", req.to_string().into()),
    )
    .await
    .unwrap()
    .unwrap();
    serde_json::from_slice(&msg.payload).unwrap()
}

async fn setup(
    f: impl FnOnce(&mut Config),
) -> (Stack, Config, Workers, Gateway, async_nats::Client) {
    let stack = Stack::start();
    let mut cfg = stack.config();
    f(&mut cfg);
    let w = Workers::start(cfg.clone(), SERVICES).await;
    let gw = Gateway::start(cfg.clone()).await;
    let nats = stack.nats_client().await;
    (stack, cfg, w, gw, nats)
}

async fn connect(gw: &Gateway, cfg: &Config, app: &str, user: &str) -> Client {
    Client::connect(&gw.ws_url(), &token(cfg, app, user))
        .await
        .unwrap()
}

/// Connects and waits until the notifications service has registered the
/// connection (it pushes the pending list when it does).
async fn registered(gw: &Gateway, cfg: &Config, app: &str, user: &str) -> Client {
    let mut c = connect(gw, cfg, app, user).await;
    c.event("notifications").await;
    c
}

fn types(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn offline_users_get_pending_notifications_on_connect_even_after_a_worker_restart() {
    let (_s, cfg, w, gw, nats) = setup(|_| {}).await;
    // alice has connected once, then went away.
    registered(&gw, &cfg, "demo", "alice").await.close().await;
    for kind in ["first", "second", "third"] {
        let r = send(&nats, json!({"app": "demo", "to": {"user": "alice"}, "type": kind, "priority": "high", "content": {"k": kind}})).await;
        assert_eq!(
            (r["ok"].clone(), r["recipients"].clone()),
            (json!(true), json!(1)),
            "{r}"
        );
    }
    w.stop().await;
    let _w = Workers::start(cfg.clone(), SERVICES).await;

    let mut alice = connect(&gw, &cfg, "demo", "alice").await;
    let pending = alice.event("notifications").await;
    assert_eq!(pending["unread"], 3);
    assert_eq!(
        types(&pending["items"]),
        ["first", "second", "third"],
        "oldest first"
    );
    let n = &pending["items"][0];
    assert_eq!(
        (
            n["priority"].clone(),
            n["content"].clone(),
            n["read"].clone()
        ),
        (json!("high"), json!({"k": "first"}), json!(false))
    );
    assert!(n["expires_at"].as_u64().unwrap() > n["created_at"].as_u64().unwrap());
}

#[tokio::test]
async fn online_devices_get_it_at_once_and_stay_in_step() {
    let (_s, cfg, _w, gw, nats) = setup(|_| {}).await;
    let mut phone = connect(&gw, &cfg, "demo", "alice").await;
    assert_eq!(phone.event("notifications").await["unread"], 0);
    let mut laptop = registered(&gw, &cfg, "demo", "alice").await;
    let r = send(&nats, json!({"app": "demo", "to": {"users": ["alice", "bob"]}, "type": "match", "content": {"with": "carol"}})).await;
    assert_eq!(r["recipients"], 2);
    let id = r["id"].as_str().unwrap().to_owned();
    for device in [&mut phone, &mut laptop] {
        let n = device.event("notification").await;
        assert_eq!(
            (
                n["id"].clone(),
                n["type"].clone(),
                n["unread"].clone(),
                n["priority"].clone()
            ),
            (json!(id), json!("match"), json!(1), json!("normal"))
        );
    }
    send(
        &nats,
        json!({"app": "demo", "to": {"user": "alice"}, "type": "like"}),
    )
    .await;
    send(
        &nats,
        json!({"app": "demo", "to": {"user": "alice"}, "type": "message"}),
    )
    .await;

    let listed = phone.ok("notifications.list", json!({})).await;
    assert_eq!(
        types(&listed["items"]),
        ["message", "like", "match"],
        "newest first"
    );
    assert_eq!(
        (listed["unread"].clone(), listed["total"].clone()),
        (json!(3), json!(3))
    );

    let r = phone.ok("notifications.mark_read", json!({"id": id})).await;
    assert_eq!(r["unread"], 2);
    let synced = laptop.event("notifications_read").await;
    assert_eq!(
        (synced["id"].clone(), synced["unread"].clone()),
        (json!(id), json!(2))
    );
    let listed = phone
        .ok(
            "notifications.list",
            json!({"order": "unread_first", "limit": 2}),
        )
        .await;
    assert_eq!(
        (types(&listed["items"]), listed["more"].clone()),
        (vec!["message".to_owned(), "like".to_owned()], json!(true))
    );
    let rest = phone
        .ok(
            "notifications.list",
            json!({"order": "unread_first", "offset": 2}),
        )
        .await;
    assert_eq!(rest["items"][0]["read"], true);

    assert_eq!(
        phone
            .ok("notifications.mark_read", json!({"all": true}))
            .await["unread"],
        0
    );
    assert_eq!(
        phone.ok("notifications.unread", json!(null)).await["unread"],
        0
    );
    phone.ok("notifications.clear", json!({"id": id})).await;
    assert_eq!(phone.ok("notifications.list", json!({})).await["total"], 2);
    assert_eq!(
        phone.err("notifications.clear", json!({"id": id})).await,
        "not_found"
    );
    phone.ok("notifications.clear", json!({"all": true})).await;
    // (No data at all means defaults.)
    assert_eq!(
        phone.ok("notifications.list", json!(null)).await["total"],
        0
    );

    assert_eq!(
        phone.err("notifications.mark_read", json!({})).await,
        "bad_request"
    );
    assert_eq!(
        phone
            .err("notifications.mark_read", json!({"id": "../x"}))
            .await,
        "invalid_id"
    );
    assert_eq!(
        phone
            .err("notifications.list", json!({"order": "random"}))
            .await,
        "bad_request"
    );
}

#[tokio::test]
async fn rooms_and_whole_apps_can_be_notified() {
    let (_s, cfg, _w, gw, nats) = setup(|_| {}).await;
    let mut a = registered(&gw, &cfg, "demo", "a").await;
    let mut b = registered(&gw, &cfg, "demo", "b").await;
    let mut other_app = registered(&gw, &cfg, "other", "a").await;
    a.ok("rooms.create", json!({"room": "club"})).await;
    a.ok("rooms.join", json!({"room": "club"})).await;
    let r = send(
        &nats,
        json!({"app": "demo", "to": {"room": "club"}, "type": "event"}),
    )
    .await;
    assert_eq!(r["recipients"], 1);
    assert_eq!(a.event("notification").await["type"], "event");

    let r = send(
        &nats,
        json!({"app": "demo", "to": {"app": true}, "type": "maintenance", "priority": "low"}),
    )
    .await;
    assert_eq!(r["recipients"], 2, "both users of the app have connected");
    assert_eq!(a.event("notification").await["type"], "maintenance");
    assert_eq!(b.event("notification").await["type"], "maintenance");
    // Stored for each, and nothing reached the other app.
    assert_eq!(b.ok("notifications.unread", json!({})).await["unread"], 1);
    assert_eq!(
        other_app.ok("notifications.unread", json!({})).await["unread"],
        0
    );
    assert!(other_app.take_event("notification").is_none());
}

#[tokio::test]
async fn the_store_is_capped_and_notifications_expire() {
    let (_s, cfg, _w, gw, nats) = setup(|c| c.notifications.per_user_cap = 3).await;
    let mut u = registered(&gw, &cfg, "demo", "u").await;
    for i in 1..=5 {
        send(
            &nats,
            json!({"app": "demo", "to": {"user": "u"}, "type": format!("t{i}")}),
        )
        .await;
    }
    let listed = u.ok("notifications.list", json!({})).await;
    assert_eq!(
        types(&listed["items"]),
        ["t5", "t4", "t3"],
        "oldest dropped first"
    );

    send(
        &nats,
        json!({"app": "demo", "to": {"user": "u"}, "type": "brief", "ttl_secs": 1}),
    )
    .await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let listed = u.ok("notifications.list", json!({})).await;
        if !types(&listed["items"]).contains(&"brief".to_owned()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await; // expiry is time-based by design
    }
}

#[tokio::test]
async fn bad_send_requests_get_typed_errors() {
    let (_s, _cfg, _w, _gw, nats) = setup(|_| {}).await;
    let cases = [
        (json!("nope"), "bad_request"),
        (json!({"app": "demo", "to": {"user": "u"}}), "bad_request"),
        (
            json!({"app": "de.mo", "to": {"user": "u"}, "type": "x"}),
            "invalid_id",
        ),
        (
            json!({"app": "demo", "to": {"user": "u"}, "type": "x", "priority": "urgent"}),
            "bad_request",
        ),
        (
            json!({"app": "demo", "to": {"room": "a.b"}, "type": "x"}),
            "invalid_id",
        ),
        (
            json!({"app": "demo", "to": {"users": []}, "type": "x"}),
            "bad_request",
        ),
        (
            json!({"app": "demo", "to": {"user": "u"}, "type": "x", "content": "x".repeat(20_000)}),
            "bad_request",
        ),
    ];
    for (req, code) in cases {
        let r = send(&nats, req.clone()).await;
        assert_eq!(
            (r["ok"].clone(), r["error"]["code"].clone()),
            (json!(false), json!(code)),
            "{req}"
        );
    }
    let r = send(
        &nats,
        json!({"app": "demo", "to": {"user": "u"}, "type": "fine"}),
    )
    .await;
    assert_eq!(r["ok"], true);
}

#[tokio::test]
async fn back_to_back_notifications_keep_their_send_order() {
    let cap = 20;
    let (_s, cfg, _w, gw, nats) = setup(|c| c.notifications.per_user_cap = cap).await;
    let mut phone = registered(&gw, &cfg, "demo", "u").await;
    // A burst, as one replica handles it: back to back, without the bus
    // round trip in between, so many are stored within one millisecond.
    let pool = switchboard_shared::redis::connect(&cfg.redis)
        .await
        .unwrap();
    let replica = Notifications::new(nats.clone(), pool, cfg.notifications.clone());
    let sent: Vec<String> = (1..=100).map(|i| format!("t{i:03}")).collect();
    for kind in &sent {
        let req: SendReq =
            serde_json::from_value(json!({"app": "demo", "to": {"user": "u"}, "type": kind}))
                .unwrap();
        replica.send(req).await.unwrap();
    }
    // Live pushes come in send order.
    for kind in &sent {
        assert_eq!(&phone.event("notification").await["type"], kind);
    }
    // The store keeps exactly the newest `cap`, newest first.
    let kept: Vec<String> = sent[sent.len() - cap as usize..].to_vec();
    let listed = phone.ok("notifications.list", json!({"limit": 200})).await;
    let newest_first: Vec<String> = kept.iter().rev().cloned().collect();
    assert_eq!(types(&listed["items"]), newest_first, "list order");
    assert_eq!(
        (listed["total"].clone(), listed["unread"].clone()),
        (json!(cap), json!(cap))
    );
    // A device connecting now gets them pending, oldest first.
    let mut laptop = connect(&gw, &cfg, "demo", "u").await;
    let pending = laptop.event("notifications").await;
    assert_eq!(types(&pending["items"]), kept, "pending order");
}
