//! Calls end to end: ringing every device, first accept wins, SDP and ICE
//! relayed only between the parties, busy, ring timeout, reject and cancel,
//! a dropped connection with a grace period, history with ratings, and mesh
//! signaling in a room.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use switchboard_shared::config::Config;
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, Gateway, Stack, Workers};

const SERVICES: &[&str] = &["rooms", "presence", "signaling"];

async fn setup(f: impl FnOnce(&mut Config)) -> (Stack, Config, Workers, Gateway) {
    let stack = Stack::start();
    let mut cfg = stack.config();
    f(&mut cfg);
    let w = Workers::start(cfg.clone(), SERVICES).await;
    let gw = Gateway::start(cfg.clone()).await;
    (stack, cfg, w, gw)
}

/// Connects a device and waits until presence knows it (so it can ring).
async fn device(gw: &Gateway, cfg: &Config, user: &str) -> Client {
    let mut c = Client::connect(&gw.ws_url(), &token(cfg, "demo", user))
        .await
        .unwrap();
    loop {
        let p = c.event("presence").await;
        if p["self"] == true {
            return c;
        }
    }
}

fn call_id(v: &Value) -> String {
    v["call"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_whole_call_rings_every_device_relays_only_between_parties_and_is_remembered() {
    let (_s, cfg, _w, gw) = setup(|_| {}).await;
    let mut alice = device(&gw, &cfg, "alice").await;
    let mut bob_phone = device(&gw, &cfg, "bob").await;
    let mut bob_laptop = device(&gw, &cfg, "bob").await;
    let mut carol = device(&gw, &cfg, "carol").await;

    let r = alice
        .ok(
            "signaling.call",
            json!({"to": "bob", "data": {"video": true}}),
        )
        .await;
    assert_eq!(
        (r["state"].clone(), r["devices"].clone()),
        (json!("ringing"), json!(2))
    );
    let call = call_id(&r);
    for d in [&mut bob_phone, &mut bob_laptop] {
        let ring = d.event("call_incoming").await;
        assert_eq!(
            (call_id(&ring), ring["from"].clone(), ring["data"].clone()),
            (call.clone(), json!("alice"), json!({"video": true}))
        );
    }

    // The laptop answers first; the phone is told.
    let a = bob_laptop
        .ok("signaling.accept", json!({"call": call}))
        .await;
    assert_eq!(
        (a["state"].clone(), a["peer"].clone()),
        (json!("active"), json!("alice"))
    );
    assert_eq!(call_id(&alice.event("call_accepted").await), call);
    assert_eq!(
        call_id(&bob_phone.event("call_answered_elsewhere").await),
        call
    );
    assert_eq!(
        bob_phone
            .err("signaling.accept", json!({"call": call}))
            .await,
        "conflict"
    );

    // Offer, answer and candidates flow between alice and the laptop only.
    alice
        .ok(
            "signaling.signal",
            json!({"call": call, "kind": "offer", "data": {"sdp": "v=0 offer"}}),
        )
        .await;
    let s = bob_laptop.event("call_signal").await;
    assert_eq!(
        (
            s["kind"].clone(),
            s["data"]["sdp"].clone(),
            s["from"].clone()
        ),
        (json!("offer"), json!("v=0 offer"), json!("alice"))
    );
    bob_laptop
        .ok(
            "signaling.signal",
            json!({"call": call, "kind": "answer", "data": {"sdp": "v=0 answer"}}),
        )
        .await;
    assert_eq!(alice.event("call_signal").await["kind"], "answer");
    alice
        .ok(
            "signaling.signal",
            json!({"call": call, "kind": "candidate", "data": {"candidate": "a=1"}}),
        )
        .await;
    assert_eq!(
        bob_laptop.event("call_signal").await["data"]["candidate"],
        "a=1"
    );

    // A stranger's SDP, or the other device's, is refused as if the call did not exist.
    assert_eq!(
        carol
            .err(
                "signaling.signal",
                json!({"call": call, "kind": "offer", "data": {"sdp": "evil"}})
            )
            .await,
        "not_found"
    );
    assert_eq!(
        bob_phone
            .err(
                "signaling.signal",
                json!({"call": call, "kind": "offer", "data": {}})
            )
            .await,
        "not_found"
    );
    assert_eq!(
        carol.err("signaling.end", json!({"call": call})).await,
        "not_found"
    );
    assert_eq!(
        alice
            .err(
                "signaling.signal",
                json!({"call": call, "kind": "exploit", "data": {}})
            )
            .await,
        "bad_request"
    );
    assert_eq!(
        alice
            .err(
                "signaling.signal",
                json!({"call": "c../../x", "kind": "offer", "data": {}})
            )
            .await,
        "invalid_id"
    );
    // Only the laptop got signals.
    bob_phone.ok("signaling.history", json!({})).await;
    assert!(bob_phone.take_event("call_signal").is_none());

    bob_laptop.ok("signaling.end", json!({"call": call})).await;
    let e = alice.event("call_ended").await;
    assert_eq!(
        (e["reason"].clone(), e["by"].clone()),
        (json!("hangup"), json!("bob"))
    );

    // Both can call again, and both see the call in their history.
    let h = alice.ok("signaling.history", json!({})).await;
    let entry = &h["calls"][0];
    assert_eq!(
        (
            entry["with"].clone(),
            entry["direction"].clone(),
            entry["answered"].clone(),
            entry["end_reason"].clone()
        ),
        (
            json!("bob"),
            json!("outgoing"),
            json!(true),
            json!("hangup")
        )
    );
    let h = bob_phone.ok("signaling.history", json!({})).await;
    assert_eq!(
        (
            h["calls"][0]["direction"].clone(),
            h["calls"][0]["with"].clone()
        ),
        (json!("incoming"), json!("alice"))
    );
    alice
        .ok(
            "signaling.rate",
            json!({"call": call, "rating": 5, "feedback": "clear audio"}),
        )
        .await;
    assert_eq!(
        carol
            .err("signaling.rate", json!({"call": call, "rating": 1}))
            .await,
        "not_found"
    );
    assert_eq!(
        alice
            .err("signaling.rate", json!({"call": call, "rating": 9}))
            .await,
        "bad_request"
    );
    let h = alice.ok("signaling.history", json!({})).await;
    assert_eq!(
        (
            h["calls"][0]["rating"].clone(),
            h["calls"][0]["feedback"].clone()
        ),
        (json!(5), json!("clear audio"))
    );
    let again = alice.ok("signaling.call", json!({"to": "bob"})).await;
    assert_ne!(call_id(&again), call);
}

#[tokio::test]
async fn busy_reject_cancel_and_ring_timeout() {
    let (_s, cfg, _w, gw) = setup(|c| c.signaling.ring_timeout_ms = 600).await;
    let mut alice = device(&gw, &cfg, "alice").await;
    let mut bob = device(&gw, &cfg, "bob").await;
    let mut carol = device(&gw, &cfg, "carol").await;

    let call = call_id(&alice.ok("signaling.call", json!({"to": "bob"})).await);
    bob.event("call_incoming").await;
    assert_eq!(
        carol.err("signaling.call", json!({"to": "bob"})).await,
        "busy"
    );
    assert_eq!(
        carol.err("signaling.call", json!({"to": "alice"})).await,
        "busy"
    );
    assert_eq!(
        alice.err("signaling.call", json!({"to": "carol"})).await,
        "conflict"
    );
    assert_eq!(
        carol.err("signaling.call", json!({"to": "nobody"})).await,
        "not_found"
    );

    // Reject.
    bob.ok("signaling.reject", json!({"call": call})).await;
    assert_eq!(alice.event("call_ended").await["reason"], "rejected");
    // All of bob's devices stop ringing.
    assert_eq!(bob.event("call_ended").await["reason"], "rejected");

    // Cancel by the caller before an answer.
    let call = call_id(&alice.ok("signaling.call", json!({"to": "bob"})).await);
    bob.event("call_incoming").await;
    assert_eq!(
        bob.err("signaling.cancel", json!({"call": call})).await,
        "not_found"
    );
    alice.ok("signaling.cancel", json!({"call": call})).await;
    assert_eq!(bob.event("call_ended").await["reason"], "cancelled");
    // Every party's devices hear the end, the canceller's included.
    assert_eq!(alice.event("call_ended").await["reason"], "cancelled");

    // Nobody answers.
    let call = call_id(&alice.ok("signaling.call", json!({"to": "bob"})).await);
    bob.event("call_incoming").await;
    for c in [&mut alice, &mut bob] {
        let e = c.event("call_ended").await;
        assert_eq!(
            (call_id(&e), e["reason"].clone()),
            (call.clone(), json!("timeout"))
        );
    }
    assert_eq!(
        bob.err("signaling.accept", json!({"call": call})).await,
        "conflict"
    );
    let h = bob.ok("signaling.history", json!({"limit": 10})).await;
    let reasons: Vec<&str> = h["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["end_reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["timeout", "cancelled", "rejected"]);
    assert!(
        h["calls"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["answered"] == false)
    );
}

#[tokio::test]
async fn a_dropped_party_can_come_back_within_the_grace_period() {
    let (_s, cfg, _w, gw) = setup(|c| c.signaling.reconnect_grace_ms = 800).await;
    let mut alice = device(&gw, &cfg, "alice").await;
    let bob = device(&gw, &cfg, "bob").await;
    let mut bob = bob;
    let call = call_id(&alice.ok("signaling.call", json!({"to": "bob"})).await);
    bob.event("call_incoming").await;
    bob.ok("signaling.accept", json!({"call": call})).await;
    alice.event("call_accepted").await;

    // bob's connection drops; he comes back on a new one and resumes.
    bob.close().await;
    let d = alice.event("peer_disconnected").await;
    assert_eq!(
        (d["user"].clone(), d["grace_ms"].clone()),
        (json!("bob"), json!(800))
    );
    let mut bob = device(&gw, &cfg, "bob").await;
    let r = bob.ok("signaling.resume", json!({"call": call})).await;
    assert_eq!(r["peer"], "alice");
    assert_eq!(alice.event("peer_reconnected").await["user"], "bob");
    alice
        .ok(
            "signaling.signal",
            json!({"call": call, "kind": "renegotiate", "data": {"sdp": "new"}}),
        )
        .await;
    assert_eq!(bob.event("call_signal").await["kind"], "renegotiate");

    // This time he does not come back.
    bob.close().await;
    alice.event("peer_disconnected").await;
    let e = alice.event("call_ended").await;
    assert_eq!(
        (e["reason"].clone(), e["by"].clone()),
        (json!("disconnected"), json!("bob"))
    );
    let h = alice.ok("signaling.history", json!({})).await;
    assert_eq!(h["calls"][0]["end_reason"], "disconnected");
}

#[tokio::test]
async fn mesh_signaling_reaches_only_the_named_member_of_the_room() {
    let (_s, cfg, _w, gw) = setup(|_| {}).await;
    let mut a = device(&gw, &cfg, "a").await;
    let mut b = device(&gw, &cfg, "b").await;
    let mut c = device(&gw, &cfg, "c").await;
    let mut outsider = device(&gw, &cfg, "x").await;
    a.ok("rooms.create", json!({"room": "group"})).await;
    for m in [&mut a, &mut b, &mut c] {
        m.ok("rooms.join", json!({"room": "group"})).await;
    }
    let r = a
        .ok(
            "signaling.room_signal",
            json!({"room": "group", "to": "b", "kind": "offer", "data": {"sdp": "for b"}}),
        )
        .await;
    assert_eq!(r["delivered"], 1);
    let s = b.event("room_signal").await;
    assert_eq!(
        (
            s["from"].clone(),
            s["kind"].clone(),
            s["data"]["sdp"].clone()
        ),
        (json!("a"), json!("offer"), json!("for b"))
    );
    // b answers that exact connection.
    let from_conn = s["from_conn"].as_str().unwrap().to_owned();
    b.ok(
        "signaling.room_signal",
        json!({"room": "group", "to": "a", "to_conn": from_conn, "kind": "answer", "data": {}}),
    )
    .await;
    assert_eq!(a.event("room_signal").await["kind"], "answer");
    c.ok("rooms.info", json!({"room": "group"})).await;
    assert!(c.take_event("room_signal").is_none());

    assert_eq!(
        outsider
            .err(
                "signaling.room_signal",
                json!({"room": "group", "to": "a", "kind": "offer", "data": {}})
            )
            .await,
        "not_member"
    );
    assert_eq!(
        a.err(
            "signaling.room_signal",
            json!({"room": "group", "to": "x", "kind": "offer", "data": {}})
        )
        .await,
        "not_member"
    );
    assert_eq!(
        a.err(
            "signaling.room_signal",
            json!({"room": "nowhere", "to": "b", "kind": "offer", "data": {}})
        )
        .await,
        "not_found"
    );
}
