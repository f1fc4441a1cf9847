//! Matchmaking end to end: real NATS and Redis, in-process gateways and
//! workers, clients over real WebSockets. Tickets are matched into private
//! rooms made by the rooms service; incompatible tickets wait, optional
//! terms relax, tickets go when left, disconnected or expired, apps never
//! meet, and two replicas never match a ticket twice.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_proto::bus::{ConnRef, Reply, Request};
use switchboard_shared::bus;
use switchboard_shared::config::Config;
use switchboard_shared::conn_events::{ConnInfo, ConnLifecycle};
use switchboard_shared::ids::{GatewayId, TenantId, UserId};
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, Gateway, Stack, Workers};

const SERVICES: &[&str] = &["rooms", "matchmaking"];

async fn setup(f: impl FnOnce(&mut Config)) -> (Stack, Config, Workers, Gateway) {
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg.matchmaking.tick_ms = 100;
    f(&mut cfg);
    let w = Workers::start(cfg.clone(), SERVICES).await;
    let gw = Gateway::start(cfg.clone()).await;
    (stack, cfg, w, gw)
}

async fn connect(gw: &Gateway, cfg: &Config, app: &str, user: &str) -> Client {
    Client::connect(&gw.ws_url(), &token(cfg, app, user))
        .await
        .unwrap()
}

fn eu(skill: u32) -> Value {
    json!({"props": {"region": "eu", "skill": skill}, "query": {"required": {"region": "eu"}}})
}

/// Waits (bounded) until a matching pass has run well after `c`'s ticket
/// and `since_ms` (server time), so "no match yet" means the matcher saw
/// both tickets several times and declined. Returns the final status.
async fn passes_after(c: &mut Client, since_ms: u64, cfg: &Config) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.ok("matchmaking.status", json!({})).await;
        let seen_from = since_ms.max(s["enqueued_at"].as_u64().unwrap());
        if s["last_pass_at"].as_u64().unwrap() >= seen_from + 3 * cfg.matchmaking.tick_ms {
            return s;
        }
        assert!(Instant::now() < deadline, "no matching pass ran: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn compatible_users_are_matched_into_a_private_room_they_can_both_join() {
    let (_s, cfg, _w, gw) = setup(|_| {}).await;
    let mut alice = connect(&gw, &cfg, "demo", "alice").await;
    let mut bob = connect(&gw, &cfg, "demo", "bob").await;
    let mut carol = connect(&gw, &cfg, "demo", "carol").await;

    let a = alice.ok("matchmaking.join", eu(10)).await;
    assert_eq!(
        (a["position"].clone(), a["waiting"].clone()),
        (json!(1), json!(1)),
        "{a}"
    );
    assert!(a["ticket"].as_str().unwrap().starts_with('t'));
    let b = bob.ok("matchmaking.join", eu(30)).await;

    let ma = alice.event("match_found").await;
    let mb = bob.event("match_found").await;
    assert_eq!(ma["ticket"], a["ticket"]);
    assert_eq!(mb["ticket"], b["ticket"]);
    assert_eq!(ma["room"], mb["room"]);
    assert_eq!(
        ma["peers"],
        json!([{"user": "bob", "props": {"region": "eu", "skill": 30}}])
    );
    assert_eq!(mb["peers"][0]["user"], "alice");
    let room = ma["room"].as_str().unwrap().to_owned();

    // The tickets are gone once matched.
    assert_eq!(
        alice.err("matchmaking.status", json!({})).await,
        "not_found"
    );

    // Private, but it admits exactly the matched users.
    alice.ok("rooms.join", json!({"room": room})).await;
    let joined = bob.ok("rooms.join", json!({"room": room})).await;
    assert_eq!(joined["members"], 2);
    assert_eq!(
        carol.err("rooms.join", json!({"room": room})).await,
        "forbidden"
    );
    let info = alice.ok("rooms.info", json!({"room": room})).await;
    assert_eq!(
        (info["private"].clone(), info["max_members"].clone()),
        (json!(true), json!(2))
    );
    alice
        .ok(
            "rooms.publish",
            json!({"room": room, "data": {"hello": "bob"}}),
        )
        .await;
    let m = bob.event("message").await;
    assert_eq!(
        (m["from"].clone(), m["data"].clone()),
        (json!("alice"), json!({"hello": "bob"}))
    );
}

#[tokio::test]
async fn incompatible_tickets_wait_without_being_matched() {
    let (_s, cfg, _w, gw) = setup(|_| {}).await;
    let mut alice = connect(&gw, &cfg, "demo", "alice").await;
    let mut bob = connect(&gw, &cfg, "demo", "bob").await;
    let mut carol = connect(&gw, &cfg, "demo", "carol").await;
    alice.ok("matchmaking.join", eu(10)).await;
    // Required terms must hold both ways: bob is in the US.
    bob.ok(
        "matchmaking.join",
        json!({"props": {"region": "us"}, "query": {}}),
    )
    .await;
    // carol is in the EU but only wants skill >= 50 (alice has 10).
    let c = carol
        .ok(
            "matchmaking.join",
            json!({"props": {"region": "eu"}, "query": {"ranges": {"skill": {"min": 50}}}}),
        )
        .await;
    assert_eq!(c["waiting"], 3);
    let s = passes_after(&mut carol, 0, &cfg).await;
    assert_eq!(
        (s["state"].clone(), s["position"].clone()),
        (json!("waiting"), json!(3))
    );
    assert_eq!(s["query"]["ranges"]["skill"], json!({"min": 50}));
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(
            c.ok("matchmaking.status", json!({})).await["state"],
            "waiting"
        );
        assert!(c.take_event("match_found").is_none());
    }
}

#[tokio::test]
async fn optional_terms_relax_as_a_ticket_waits() {
    let (_s, cfg, _w, gw) = setup(|c| c.matchmaking.relax_after_secs = vec![1]).await;
    let mut alice = connect(&gw, &cfg, "demo", "alice").await;
    let mut bob = connect(&gw, &cfg, "demo", "bob").await;
    let started = Instant::now();
    alice
        .ok(
            "matchmaking.join",
            json!({"props": {"language": "en"}, "query": {"optional": [{"language": "en"}]}}),
        )
        .await;
    bob.ok("matchmaking.join", json!({"props": {"language": "de"}}))
        .await;
    let s = alice.ok("matchmaking.status", json!({})).await;
    assert_eq!(s["query"]["optional"], json!([{"language": "en"}]));
    let m = alice.event("match_found").await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "matched before the optional term relaxed: {:?}",
        started.elapsed()
    );
    assert_eq!(m["peers"][0]["user"], "bob");
    assert_eq!(bob.event("match_found").await["room"], m["room"]);
}

#[tokio::test]
async fn joining_again_replaces_the_ticket() {
    let (_s, cfg, _w, gw) = setup(|_| {}).await;
    let mut alice = connect(&gw, &cfg, "demo", "alice").await;
    let mut bob = connect(&gw, &cfg, "demo", "bob").await;
    let first = alice
        .ok(
            "matchmaking.join",
            json!({"props": {"region": "us"}, "query": {"required": {"region": "us"}}}),
        )
        .await;
    assert_eq!(first["replaced"], Value::Null);
    let second = alice.ok("matchmaking.join", eu(10)).await;
    assert_eq!(second["replaced"], first["ticket"]);
    assert_ne!(second["ticket"], first["ticket"]);
    let s = alice.ok("matchmaking.status", json!({})).await;
    assert_eq!(
        (
            s["ticket"].clone(),
            s["waiting"].clone(),
            s["props"]["region"].clone()
        ),
        (second["ticket"].clone(), json!(1), json!("eu"))
    );
    // Only the new ticket matches: bob is in the EU.
    bob.ok("matchmaking.join", eu(20)).await;
    assert_eq!(alice.event("match_found").await["ticket"], second["ticket"]);
}

#[tokio::test]
async fn leaving_or_disconnecting_removes_the_ticket() {
    let (_s, cfg, _w, gw) = setup(|_| {}).await;
    let mut alice = connect(&gw, &cfg, "demo", "alice").await;
    alice.ok("matchmaking.join", eu(10)).await;
    let left = alice.ok("matchmaking.leave", json!({})).await;
    assert_eq!(left["left"], true);
    assert_eq!(
        alice.err("matchmaking.status", json!({})).await,
        "not_found"
    );
    assert_eq!(
        alice.ok("matchmaking.leave", json!(null)).await["left"],
        false
    );

    // bob's laptop joins, then closes: the ticket goes with it.
    let mut phone = connect(&gw, &cfg, "demo", "bob").await;
    let mut laptop = connect(&gw, &cfg, "demo", "bob").await;
    laptop.ok("matchmaking.join", eu(10)).await;
    laptop.close().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = phone.request("matchmaking.status", json!({})).await;
        if r["ok"] == false {
            assert_eq!(r["error"]["code"], "not_found");
            break;
        }
        assert!(Instant::now() < deadline, "ticket outlived its connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another device closing does not take the phone's ticket.
    let t = phone.ok("matchmaking.join", eu(10)).await;
    connect(&gw, &cfg, "demo", "bob").await.close().await;
    let mut dave = connect(&gw, &cfg, "demo", "dave").await;
    dave.ok("matchmaking.join", eu(10)).await;
    assert_eq!(phone.event("match_found").await["ticket"], t["ticket"]);
}

#[tokio::test]
async fn two_replicas_never_match_a_ticket_twice() {
    let (_s, cfg, _w, gw) = setup(|c| c.matchmaking.tick_ms = 20).await;
    let _w2 = Workers::start(cfg.clone(), &["matchmaking"]).await;
    let n = 40;
    let mut clients = Vec::new();
    for i in 0..n {
        clients.push(connect(&gw, &cfg, "demo", &format!("u{i:02}")).await);
    }
    // Everyone is compatible with everyone: maximal contention.
    let joins = clients.iter_mut().enumerate().map(|(i, c)| async move {
        c.ok("matchmaking.join", eu(i as u32)).await;
    });
    futures::future::join_all(joins).await;
    let mut rooms: HashMap<String, Vec<String>> = HashMap::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let m = c.event("match_found").await;
        let peers = m["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 1, "{m}");
        assert_ne!(peers[0]["user"], format!("u{i:02}"));
        rooms
            .entry(m["room"].as_str().unwrap().to_owned())
            .or_default()
            .push(format!("u{i:02}"));
    }
    assert_eq!(rooms.len(), n / 2);
    for (room, members) in &rooms {
        let distinct: HashSet<&String> = members.iter().collect();
        assert_eq!(distinct.len(), 2, "room {room}: {members:?}");
    }
    // Nobody got a second match meanwhile (a round trip lets stragglers in).
    for c in &mut clients {
        assert_eq!(c.err("matchmaking.status", json!({})).await, "not_found");
        assert!(c.take_event("match_found").is_none());
    }
}

#[tokio::test]
async fn apps_never_match_each_others_tickets() {
    let (_s, cfg, _w, gw) = setup(|_| {}).await;
    let mut alice = connect(&gw, &cfg, "app1", "alice").await;
    let mut bob = connect(&gw, &cfg, "app2", "bob").await;
    alice.ok("matchmaking.join", eu(10)).await;
    let b = bob.ok("matchmaking.join", eu(10)).await;
    assert_eq!(b["position"], 1, "each app has its own queue");
    passes_after(&mut alice, 0, &cfg).await;
    passes_after(&mut bob, 0, &cfg).await;
    assert!(alice.take_event("match_found").is_none());
    assert!(bob.take_event("match_found").is_none());
    let mut carol = connect(&gw, &cfg, "app1", "carol").await;
    carol.ok("matchmaking.join", eu(10)).await;
    assert_eq!(
        alice.event("match_found").await["peers"][0]["user"],
        "carol"
    );
    assert_eq!(
        bob.ok("matchmaking.status", json!({})).await["state"],
        "waiting"
    );
}

#[tokio::test]
async fn bad_input_gets_typed_errors() {
    let (_s, cfg, _w, gw) = setup(|_| {}).await;
    let mut alice = connect(&gw, &cfg, "demo", "alice").await;
    let long = "x".repeat(65);
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), json!(i))).collect();
    for bad in [
        json!({"props": {"Region": "eu"}}),
        json!({"props": {"a.b": "eu"}}),
        json!({"props": {"region": long}}),
        json!({"props": {"region": true}}),
        json!({"props": {"region": {"nested": 1}}}),
        json!({ "props": many }),
        json!({"query": {"required": {"region": []}}}),
        json!({"query": {"ranges": {"skill": {}}}}),
        json!({"query": {"ranges": {"skill": {"min": 5, "max": 1}}}}),
        json!({"query": {"optional": [{"a": 1, "b": 2}]}}),
        json!({"query": {"optional": "a"}}),
        json!({"query": {"unknown": 1}}),
        json!({"min": 1}),
        json!({"min": 4, "max": 3}),
        json!({"max": 1000}),
        json!({"min": -2}),
        json!({"extra": true}),
        json!("join"),
    ] {
        assert_eq!(
            alice.err("matchmaking.join", bad.clone()).await,
            "bad_request",
            "{bad}"
        );
    }
    alice
        .send_text(
            r#"{"id": "inf", "op": "matchmaking.join", "data": {"props": {"skill": 1e400}}}"#,
        )
        .await;
    let r = alice.reply(&json!("inf")).await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    assert_eq!(
        alice.err("matchmaking.leave", json!({"ticket": "x"})).await,
        "bad_request"
    );
    assert_eq!(
        alice.err("matchmaking.status", json!({})).await,
        "not_found"
    );
    assert_eq!(alice.err("matchmaking.nope", json!({})).await, "unknown_op");
    // Still usable afterwards; nothing was queued by the refusals.
    let t = alice.ok("matchmaking.join", json!(null)).await;
    assert_eq!(t["waiting"], 1);
}

#[tokio::test]
async fn waiting_tickets_get_queue_status_pushes() {
    let (_s, cfg, _w, gw) = setup(|c| c.matchmaking.status_interval_ms = 300).await;
    let mut alice = connect(&gw, &cfg, "demo", "alice").await;
    let mut bob = connect(&gw, &cfg, "demo", "bob").await;
    let a = alice.ok("matchmaking.join", eu(10)).await;
    let b = bob
        .ok(
            "matchmaking.join",
            json!({"props": {"region": "us"}, "query": {"required": {"region": "us"}}}),
        )
        .await;
    // Wait for a push that counts both tickets.
    let s = loop {
        let s = bob.event("queue_status").await;
        if s["waiting"] == 2 {
            break s;
        }
    };
    assert_eq!(
        (s["ticket"].clone(), s["position"].clone()),
        (b["ticket"].clone(), json!(2))
    );
    assert!(s.get("estimated_wait_ms").is_some());
    let s = loop {
        let s = alice.event("queue_status").await;
        if s["waiting"] == 2 {
            break s;
        }
    };
    assert_eq!(
        (s["ticket"].clone(), s["position"].clone()),
        (a["ticket"].clone(), json!(1))
    );
}

#[tokio::test]
async fn expired_tickets_are_dropped_and_their_owner_told() {
    let (_s, cfg, _w, gw) = setup(|c| c.matchmaking.ticket_ttl_secs = 1).await;
    let mut alice = connect(&gw, &cfg, "demo", "alice").await;
    let t = alice.ok("matchmaking.join", eu(10)).await;
    let e = alice.event("ticket_expired").await;
    assert_eq!(e["ticket"], t["ticket"]);
    assert!(e["waited_ms"].as_u64().unwrap() >= 1_000, "{e}");
    assert_eq!(
        alice.err("matchmaking.status", json!({})).await,
        "not_found"
    );
}

#[tokio::test]
async fn estimated_wait_follows_the_recent_match_rate() {
    let (_s, cfg, _w, gw) = setup(|_| {}).await;
    let mut a = connect(&gw, &cfg, "demo", "a").await;
    let mut b = connect(&gw, &cfg, "demo", "b").await;
    let first = a.ok("matchmaking.join", eu(1)).await;
    assert_eq!(first["estimated_wait_ms"], Value::Null, "no history yet");
    b.ok("matchmaking.join", eu(2)).await;
    a.event("match_found").await;
    let mut c = connect(&gw, &cfg, "demo", "c").await;
    let t = c
        .ok(
            "matchmaking.join",
            json!({"props": {"region": "us"}, "query": {"required": {"region": "us"}}}),
        )
        .await;
    let est = t["estimated_wait_ms"].as_u64().unwrap();
    // Two tickets matched, counted over at least 10 s: one per 5 s.
    assert!((1..=5_000).contains(&est), "{t}");
}

/// One matchmaking request over the bus, as a gateway sends it for
/// connection `conn` of gateway `gwtest-1`.
async fn ask(nats: &async_nats::Client, conn: u64, op: &str, data: Value) -> Reply {
    let req = Request {
        conn: Some(ConnRef {
            gateway: "gwtest-1".into(),
            conn,
        }),
        tenant: "demo".into(),
        user: "alice".into(),
        op: op.into(),
        payload: data.to_string().into(),
        ..Request::default()
    };
    let msg = tokio::time::timeout(
        Duration::from_secs(10),
        nats.request(format!("sb.svc.matchmaking.{op}"), bus::encode(&req)),
    )
    .await
    .unwrap()
    .unwrap();
    bus::decode(&msg.payload).unwrap()
}

#[tokio::test]
async fn a_closed_connection_cannot_queue_a_ticket() {
    // Matchmaking alone: it must keep the connection-gone marker itself.
    let stack = Stack::start();
    let _w = Workers::start(stack.config(), &["matchmaking"]).await;
    let nats = stack.nats_client().await;
    let r = ask(&nats, 1, "join", eu(10)).await;
    assert!(r.ok, "{r:?}");
    let closed = ConnLifecycle::Disconnected(ConnInfo {
        gw: GatewayId::parse("gwtest-1").unwrap(),
        conn: 1,
        tenant: TenantId::parse("demo").unwrap(),
        user: UserId::parse("alice").unwrap(),
    });
    nats.publish("sb.evt.conn", closed.encode()).await.unwrap();
    // The disconnect takes the ticket (seen from alice's other connection).
    let deadline = Instant::now() + Duration::from_secs(10);
    while ask(&nats, 2, "status", json!({})).await.ok {
        assert!(Instant::now() < deadline, "ticket outlived its connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A join from the closed connection arriving late is refused and
    // leaves nothing behind, nor takes anything away.
    let phone = ask(&nats, 2, "join", eu(20)).await;
    assert!(phone.ok, "{phone:?}");
    let late = ask(&nats, 1, "join", eu(10)).await;
    assert_eq!(
        late.error.map(|e| (e.code, e.message)),
        Some(("not_found".into(), "connection is closed".into()))
    );
    let s: Value = serde_json::from_slice(&ask(&nats, 2, "status", json!({})).await.data).unwrap();
    assert_eq!(
        (s["waiting"].clone(), s["props"]["skill"].clone()),
        (json!(1), json!(20)),
        "{s}"
    );
}
