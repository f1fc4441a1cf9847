//! The whole anonymous-call flow, as a voice app uses it: two strangers queue
//! with compatible properties, are matched into a room, one calls the other,
//! offer / answer / candidates flow, the call ends, and both see it in their
//! history.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use switchboard_shared::config::Config;
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, Gateway, Stack, Workers};

/// Connects and waits until presence knows the device (so it can ring).
async fn device(gw: &Gateway, cfg: &Config, user: &str) -> Client {
    let mut c = Client::connect(&gw.ws_url(), &token(cfg, "voice", user))
        .await
        .unwrap();
    while c.event("presence").await["self"] != true {}
    c
}

#[tokio::test]
async fn strangers_are_matched_then_call_each_other() {
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg.matchmaking.tick_ms = 100;
    let _w = Workers::start(
        cfg.clone(),
        &["rooms", "presence", "signaling", "matchmaking"],
    )
    .await;
    // Each stranger on their own gateway, as behind a load balancer.
    let gw1 = Gateway::start(cfg.clone()).await;
    let gw2 = Gateway::start(cfg.clone()).await;
    let mut anna = device(&gw1, &cfg, "anon-7f3a").await;
    let mut ben = device(&gw2, &cfg, "anon-91c2").await;

    let ticket = |lang: &str, mood: &str| {
        json!({"props": {"language": lang, "mood": mood, "age": 27},
               "query": {"required": {"language": lang}, "optional": [{"mood": mood}], "ranges": {"age": {"min": 18, "max": 40}}}})
    };
    anna.ok("matchmaking.join", ticket("en", "chatty")).await;
    ben.ok("matchmaking.join", ticket("en", "chatty")).await;
    let ma = anna.event("match_found").await;
    let mb = ben.event("match_found").await;
    assert_eq!(ma["room"], mb["room"]);
    assert_eq!(ma["peers"][0]["user"], "anon-91c2");
    let room = ma["room"].as_str().unwrap().to_owned();
    anna.ok("rooms.join", json!({"room": room})).await;
    ben.ok("rooms.join", json!({"room": room})).await;

    let call = anna
        .ok(
            "signaling.call",
            json!({"to": "anon-91c2", "data": {"room": room}}),
        )
        .await;
    let call = call["call"].as_str().unwrap().to_owned();
    let ring = ben.event("call_incoming").await;
    assert_eq!(
        (ring["from"].clone(), ring["data"]["room"].clone()),
        (json!("anon-7f3a"), json!(room))
    );
    ben.ok("signaling.accept", json!({"call": call})).await;
    anna.event("call_accepted").await;

    anna.ok(
        "signaling.signal",
        json!({"call": call, "kind": "offer", "data": {"type": "offer", "sdp": "v=0 a"}}),
    )
    .await;
    assert_eq!(ben.event("call_signal").await["data"]["sdp"], "v=0 a");
    ben.ok(
        "signaling.signal",
        json!({"call": call, "kind": "answer", "data": {"type": "answer", "sdp": "v=0 b"}}),
    )
    .await;
    assert_eq!(anna.event("call_signal").await["data"]["sdp"], "v=0 b");
    let candidate =
        json!({"call": call, "kind": "candidate", "data": {"candidate": "candidate:1 1 udp"}});
    anna.ok("signaling.signal", candidate.clone()).await;
    assert_eq!(ben.event("call_signal").await["kind"], "candidate");
    ben.ok("signaling.signal", candidate).await;
    assert_eq!(anna.event("call_signal").await["kind"], "candidate");

    anna.ok("signaling.end", json!({"call": call})).await;
    assert_eq!(ben.event("call_ended").await["reason"], "hangup");
    for (c, with, direction) in [
        (&mut anna, "anon-91c2", "outgoing"),
        (&mut ben, "anon-7f3a", "incoming"),
    ] {
        let h = c.ok("signaling.history", json!({})).await;
        let last = &h["calls"][0];
        assert_eq!(
            (
                last["with"].clone(),
                last["direction"].clone(),
                last["answered"].clone(),
                last["end_reason"].clone()
            ),
            (json!(with), json!(direction), json!(true), json!("hangup"))
        );
    }
}
