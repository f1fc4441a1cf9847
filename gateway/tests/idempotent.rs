//! Idempotent publish end to end: a `rooms.publish` retried with the same
//! `msg_id` is stored and delivered once, whether the first attempt was
//! answered, answered `timeout`, or is still racing the retry; ids are
//! scoped per room and user, and forgotten after the dedupe window.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_shared::config::Config;
use switchboard_shared::keys::RoomKeys;
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, Gateway, Stack, Workers};

async fn client(gw: &Gateway, cfg: &Config, user: &str) -> Client {
    Client::connect(&gw.ws_url(), &token(cfg, "demo", user))
        .await
        .unwrap()
}

/// A stack with rooms workers and one gateway; `tune` adjusts the config.
async fn start(tune: impl FnOnce(&mut Config)) -> (Stack, Config, Workers, Gateway) {
    let stack = Stack::start();
    let mut cfg = stack.config();
    tune(&mut cfg);
    let w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    (stack, cfg, w, gw)
}

/// Alice and Bob, both members of room `r`.
async fn alice_and_bob(gw: &Gateway, cfg: &Config) -> (Client, Client) {
    let mut alice = client(gw, cfg, "alice").await;
    let mut bob = client(gw, cfg, "bob").await;
    alice.ok("rooms.create", json!({"room": "r"})).await;
    alice.ok("rooms.join", json!({"room": "r"})).await;
    bob.ok("rooms.join", json!({"room": "r"})).await;
    (alice, bob)
}

/// The next `message` push's `(seq, data)`.
async fn next_message(c: &mut Client) -> (u64, Value) {
    let m = c.event("message").await;
    (m["seq"].as_u64().unwrap(), m["data"].clone())
}

/// Sends one command to Redis over RESP and returns the raw answer.
fn redis(port: u16, args: &[&str]) -> String {
    switchboard_test_harness::servers::redis_command(port, args).unwrap()
}

#[tokio::test]
async fn a_retried_publish_is_delivered_once_and_both_replies_carry_its_seq() {
    let (_stack, cfg, _w, gw) = start(|_| {}).await;
    let (mut alice, mut bob) = alice_and_bob(&gw, &cfg).await;

    let first = alice
        .ok(
            "rooms.publish",
            json!({"room": "r", "data": "hello", "msg_id": "m-1"}),
        )
        .await;
    assert_eq!(first["seq"], 1, "{first}");
    assert!(first.get("duplicate").is_none(), "{first}");
    // The retry (even with other data and echo asked) is the same message.
    let retry = alice
        .ok(
            "rooms.publish",
            json!({"room": "r", "data": "hello again", "msg_id": "m-1", "echo": true}),
        )
        .await;
    assert_eq!(
        retry,
        json!({"room": "r", "seq": 1, "ts": first["ts"], "duplicate": true})
    );

    // Bob got it once: the next message after it is the next publish.
    assert_eq!(next_message(&mut bob).await, (1, json!("hello")));
    alice
        .ok(
            "rooms.publish",
            json!({"room": "r", "data": "next", "echo": true}),
        )
        .await;
    assert_eq!(next_message(&mut bob).await, (2, json!("next")));
    // The retry's echo was not delivered either: Alice's first message is
    // her own echoed one.
    assert_eq!(next_message(&mut alice).await, (2, json!("next")));
    let history = bob.ok("rooms.history", json!({"room": "r"})).await;
    let datas: Vec<Value> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(datas, vec![json!("hello"), json!("next")]);
}

#[tokio::test]
async fn ids_are_scoped_per_user_and_room_and_must_be_well_formed() {
    let (_stack, cfg, _w, gw) = start(|_| {}).await;
    let (mut alice, mut bob) = alice_and_bob(&gw, &cfg).await;
    let a = alice
        .ok(
            "rooms.publish",
            json!({"room": "r", "data": "alice", "msg_id": "same"}),
        )
        .await;
    // Another user picking the same id sends a message of their own.
    let b = bob
        .ok(
            "rooms.publish",
            json!({"room": "r", "data": "bob", "msg_id": "same"}),
        )
        .await;
    assert_eq!((a["seq"].clone(), b["seq"].clone()), (json!(1), json!(2)));
    assert!(b.get("duplicate").is_none(), "{b}");
    assert_eq!(next_message(&mut alice).await, (2, json!("bob")));
    assert_eq!(next_message(&mut bob).await, (1, json!("alice")));

    // So does the same user with the same id in another room.
    alice.ok("rooms.create", json!({"room": "r2"})).await;
    alice.ok("rooms.join", json!({"room": "r2"})).await;
    let other = alice
        .ok(
            "rooms.publish",
            json!({"room": "r2", "data": "elsewhere", "msg_id": "same", "echo": true}),
        )
        .await;
    assert_eq!(other["seq"], 1, "{other}");
    assert!(other.get("duplicate").is_none(), "{other}");
    assert_eq!(next_message(&mut alice).await, (1, json!("elsewhere")));

    // Malformed ids are refused, and nothing is stored.
    for bad in [
        json!(""),
        json!("x".repeat(65)),
        json!("a b"),
        json!("a|b"),
        json!("naïve"),
        json!(7),
    ] {
        let r = alice
            .request(
                "rooms.publish",
                json!({"room": "r", "data": 0, "msg_id": bad}),
            )
            .await;
        assert_eq!(r["error"]["code"], "bad_request", "{bad}: {r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains("msg_id"),
            "{bad}: {r}"
        );
    }
    let longest = "A-z_0.9:".repeat(8);
    let ok = alice
        .ok(
            "rooms.publish",
            json!({"room": "r", "data": "last", "msg_id": longest}),
        )
        .await;
    assert_eq!(ok["seq"], 3, "{ok}");
    assert_eq!(next_message(&mut bob).await, (3, json!("last")));
}

#[tokio::test]
async fn an_id_is_usable_again_after_the_window() {
    let (stack, cfg, _w, gw) = start(|c| c.rooms.dedupe_window_secs = 1).await;
    let (mut alice, mut bob) = alice_and_bob(&gw, &cfg).await;
    let msg = json!({"room": "r", "data": "again", "msg_id": "m"});
    let sent = Instant::now();
    let first = alice.ok("rooms.publish", msg.clone()).await;
    assert_eq!(first["seq"], 1);
    assert_eq!(
        alice.ok("rooms.publish", msg.clone()).await["duplicate"],
        true
    );
    let other = bob
        .ok(
            "rooms.publish",
            json!({"room": "r", "data": "other", "msg_id": "o"}),
        )
        .await;
    assert_eq!(other["seq"], 2);
    // The window is a span of time with no event to wait for: retry until
    // the id is forgotten, within a bounded deadline.
    let deadline = sent + Duration::from_secs(5);
    let second = loop {
        let r = alice.ok("rooms.publish", msg.clone()).await;
        if r.get("duplicate").is_none() {
            break r;
        }
        assert_eq!(r["seq"], 1, "{r}");
        assert!(Instant::now() < deadline, "the id was never forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        sent.elapsed() >= Duration::from_millis(990),
        "forgotten after {:?}, before the 1 s window",
        sent.elapsed()
    );
    assert_eq!(second["seq"], 3, "{second}");
    assert_eq!(next_message(&mut bob).await, (1, json!("again")));
    assert_eq!(next_message(&mut bob).await, (3, json!("again")));
    // The room remembers only the ids of the window: Bob's, as old as the
    // first "m", went with it.
    let k = RoomKeys::new(&"demo".parse().unwrap(), &"r".parse().unwrap());
    let port = stack.redis.port();
    assert_eq!(
        redis(port, &["HKEYS", &k.msg_ids]),
        "*1\r\n$7\r\nm|alice\r\n"
    );
    assert_eq!(redis(port, &["ZCARD", &k.msg_id_times]), ":1\r\n");
}

#[tokio::test]
async fn a_publish_answered_timeout_and_retried_is_stored_once() {
    let (stack, cfg, _w, gw) = start(|c| c.gateway.request_timeout_ms = 300).await;
    let (mut alice, mut bob) = alice_and_bob(&gw, &cfg).await;
    let port = stack.redis.port();
    // Redis holds every write (scripts included) until unpaused: the worker
    // is stuck inside the publish, as behind a slow or failing store.
    assert!(redis(port, &["CLIENT", "PAUSE", "20000", "WRITE"]).starts_with("+OK"));
    let msg = json!({"room": "r", "data": "once", "msg_id": "slow-1"});
    let timed_out = alice.err("rooms.publish", msg.clone()).await;
    assert!(redis(port, &["CLIENT", "UNPAUSE"]).starts_with("+OK"));
    assert_eq!(timed_out, "timeout");

    // The publish went through after all; the client cannot know, and
    // retries with the same id.
    assert_eq!(next_message(&mut bob).await, (1, json!("once")));
    let retry = alice.ok("rooms.publish", msg).await;
    assert_eq!(
        (retry["seq"].clone(), retry["duplicate"].clone()),
        (json!(1), json!(true))
    );
    alice
        .ok("rooms.publish", json!({"room": "r", "data": "after"}))
        .await;
    assert_eq!(next_message(&mut bob).await, (2, json!("after")));
}

#[tokio::test]
async fn concurrent_publishes_of_one_id_from_two_connections_store_one_message() {
    let (_stack, cfg, _w, gw) = start(|_| {}).await;
    let (mut alice, mut bob) = alice_and_bob(&gw, &cfg).await;
    let mut phone = client(&gw, &cfg, "alice").await;
    phone.ok("rooms.join", json!({"room": "r"})).await;
    for round in 0..20 {
        let id = format!("race-{round}");
        let req = |n: u32| {
            json!({"id": n, "op": "rooms.publish",
                "data": {"room": "r", "data": round, "msg_id": id}})
        };
        // Both are on the wire before either reply is read.
        alice.send_json(&req(1_000 + round)).await;
        phone.send_json(&req(2_000 + round)).await;
        let a = alice.reply(&json!(1_000 + round)).await;
        let p = phone.reply(&json!(2_000 + round)).await;
        assert_eq!(a["ok"], true, "{a}");
        assert_eq!(p["ok"], true, "{p}");
        let seq = u64::from(round) + 1;
        assert_eq!(
            (a["data"]["seq"].as_u64(), p["data"]["seq"].as_u64()),
            (Some(seq), Some(seq))
        );
        let dups = [&a, &p]
            .iter()
            .filter(|r| r["data"]["duplicate"] == true)
            .count();
        assert_eq!(dups, 1, "{a} {p}");
        assert_eq!(next_message(&mut bob).await, (seq, json!(round)));
    }
    // Nothing was stored twice: the next message is the next seq.
    bob.ok(
        "rooms.publish",
        json!({"room": "r", "data": "end", "echo": true}),
    )
    .await;
    assert_eq!(next_message(&mut bob).await, (21, json!("end")));
}
