//! Room signals: typing (with expiry), cursors, delivery/read receipts and
//! unread counts, reactions. Ephemeral signals never enter history.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use switchboard_shared::config::Config;
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, Gateway, Stack, Workers};

async fn pair(cfg_fn: impl FnOnce(&mut Config)) -> (Stack, Workers, Gateway, Client, Client) {
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg_fn(&mut cfg);
    let w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let mut a = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "a"))
        .await
        .unwrap();
    let mut b = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "b"))
        .await
        .unwrap();
    a.ok("rooms.create", json!({"room": "doc"})).await;
    a.ok("rooms.join", json!({"room": "doc"})).await;
    b.ok("rooms.join", json!({"room": "doc"})).await;
    a.event("member_joined").await;
    (stack, w, gw, a, b)
}

#[tokio::test]
async fn typing_is_fanned_out_and_expires_without_a_stop() {
    let (_s, _w, _gw, mut a, mut b) = pair(|c| c.rooms.typing_ttl_ms = 400).await;
    a.ok("rooms.typing", json!({"room": "doc", "typing": true}))
        .await;
    let t = b.event("typing").await;
    assert_eq!(
        (
            t["user"].clone(),
            t["typing"].clone(),
            t["expires_in_ms"].clone()
        ),
        (json!("a"), json!(true), json!(400))
    );
    // Repeating "typing" while typing refreshes it without another push;
    // an explicit stop is announced once.
    a.ok("rooms.typing", json!({"room": "doc", "typing": true}))
        .await;
    a.ok("rooms.typing", json!({"room": "doc", "typing": false}))
        .await;
    let t = b.event("typing").await;
    assert_eq!(t["typing"], false);
    // No stop this time: the server ends it by itself.
    a.ok("rooms.typing", json!({"room": "doc", "typing": true}))
        .await;
    assert_eq!(b.event("typing").await["typing"], true);
    let t = b.event("typing").await;
    assert_eq!(
        (t["user"].clone(), t["typing"].clone()),
        (json!("a"), json!(false))
    );
    // Typing is never stored.
    let h = b.ok("rooms.history", json!({"room": "doc"})).await;
    assert!(h["messages"].as_array().unwrap().is_empty());
    assert_eq!(
        b.err("rooms.typing", json!({"room": "nope", "typing": true}))
            .await,
        "not_found"
    );
}

#[tokio::test]
async fn cursors_reach_the_other_members_only() {
    let (_s, _w, _gw, mut a, mut b) = pair(|_| {}).await;
    a.ok(
        "rooms.cursor",
        json!({"room": "doc", "data": {"line": 3, "col": 7, "sel": [3, 9]}}),
    )
    .await;
    let c = b.event("cursor").await;
    assert_eq!(
        (c["user"].clone(), c["data"]["col"].clone()),
        (json!("a"), json!(7))
    );
    a.ok("rooms.info", json!({"room": "doc"})).await;
    assert!(a.take_event("cursor").is_none(), "no echo to the sender");
    let info = a.ok("rooms.info", json!({"room": "doc"})).await;
    assert_eq!(info["seq"], 0, "cursors are not messages");
}

#[tokio::test]
async fn receipts_move_forward_and_unread_counts_follow() {
    let (_s, _w, _gw, mut a, mut b) = pair(|_| {}).await;
    for i in 1..=5 {
        a.ok("rooms.publish", json!({"room": "doc", "data": i}))
            .await;
    }
    let u = b.ok("rooms.unread", json!({})).await;
    assert_eq!(
        u["rooms"],
        json!([{"room": "doc", "unread": 5, "head_seq": 5, "read": 0}])
    );
    // The sender has read its own messages.
    let u = a.ok("rooms.unread", json!({"rooms": ["doc"]})).await;
    assert_eq!(u["rooms"][0]["unread"], 0);

    let m = b
        .ok(
            "rooms.mark",
            json!({"room": "doc", "delivered": 5, "read": 3}),
        )
        .await;
    assert_eq!(
        (m["delivered"].clone(), m["read"].clone()),
        (json!(5), json!(3))
    );
    let r = a.event("receipt").await;
    assert_eq!(
        (r["user"].clone(), r["delivered"].clone(), r["read"].clone()),
        (json!("b"), json!(5), json!(3))
    );
    assert_eq!(
        b.ok("rooms.unread", json!({})).await["rooms"][0]["unread"],
        2
    );

    // Markers never move back, nor past the head.
    let m = b.ok("rooms.mark", json!({"room": "doc", "read": 1})).await;
    assert_eq!(m["read"], 3);
    let m = b.ok("rooms.mark", json!({"room": "doc", "read": 99})).await;
    assert_eq!(
        (m["read"].clone(), m["delivered"].clone()),
        (json!(5), json!(5))
    );
    let markers = a.ok("rooms.markers", json!({"room": "doc"})).await;
    let list = markers["markers"].as_array().unwrap();
    assert!(
        list.contains(&json!({"user": "b", "delivered": 5, "read": 5})),
        "{markers}"
    );
    assert!(
        list.contains(&json!({"user": "a", "delivered": 5, "read": 5})),
        "{markers}"
    );
    assert_eq!(
        b.err("rooms.mark", json!({"room": "doc"})).await,
        "bad_request"
    );
}

#[tokio::test]
async fn reactions_are_added_removed_listed_and_fanned_out() {
    let (_s, _w, _gw, mut a, mut b) = pair(|_| {}).await;
    a.ok("rooms.publish", json!({"room": "doc", "data": "hello"}))
        .await;
    let r = b
        .ok(
            "rooms.react",
            json!({"room": "doc", "seq": 1, "emoji": "👍"}),
        )
        .await;
    assert_eq!(r["changed"], true);
    let ev = a.event("reaction").await;
    assert_eq!(
        (
            ev["seq"].clone(),
            ev["emoji"].clone(),
            ev["user"].clone(),
            ev["added"].clone()
        ),
        (json!(1), json!("👍"), json!("b"), json!(true))
    );
    // Reacting twice is idempotent.
    assert_eq!(
        b.ok(
            "rooms.react",
            json!({"room": "doc", "seq": 1, "emoji": "👍"})
        )
        .await["changed"],
        false
    );
    a.ok(
        "rooms.react",
        json!({"room": "doc", "seq": 1, "emoji": "👍"}),
    )
    .await;
    a.ok(
        "rooms.react",
        json!({"room": "doc", "seq": 1, "emoji": "heart"}),
    )
    .await;
    let list = b
        .ok("rooms.reactions", json!({"room": "doc", "seq": 1}))
        .await;
    assert_eq!(
        list["reactions"],
        json!([{"emoji": "heart", "count": 1, "users": ["a"]}, {"emoji": "👍", "count": 2, "users": ["a", "b"]}])
    );
    b.ok(
        "rooms.react",
        json!({"room": "doc", "seq": 1, "emoji": "👍", "remove": true}),
    )
    .await;
    let ev = a.event("reaction").await;
    assert_eq!(
        (ev["user"].clone(), ev["added"].clone()),
        (json!("b"), json!(false))
    );
    let list = b
        .ok("rooms.reactions", json!({"room": "doc", "seq": 1}))
        .await;
    assert_eq!(
        list["reactions"][1],
        json!({"emoji": "👍", "count": 1, "users": ["a"]})
    );

    assert_eq!(
        b.err(
            "rooms.react",
            json!({"room": "doc", "seq": 9, "emoji": "x"})
        )
        .await,
        "not_found"
    );
    assert_eq!(
        b.err(
            "rooms.react",
            json!({"room": "doc", "seq": 1, "emoji": "a b"})
        )
        .await,
        "bad_request"
    );
    assert_eq!(
        b.err(
            "rooms.react",
            json!({"room": "doc", "seq": 1, "emoji": "a|b"})
        )
        .await,
        "bad_request"
    );
}
