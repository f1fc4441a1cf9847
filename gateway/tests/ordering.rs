//! Promise 1 at the gateway: room messages reach members in seq order, once,
//! and a hole that cannot be filled from history is reported as a `gap`.
//! A raw NATS client plays a misbehaving bus: it publishes pushes out of
//! order, duplicates them, and invents seqs the history never saw.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use prost::Message as _;
use serde_json::json;
use switchboard_proto::bus::Push;
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, Gateway, Stack, Workers};

fn push(seq: u64, data: &str) -> Vec<u8> {
    let frame =
        json!({"event": "message", "data": {"room": "r", "seq": seq, "data": data}}).to_string();
    Push {
        frame: frame.into_bytes().into(),
        seq,
        origin: None,
        echo: false,
        close_code: 0,
    }
    .encode_to_vec()
}

/// The subject on which the rooms worker addresses the pushes of room `r` of
/// app `demo` to the gateway of `c`.
fn room_r_subject(c: &Client) -> String {
    let conn = c.welcome["conn"].as_str().unwrap();
    let gw = conn.rsplit_once(':').unwrap().0;
    format!("sb.gw.{gw}.r.demo.r")
}

/// A stack with a short reorder window, a raw bus client, and one member of
/// room `r` in app `demo`.
async fn member_of_room_r() -> (Stack, Workers, Gateway, async_nats::Client, Client) {
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg.gateway.reorder_window_ms = 50;
    let w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let bus = stack.nats_client().await;
    let mut c = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "m"))
        .await
        .unwrap();
    c.ok("rooms.create", json!({"room": "r"})).await;
    c.ok("rooms.join", json!({"room": "r"})).await;
    (stack, w, gw, bus, c)
}

#[tokio::test]
async fn out_of_order_duplicate_and_missing_seqs_are_put_right() {
    let (_stack, _w, _gw, bus, mut c) = member_of_room_r().await;
    for i in 1..=3 {
        c.ok(
            "rooms.publish",
            json!({"room": "r", "data": format!("real{i}"), "echo": true}),
        )
        .await;
    }
    let subject = room_r_subject(&c);
    // 5 before 4, and 4 never comes: 4 is not in history either.
    bus.publish(subject.clone(), push(5, "five").into())
        .await
        .unwrap();
    // 7 before 6, then 6 twice.
    bus.publish(subject.clone(), push(7, "seven").into())
        .await
        .unwrap();
    bus.publish(subject.clone(), push(6, "six").into())
        .await
        .unwrap();
    bus.publish(subject, push(6, "six again").into())
        .await
        .unwrap();
    bus.flush().await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 7 {
        let (event, data) = c.next_event().await;
        match event.as_str() {
            "message" => seen.push(format!(
                "{}:{}",
                data["seq"],
                data["data"].as_str().unwrap()
            )),
            "gap" => seen.push(format!(
                "gap {}-{} recovered={}",
                data["from"], data["to"], data["recovered"]
            )),
            _ => {}
        }
    }
    assert_eq!(
        seen,
        [
            "1:real1",
            "2:real2",
            "3:real3",
            "gap 4-4 recovered=false",
            "5:five",
            "6:six",
            "7:seven"
        ]
    );
    // Nothing more: the duplicate was dropped (a reply flushes the queue).
    let r = c.ok("rooms.info", json!({"room": "r"})).await;
    assert_eq!(r["seq"], 3);
    assert!(c.take_event("message").is_none());
}

/// Sends one command to Redis over RESP and returns the raw answer.
fn redis(port: u16, args: &[&str]) -> String {
    switchboard_test_harness::servers::redis_command(port, args).unwrap()
}

#[tokio::test]
async fn a_seq_lost_on_the_bus_is_filled_from_history() {
    let (stack, _w, _gw, bus, mut member) = member_of_room_r().await;
    member
        .ok(
            "rooms.publish",
            json!({"room": "r", "data": "one", "echo": true}),
        )
        .await;
    assert_eq!(member.event("message").await["seq"], 1);

    // Seq 2 is stored (as the publish script would) but its live push is
    // lost; seq 3 then arrives live.
    let keys =
        switchboard_shared::keys::RoomKeys::new(&"demo".parse().unwrap(), &"r".parse().unwrap());
    let stored = json!({"room": "r", "seq": 2, "data": "two, from history"}).to_string();
    assert!(redis(stack.redis.port(), &["HINCRBY", &keys.meta, "seq", "1"]).starts_with(":2"));
    let now = switchboard_shared::now_ms().to_string();
    assert!(
        redis(
            stack.redis.port(),
            &["XADD", &keys.history, "2-0", "t", &now, "m", &stored]
        )
        .contains("2-0")
    );
    bus.publish(room_r_subject(&member), push(3, "three").into())
        .await
        .unwrap();
    bus.flush().await.unwrap();

    let mut got = Vec::new();
    while got.len() < 2 {
        let (event, data) = member.next_event().await;
        assert_ne!(event, "gap", "{data}");
        if event == "message" {
            got.push(format!(
                "{}:{}",
                data["seq"],
                data["data"].as_str().unwrap()
            ));
        }
    }
    assert_eq!(got, ["2:two, from history", "3:three"]);
}

/// A message published without `echo` never comes back to its sender, even
/// when it is sent the instant the join is answered: before the room's feed
/// is subscribed, such a message reaches the gateway through the catch-up
/// from history rather than live, and must be filtered the same way.
#[tokio::test]
async fn a_publish_right_after_joining_is_not_echoed_to_its_sender() {
    let stack = Stack::start();
    let cfg = stack.config();
    let _w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    let mut c = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "quick"))
        .await
        .unwrap();
    for i in 0..40 {
        let room = format!("fresh-{i}");
        c.ok("rooms.create", json!({"room": room})).await;
        // Join, then publish twice without waiting: first without echo, then
        // with it. Seqs arrive in order, so once seq 2 is here, seq 1 would
        // have been delivered before it if it were echoed.
        c.send_json(&json!({"id": "j", "op": "rooms.join", "data": {"room": room}}))
            .await;
        c.reply(&json!("j")).await;
        c.send_json(
            &json!({"id": "p1", "op": "rooms.publish", "data": {"room": room, "data": "mine"}}),
        )
        .await;
        c.send_json(&json!({"id": "p2", "op": "rooms.publish", "data": {"room": room, "data": "echoed", "echo": true}}))
            .await;
        assert_eq!(c.reply(&json!("p1")).await["ok"], true);
        assert_eq!(c.reply(&json!("p2")).await["ok"], true);
        let m = loop {
            let m = c.event("message").await;
            if m["room"] == room.as_str() {
                break m;
            }
        };
        assert_eq!(
            (m["seq"].clone(), m["data"].clone()),
            (json!(2), json!("echoed")),
            "round {i}: {m}"
        );
    }
}
