//! Room fan-out addressed to the gateways holding members: a gateway gets a
//! room's pushes exactly while it has members there (the room's `gateways`
//! hash), and a feed made while the room is busy, or a member resuming from
//! an old cursor on a live feed, still gets every message once and in order.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::StreamExt;
use serde_json::json;
use switchboard_shared::keys::RoomKeys;
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, Gateway, GatewayProcess, Stack, Workers};
use tokio::sync::oneshot;

/// Sends one command to Redis over RESP and returns the answer's bulk
/// strings (the fields of an HKEYS, say).
fn redis_strings(port: u16, args: &[&str]) -> Vec<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with('*'), "{text}");
    text.split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with('*') && !l.starts_with('$'))
        .map(str::to_owned)
        .collect()
}

/// The gateways the room `room` of app `demo` addresses its pushes to.
fn room_gateways(stack: &Stack, room: &str) -> Vec<String> {
    let k = RoomKeys::new(&"demo".parse().unwrap(), &room.parse().unwrap());
    let mut gws = redis_strings(stack.redis.port(), &["HKEYS", &k.gateways]);
    gws.sort();
    gws
}

/// The gateway id of `c`'s connection (from its `welcome`).
fn gateway_of(c: &Client) -> String {
    let conn = c.welcome["conn"].as_str().unwrap();
    conn.rsplit_once(':').unwrap().0.to_owned()
}

async fn connect(url: &str, cfg: &switchboard_shared::config::Config, user: &str) -> Client {
    Client::connect(url, &token(cfg, "demo", user))
        .await
        .unwrap()
}

/// Receives messages of `room` until seq `last`; returns their seqs in
/// arrival order. A gap fails the test.
async fn seqs_until(c: &mut Client, room: &str, last: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let (event, data) = c.next_event().await;
        match event.as_str() {
            "message" if data["room"] == room => {
                let seq = data["seq"].as_u64().unwrap();
                seqs.push(seq);
                if seq >= last {
                    return seqs;
                }
            }
            "gap" => panic!("gap reported: {data}"),
            _ => {}
        }
    }
}

/// Publishes `n` messages to `room`, telling `started` after the tenth.
async fn publish_n(mut c: Client, room: &'static str, n: usize, started: oneshot::Sender<()>) {
    let mut started = Some(started);
    for i in 0..n {
        c.ok("rooms.publish", json!({"room": room, "data": i}))
            .await;
        if i == 10
            && let Some(tx) = started.take()
        {
            let _ = tx.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_a_busy_room_on_a_gateway_without_its_feed_gets_each_message_once_in_order()
 {
    let stack = Stack::start();
    let cfg = stack.config();
    let _w1 = Workers::start(cfg.clone(), &["rooms"]).await;
    let _w2 = Workers::start(cfg.clone(), &["rooms"]).await;
    let (gw_a, gw_b, gw_c) = (
        Gateway::start(cfg.clone()).await,
        Gateway::start(cfg.clone()).await,
        Gateway::start(cfg.clone()).await,
    );
    let mut pub_a = connect(&gw_a.ws_url(), &cfg, "pa").await;
    pub_a.ok("rooms.create", json!({"room": "busy"})).await;
    pub_a.ok("rooms.join", json!({"room": "busy"})).await;
    let mut pub_b = connect(&gw_b.ws_url(), &cfg, "pb").await;
    pub_b.ok("rooms.join", json!({"room": "busy"})).await;

    // Publishers on two gateways, through two worker replicas.
    let (tx_a, started_a) = oneshot::channel();
    let (tx_b, started_b) = oneshot::channel();
    let a = tokio::spawn(publish_n(pub_a, "busy", 150, tx_a));
    let b = tokio::spawn(publish_n(pub_b, "busy", 150, tx_b));
    started_a.await.unwrap();
    started_b.await.unwrap();

    // Gateway C has no feed for the room: the join makes one mid-stream.
    let mut late = connect(&gw_c.ws_url(), &cfg, "late").await;
    let joined = late.ok("rooms.join", json!({"room": "busy"})).await;
    let from = joined["seq"].as_u64().unwrap();
    a.await.unwrap();
    b.await.unwrap();
    let last = late.ok("rooms.info", json!({"room": "busy"})).await["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(last, 300);
    assert!(from < last, "joined after the publishers were done");

    let seqs = seqs_until(&mut late, "busy", last).await;
    assert_eq!(seqs, (from + 1..=last).collect::<Vec<_>>());
    // Nothing twice: a reply flushes the queue, and no message came after.
    late.ok("rooms.info", json!({"room": "busy"})).await;
    assert!(late.take_event("message").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_resuming_on_a_live_feed_gets_the_missed_then_the_live_messages_in_order() {
    let stack = Stack::start();
    let cfg = stack.config();
    let _w1 = Workers::start(cfg.clone(), &["rooms"]).await;
    let _w2 = Workers::start(cfg.clone(), &["rooms"]).await;
    let (gw, other) = (
        Gateway::start(cfg.clone()).await,
        Gateway::start(cfg.clone()).await,
    );
    // The feed on `gw` is live: `first` follows the room there.
    let mut first = connect(&gw.ws_url(), &cfg, "first").await;
    first.ok("rooms.create", json!({"room": "live"})).await;
    first.ok("rooms.join", json!({"room": "live"})).await;
    let mut publisher = connect(&other.ws_url(), &cfg, "pub").await;
    publisher.ok("rooms.join", json!({"room": "live"})).await;
    for i in 0..20 {
        publisher
            .ok("rooms.publish", json!({"room": "live", "data": i}))
            .await;
    }
    assert_eq!(seqs_until(&mut first, "live", 20).await.len(), 20);

    // Publishing goes on while a second member resumes from seq 3.
    let (tx, started) = oneshot::channel();
    let p = tokio::spawn(publish_n(publisher, "live", 200, tx));
    started.await.unwrap();
    let mut resumer = connect(&gw.ws_url(), &cfg, "resumer").await;
    resumer
        .ok("rooms.join", json!({"room": "live", "after": 3}))
        .await;
    p.await.unwrap();
    let seqs = seqs_until(&mut resumer, "live", 220).await;
    assert_eq!(seqs, (4..=220).collect::<Vec<_>>());
    // The member already there is not disturbed.
    assert_eq!(
        seqs_until(&mut first, "live", 220).await,
        (21..=220).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_last_local_member_leaving_stops_the_rooms_pushes_to_its_gateway() {
    let stack = Stack::start();
    let cfg = stack.config();
    let _w = Workers::start(cfg.clone(), &["rooms"]).await;
    let (gw1, gw2) = (
        Gateway::start(cfg.clone()).await,
        Gateway::start(cfg.clone()).await,
    );
    let mut x = connect(&gw1.ws_url(), &cfg, "x").await;
    let mut x2 = connect(&gw1.ws_url(), &cfg, "x2").await;
    let mut y = connect(&gw2.ws_url(), &cfg, "y").await;
    let (g1, g2) = (gateway_of(&x), gateway_of(&y));
    x.ok("rooms.create", json!({"room": "r"})).await;
    x.ok("rooms.join", json!({"room": "r"})).await;
    // Joining again counts once.
    x.ok("rooms.join", json!({"room": "r"})).await;
    x2.ok("rooms.join", json!({"room": "r"})).await;
    y.ok("rooms.join", json!({"room": "r"})).await;
    let mut both = vec![g1.clone(), g2.clone()];
    both.sort();
    assert_eq!(room_gateways(&stack, "r"), both);

    // One of two local members leaves: gw1 still gets the room.
    x.ok("rooms.leave", json!({"room": "r"})).await;
    assert_eq!(room_gateways(&stack, "r"), both);
    y.ok("rooms.publish", json!({"room": "r", "data": "still here"}))
        .await;
    assert_eq!(x2.event("message").await["data"], "still here");

    // The last one leaves: gw1 is no longer addressed.
    x2.ok("rooms.leave", json!({"room": "r"})).await;
    assert_eq!(room_gateways(&stack, "r"), [g2.as_str()]);
    let spy = stack.nats_client().await;
    let mut pushes = spy.subscribe("sb.gw.*.r.demo.r").await.unwrap();
    switchboard_shared::bus::sync(&spy).await.unwrap();
    for i in 0..5 {
        y.ok(
            "rooms.publish",
            json!({"room": "r", "data": i, "echo": true}),
        )
        .await;
    }
    // One worker sends every push in order: once gw2 has the fifth, gw1
    // would have had the others.
    let mut to_gw2 = 0;
    while to_gw2 < 5 {
        let m = pushes.next().await.unwrap();
        assert_eq!(m.subject.as_str(), format!("sb.gw.{g2}.r.demo.r"));
        to_gw2 += 1;
    }
    assert_eq!(y.event("message").await["data"], 0);
}

#[tokio::test]
async fn a_killed_gateway_leaves_no_entry_in_its_rooms_gateways() {
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg.gateway.heartbeat_interval_ms = 300;
    cfg.presence.gateway_dead_after_ms = 1_500;
    cfg.presence.reap_interval_ms = 200;
    let _w = Workers::start(cfg.clone(), &["rooms", "presence"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let mut doomed = GatewayProcess::start(env!("CARGO_BIN_EXE_switchboard-gateway"), &cfg).await;

    let mut bob = connect(&gw.ws_url(), &cfg, "bob").await;
    let mut alice = connect(&doomed.ws_url(), &cfg, "alice").await;
    let mut alice2 = connect(&doomed.ws_url(), &cfg, "alice2").await;
    for room in ["a", "b"] {
        alice.ok("rooms.create", json!({"room": room})).await;
        alice.ok("rooms.join", json!({"room": room})).await;
    }
    alice2.ok("rooms.join", json!({"room": "b"})).await;
    let dead = gateway_of(&alice);
    assert_eq!(room_gateways(&stack, "a"), [dead.as_str()]);
    assert_eq!(room_gateways(&stack, "b"), [dead.as_str()]);
    for room in ["a", "b"] {
        bob.ok("rooms.join", json!({"room": room})).await;
    }
    let mut both = vec![dead.clone(), gateway_of(&bob)];
    both.sort();
    assert_eq!(room_gateways(&stack, "a"), both);

    doomed.kill();
    // The reaper's cleanup of the dead gateway's connections announces each
    // departure: alice from a and b, alice2 from b.
    let mut left = Vec::new();
    while left.len() < 3 {
        let e = bob.event("member_left").await;
        left.push(format!(
            "{}/{}",
            e["room"].as_str().unwrap(),
            e["user"].as_str().unwrap()
        ));
    }
    left.sort();
    assert_eq!(left, ["a/alice", "b/alice", "b/alice2"]);
    for room in ["a", "b"] {
        assert_eq!(
            room_gateways(&stack, room),
            [gateway_of(&bob)],
            "room {room}"
        );
    }
    drop((alice, alice2));
}
