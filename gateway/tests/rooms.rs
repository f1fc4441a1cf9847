//! Rooms end to end: real NATS, real Redis, gateways and workers, clients
//! over real WebSockets.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use switchboard_test_harness::stack::{token, token_with_rooms};
use switchboard_test_harness::{Client, Gateway, Stack, Workers};

async fn client(
    gw: &Gateway,
    cfg: &switchboard_shared::config::Config,
    app: &str,
    user: &str,
) -> Client {
    Client::connect(&gw.ws_url(), &token(cfg, app, user))
        .await
        .unwrap()
}

fn seq(msg: &Value) -> u64 {
    msg["seq"].as_u64().unwrap()
}

#[tokio::test]
async fn two_members_see_each_others_messages_in_sequence() {
    let stack = Stack::start();
    let cfg = stack.config();
    let _w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let mut alice = client(&gw, &cfg, "demo", "alice").await;
    let mut bob = client(&gw, &cfg, "demo", "bob").await;
    assert_eq!(alice.protocol.as_deref(), Some("switchboard.v1"));
    assert_eq!(alice.welcome["user"], "alice");

    let created = alice
        .ok(
            "rooms.create",
            json!({"room": "couple-1", "max_members": 2}),
        )
        .await;
    assert_eq!(created["room"], "couple-1");
    let joined = alice.ok("rooms.join", json!({"room": "couple-1"})).await;
    assert_eq!(joined["members"], 1);
    let joined = bob.ok("rooms.join", json!({"room": "couple-1"})).await;
    assert_eq!(joined["members"], 2);
    let ev = alice.event("member_joined").await;
    assert_eq!(
        (ev["user"].clone(), ev["members"].clone()),
        (json!("bob"), json!(2))
    );

    let r1 = alice
        .ok(
            "rooms.publish",
            json!({"room": "couple-1", "data": {"swipe": "right"}}),
        )
        .await;
    let r2 = bob
        .ok(
            "rooms.publish",
            json!({"room": "couple-1", "data": {"swipe": "left"}}),
        )
        .await;
    let r3 = alice
        .ok(
            "rooms.publish",
            json!({"room": "couple-1", "data": "third"}),
        )
        .await;
    assert_eq!((seq(&r1), seq(&r2), seq(&r3)), (1, 2, 3));

    // Each sees the other's messages (not their own, unless echo is asked).
    let m = bob.event("message").await;
    assert_eq!(
        (m["seq"].clone(), m["from"].clone(), m["data"].clone()),
        (json!(1), json!("alice"), json!({"swipe": "right"}))
    );
    let m = alice.event("message").await;
    assert_eq!(
        (m["seq"].clone(), m["from"].clone()),
        (json!(2), json!("bob"))
    );
    let m = bob.event("message").await;
    assert_eq!(
        (m["seq"].clone(), m["data"].clone(), m["room"].clone()),
        (json!(3), json!("third"), json!("couple-1"))
    );

    // A third member is refused: the couple room holds two.
    let mut carol = client(&gw, &cfg, "demo", "carol").await;
    assert_eq!(
        carol.err("rooms.join", json!({"room": "couple-1"})).await,
        "room_full"
    );

    // Echo delivers the sender's own message in the same stream.
    alice
        .ok(
            "rooms.publish",
            json!({"room": "couple-1", "data": 4, "echo": true}),
        )
        .await;
    assert_eq!(seq(&alice.event("message").await), 4);
    assert_eq!(seq(&bob.event("message").await), 4);

    let info = bob.ok("rooms.info", json!({"room": "couple-1"})).await;
    assert_eq!(
        (
            info["members"].clone(),
            info["seq"].clone(),
            info["max_members"].clone()
        ),
        (json!(2), json!(4), json!(2))
    );
    let members = bob.ok("rooms.members", json!({"room": "couple-1"})).await;
    let mut users: Vec<String> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap().to_owned())
        .collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);

    // Leaving tells the other member and stops delivery.
    let left = bob.ok("rooms.leave", json!({"room": "couple-1"})).await;
    assert_eq!(left["members"], 1);
    let ev = alice.event("member_left").await;
    assert_eq!(
        (ev["user"].clone(), ev["members"].clone()),
        (json!("bob"), json!(1))
    );
    assert_eq!(
        bob.err("rooms.publish", json!({"room": "couple-1", "data": 1}))
            .await,
        "not_member"
    );
}

#[tokio::test]
async fn members_on_different_gateways_share_one_order() {
    let stack = Stack::start();
    let cfg = stack.config();
    let _w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw1 = Gateway::start(cfg.clone()).await;
    let gw2 = Gateway::start(cfg.clone()).await;
    let mut a = client(&gw1, &cfg, "demo", "a").await;
    let mut b = client(&gw2, &cfg, "demo", "b").await;
    a.ok("rooms.create", json!({"room": "lobby"})).await;
    a.ok("rooms.join", json!({"room": "lobby"})).await;
    b.ok("rooms.join", json!({"room": "lobby"})).await;
    for i in 0..20 {
        let sender = if i % 2 == 0 { &mut a } else { &mut b };
        sender
            .ok(
                "rooms.publish",
                json!({"room": "lobby", "data": i, "echo": true}),
            )
            .await;
    }
    for c in [&mut a, &mut b] {
        for expected in 1..=20u64 {
            let m = c.event("message").await;
            assert_eq!(seq(&m), expected);
            assert_eq!(m["data"], json!(expected - 1));
        }
    }
}

#[tokio::test]
async fn order_holds_with_two_worker_replicas_and_concurrent_publishers() {
    let stack = Stack::start();
    let cfg = stack.config();
    let _w1 = Workers::start(cfg.clone(), &["rooms"]).await;
    let _w2 = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw1 = Gateway::start(cfg.clone()).await;
    let gw2 = Gateway::start(cfg.clone()).await;
    let mut watcher1 = client(&gw1, &cfg, "demo", "w1").await;
    let mut watcher2 = client(&gw2, &cfg, "demo", "w2").await;
    watcher1.ok("rooms.create", json!({"room": "busy"})).await;
    watcher1.ok("rooms.join", json!({"room": "busy"})).await;
    watcher2.ok("rooms.join", json!({"room": "busy"})).await;

    const PER_PUBLISHER: u64 = 150;
    let mut publishers = Vec::new();
    for (i, gw) in [&gw1, &gw2, &gw1].into_iter().enumerate() {
        let mut p = client(gw, &cfg, "demo", &format!("p{i}")).await;
        p.ok("rooms.join", json!({"room": "busy"})).await;
        publishers.push(tokio::spawn(async move {
            // Pipeline requests in windows below the in-flight limit.
            let mut seqs = Vec::new();
            for window in (0..PER_PUBLISHER).collect::<Vec<_>>().chunks(32) {
                for n in window {
                    p.send_json(&json!({"id": n, "op": "rooms.publish", "data": {"room": "busy", "data": [i, n]}})).await;
                }
                for n in window {
                    let r = p.reply(&json!(n)).await;
                    assert_eq!(r["ok"], json!(true), "{r}");
                    seqs.push(seq(&r["data"]));
                }
            }
            seqs
        }));
    }
    let mut all_seqs = Vec::new();
    for p in publishers {
        all_seqs.extend(p.await.unwrap());
    }
    all_seqs.sort_unstable();
    let total = 3 * PER_PUBLISHER;
    assert_eq!(
        all_seqs,
        (1..=total).collect::<Vec<_>>(),
        "every publish got a distinct seq"
    );

    let mut seen = Vec::new();
    for w in [&mut watcher1, &mut watcher2] {
        let mut got = Vec::new();
        while (got.len() as u64) < total {
            let (event, data) = w.next_event().await;
            match event.as_str() {
                "message" => got.push((seq(&data), data["data"].clone())),
                "member_joined" | "member_left" => {}
                other => panic!("unexpected {other}: {data}"),
            }
        }
        let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (1..=total).collect::<Vec<_>>(),
            "consecutive, in order, no duplicates"
        );
        seen.push(got);
    }
    assert_eq!(
        seen[0], seen[1],
        "both members saw the same messages in the same order"
    );
}

#[tokio::test]
async fn history_reads_by_sequence_and_is_bounded() {
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg.rooms.history_max = 5;
    let _w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let mut a = client(&gw, &cfg, "demo", "a").await;
    a.ok("rooms.create", json!({"room": "log"})).await;
    a.ok("rooms.join", json!({"room": "log"})).await;
    for i in 1..=8 {
        a.ok("rooms.publish", json!({"room": "log", "data": i}))
            .await;
    }
    let h = a
        .ok("rooms.history", json!({"room": "log", "after": 5}))
        .await;
    let seqs: Vec<u64> = h["messages"].as_array().unwrap().iter().map(seq).collect();
    assert_eq!(seqs, [6, 7, 8]);
    assert_eq!(
        (
            h["head_seq"].clone(),
            h["first_seq"].clone(),
            h["more"].clone()
        ),
        (json!(8), json!(4), json!(false))
    );

    let h = a
        .ok(
            "rooms.history",
            json!({"room": "log", "after": 4, "limit": 2}),
        )
        .await;
    let seqs: Vec<u64> = h["messages"].as_array().unwrap().iter().map(seq).collect();
    assert_eq!((seqs, h["more"].clone()), (vec![5, 6], json!(true)));

    // Latest page when no cursor is given, oldest first.
    let h = a
        .ok("rooms.history", json!({"room": "log", "limit": 3}))
        .await;
    let seqs: Vec<u64> = h["messages"].as_array().unwrap().iter().map(seq).collect();
    assert_eq!(seqs, [6, 7, 8]);
    let h = a
        .ok(
            "rooms.history",
            json!({"room": "log", "before": 6, "limit": 10}),
        )
        .await;
    let seqs: Vec<u64> = h["messages"].as_array().unwrap().iter().map(seq).collect();
    assert_eq!(seqs, [4, 5]);

    // Only five are kept: reading from the start says what was lost.
    let h = a
        .ok("rooms.history", json!({"room": "log", "after": 0}))
        .await;
    let seqs: Vec<u64> = h["messages"].as_array().unwrap().iter().map(seq).collect();
    assert_eq!(
        (seqs, h["not_recovered"].clone()),
        (vec![4, 5, 6, 7, 8], json!(true))
    );

    assert_eq!(
        a.err("rooms.history", json!({"room": "nope"})).await,
        "not_found"
    );
    assert_eq!(
        a.err(
            "rooms.history",
            json!({"room": "log", "after": 1, "before": 3})
        )
        .await,
        "bad_request"
    );
}

#[tokio::test]
async fn rejoining_with_a_cursor_replays_what_was_missed_then_goes_live() {
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg.rooms.history_max = 5;
    let _w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw1 = Gateway::start(cfg.clone()).await;
    let gw2 = Gateway::start(cfg.clone()).await;
    let mut a = client(&gw1, &cfg, "demo", "a").await;
    let mut b = client(&gw1, &cfg, "demo", "b").await;
    a.ok("rooms.create", json!({"room": "r"})).await;
    a.ok("rooms.join", json!({"room": "r"})).await;
    b.ok("rooms.join", json!({"room": "r"})).await;
    a.ok("rooms.publish", json!({"room": "r", "data": 1})).await;
    assert_eq!(seq(&b.event("message").await), 1);
    b.close().await;
    for i in 2..=4 {
        a.ok("rooms.publish", json!({"room": "r", "data": i})).await;
    }
    // b comes back on another gateway with its last seq: gets 2..4, then live.
    let mut b = client(&gw2, &cfg, "demo", "b").await;
    let j = b.ok("rooms.join", json!({"room": "r", "after": 1})).await;
    assert_eq!(j["seq"], 4);
    a.ok("rooms.publish", json!({"room": "r", "data": 5})).await;
    for expected in 2..=5 {
        assert_eq!(seq(&b.event("message").await), expected);
    }

    // Outside the history window: told so, then the rest.
    let mut c = client(&gw2, &cfg, "demo", "c").await;
    for i in 6..=9 {
        a.ok("rooms.publish", json!({"room": "r", "data": i})).await;
    }
    c.ok("rooms.join", json!({"room": "r", "after": 1})).await;
    let (event, gap) = c.next_event().await;
    assert_eq!(event, "gap");
    assert_eq!(
        (
            gap["from"].clone(),
            gap["to"].clone(),
            gap["recovered"].clone()
        ),
        (json!(2), json!(4), json!(false))
    );
    for expected in 5..=9 {
        assert_eq!(seq(&c.event("message").await), expected);
    }
}

#[tokio::test]
async fn a_disconnect_removes_the_connection_from_its_rooms() {
    let stack = Stack::start();
    let cfg = stack.config();
    let _w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let mut a = client(&gw, &cfg, "demo", "a").await;
    let mut b = client(&gw, &cfg, "demo", "b").await;
    a.ok("rooms.create", json!({"room": "one", "max_members": 2}))
        .await;
    a.ok("rooms.create", json!({"room": "two"})).await;
    for r in ["one", "two"] {
        a.ok("rooms.join", json!({"room": r})).await;
        b.ok("rooms.join", json!({"room": r})).await;
    }
    b.close().await;
    for _ in 0..2 {
        let ev = a.event("member_left").await;
        assert_eq!(
            (ev["user"].clone(), ev["members"].clone()),
            (json!("b"), json!(1))
        );
    }
    let m = a.ok("rooms.members", json!({"room": "one"})).await;
    assert_eq!(m["count"], 1);
    // The freed seat can be taken.
    let mut c = client(&gw, &cfg, "demo", "c").await;
    c.ok("rooms.join", json!({"room": "one"})).await;
}

#[tokio::test]
async fn a_user_with_two_devices_stays_a_member_until_both_leave() {
    let stack = Stack::start();
    let cfg = stack.config();
    let _w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let mut watcher = client(&gw, &cfg, "demo", "w").await;
    let mut phone = client(&gw, &cfg, "demo", "u").await;
    let mut laptop = client(&gw, &cfg, "demo", "u").await;
    watcher
        .ok("rooms.create", json!({"room": "r", "max_members": 2}))
        .await;
    watcher.ok("rooms.join", json!({"room": "r"})).await;
    phone.ok("rooms.join", json!({"room": "r"})).await;
    let j = laptop.ok("rooms.join", json!({"room": "r"})).await;
    assert_eq!(j["members"], 2, "a second device is not a second member");
    assert_eq!(watcher.event("member_joined").await["user"], "u");
    watcher
        .ok("rooms.publish", json!({"room": "r", "data": "hi"}))
        .await;
    assert_eq!(phone.event("message").await["data"], "hi");
    assert_eq!(laptop.event("message").await["data"], "hi");
    phone.close().await;
    laptop.ok("rooms.leave", json!({"room": "r"})).await;
    let ev = watcher.event("member_left").await;
    assert_eq!(
        (ev["user"].clone(), ev["members"].clone()),
        (json!("u"), json!(1))
    );
}

#[tokio::test]
async fn private_rooms_need_a_grant() {
    let stack = Stack::start();
    let cfg = stack.config();
    let _w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let mut plain = client(&gw, &cfg, "demo", "plain").await;
    assert_eq!(
        plain
            .err("rooms.create", json!({"room": "couple-9", "private": true}))
            .await,
        "forbidden"
    );
    let mut granted = Client::connect(
        &gw.ws_url(),
        &token_with_rooms(&cfg, "demo", "g", &["couple-*"]),
    )
    .await
    .unwrap();
    granted
        .ok("rooms.create", json!({"room": "couple-9", "private": true}))
        .await;
    granted.ok("rooms.join", json!({"room": "couple-9"})).await;
    assert_eq!(
        plain.err("rooms.join", json!({"room": "couple-9"})).await,
        "forbidden"
    );
    assert_eq!(
        plain
            .err("rooms.history", json!({"room": "couple-9"}))
            .await,
        "forbidden"
    );
    assert_eq!(
        plain
            .err("rooms.members", json!({"room": "couple-9"}))
            .await,
        "forbidden"
    );
    assert_eq!(
        plain.err("rooms.create", json!({"room": "couple-9"})).await,
        "already_exists"
    );
    // Generated ids for public rooms.
    let r = plain.ok("rooms.create", json!({})).await;
    assert!(r["room"].as_str().unwrap().len() > 10);
}

#[tokio::test]
async fn requests_fail_clearly_when_no_worker_serves_them() {
    let stack = Stack::start();
    let cfg = stack.config();
    let gw = Gateway::start(cfg.clone()).await;
    let mut a = client(&gw, &cfg, "demo", "a").await;
    assert_eq!(
        a.err("rooms.create", json!({"room": "x"})).await,
        "service_unavailable"
    );
    // And once a worker is there, the same connection works.
    let _w = Workers::start(cfg.clone(), &["rooms"]).await;
    a.ok("rooms.create", json!({"room": "x"})).await;
}

#[tokio::test]
async fn a_worker_restart_loses_nothing() {
    let stack = Stack::start();
    let cfg = stack.config();
    let w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let mut a = client(&gw, &cfg, "demo", "a").await;
    let mut b = client(&gw, &cfg, "demo", "b").await;
    a.ok("rooms.create", json!({"room": "durable", "max_members": 2}))
        .await;
    a.ok("rooms.join", json!({"room": "durable"})).await;
    b.ok("rooms.join", json!({"room": "durable"})).await;
    a.ok(
        "rooms.publish",
        json!({"room": "durable", "data": "before"}),
    )
    .await;
    assert_eq!(b.event("message").await["data"], "before");

    w.stop().await;
    assert_eq!(
        a.err("rooms.info", json!({"room": "durable"})).await,
        "service_unavailable"
    );
    let _w = Workers::start(cfg.clone(), &["rooms"]).await;

    let info = a.ok("rooms.info", json!({"room": "durable"})).await;
    assert_eq!(
        (info["members"].clone(), info["seq"].clone()),
        (json!(2), json!(1))
    );
    let r = a
        .ok("rooms.publish", json!({"room": "durable", "data": "after"}))
        .await;
    assert_eq!(r["seq"], 2);
    let m = b.event("message").await;
    assert_eq!(
        (m["seq"].clone(), m["data"].clone()),
        (json!(2), json!("after"))
    );
    let h = b
        .ok("rooms.history", json!({"room": "durable", "after": 0}))
        .await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 2);
}

/// Polls `check` until it holds, for state that changes with time by design
/// (Redis expiry); fails after ten seconds.
async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn old_messages_and_empty_rooms_expire() {
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg.rooms.history_ttl_secs = 1;
    cfg.rooms.idle_ttl_secs = 1;
    let _w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let a = std::sync::Arc::new(tokio::sync::Mutex::new(
        client(&gw, &cfg, "demo", "a").await,
    ));
    {
        let mut a = a.lock().await;
        a.ok("rooms.create", json!({"room": "brief"})).await;
        a.ok("rooms.join", json!({"room": "brief"})).await;
        a.ok("rooms.publish", json!({"room": "brief", "data": 1}))
            .await;
        let h = a.ok("rooms.history", json!({"room": "brief"})).await;
        assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    }
    // Messages older than the history TTL are no longer served...
    eventually(|| {
        let a = a.clone();
        async move {
            let h = a
                .lock()
                .await
                .ok("rooms.history", json!({"room": "brief", "after": 0}))
                .await;
            h["messages"].as_array().is_some_and(Vec::is_empty) && h["not_recovered"] == json!(true)
        }
    })
    .await;
    // ...while the room itself lives as long as it has a member.
    a.lock()
        .await
        .ok("rooms.info", json!({"room": "brief"}))
        .await;
    a.lock()
        .await
        .ok("rooms.leave", json!({"room": "brief"}))
        .await;
    eventually(|| {
        let a = a.clone();
        async move {
            let r = a
                .lock()
                .await
                .request("rooms.info", json!({"room": "brief"}))
                .await;
            r["error"]["code"] == "not_found"
        }
    })
    .await;
}
