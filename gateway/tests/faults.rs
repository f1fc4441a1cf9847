//! Faults under load: a gateway killed while its clients receive a busy
//! room. Its clients reconnect to the survivor and resume with nothing
//! missing and nothing twice; the cluster forgets the dead connections
//! within the configured bound.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, Gateway, GatewayProcess, Stack, Workers};
use tokio::sync::watch;

const MESSAGES: u64 = 400;
const DOOMED_CLIENTS: usize = 20;

/// Receives room messages until the connection ends or `last` arrives;
/// returns the seqs in arrival order.
async fn collect(c: &mut Client, room: &str, last: u64, seqs: &mut Vec<u64>) -> bool {
    while let Some((event, data)) = c.event_or_end().await {
        match event.as_str() {
            "message" if data["room"] == room => {
                let seq = data["seq"].as_u64().unwrap_or(0);
                seqs.push(seq);
                if seq == last {
                    return true;
                }
            }
            "gap" => panic!("gap reported: {data}"),
            _ => {}
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_gateway_resume_on_the_survivor_without_loss_or_duplicates() {
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg.gateway.heartbeat_interval_ms = 300;
    cfg.presence.gateway_dead_after_ms = 1_500;
    cfg.presence.reap_interval_ms = 200;
    let _w = Workers::start(cfg.clone(), &["rooms", "presence"]).await;
    let survivor = Gateway::start(cfg.clone()).await;
    let mut doomed = GatewayProcess::start(env!("CARGO_BIN_EXE_switchboard-gateway"), &cfg).await;

    let mut publisher = Client::connect(&survivor.ws_url(), &token(&cfg, "demo", "pub"))
        .await
        .unwrap();
    publisher.ok("rooms.create", json!({"room": "busy"})).await;
    publisher.ok("rooms.join", json!({"room": "busy"})).await;
    let mut watcher = Client::connect(&survivor.ws_url(), &token(&cfg, "demo", "watcher"))
        .await
        .unwrap();
    watcher
        .ok("presence.subscribe", json!({"users": ["leaver"]}))
        .await;

    // Clients on the gateway that will die; one of them will not come back.
    let mut clients = Vec::new();
    for i in 0..DOOMED_CLIENTS {
        let user = if i == 0 {
            "leaver".to_owned()
        } else {
            format!("u{i}")
        };
        let mut c = Client::connect(&doomed.ws_url(), &token(&cfg, "demo", &user))
            .await
            .unwrap();
        c.ok("rooms.join", json!({"room": "busy"})).await;
        clients.push((user, c));
    }
    loop {
        let p = watcher.event("presence").await;
        if p["user"] == "leaver" && p["status"] == "online" {
            break;
        }
    }

    // Publish steadily from the survivor; the doomed gateway dies a third of
    // the way through.
    let (sent_tx, mut sent_rx) = watch::channel(0u64);
    let publishing = tokio::spawn(async move {
        for i in 1..=MESSAGES {
            let r = publisher
                .ok("rooms.publish", json!({"room": "busy", "data": {"n": i}}))
                .await;
            assert_eq!(r["seq"], i, "publish order");
            let _ = sent_tx.send(i);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        publisher
    });
    let mut receivers = Vec::new();
    for (user, mut c) in clients {
        receivers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            let done = collect(&mut c, "busy", MESSAGES, &mut seqs).await;
            assert!(!done, "{user}: the connection should have died first");
            (user, seqs)
        }));
    }
    sent_rx.wait_for(|n| *n >= MESSAGES / 3).await.unwrap();
    let killed = Instant::now();
    doomed.kill();

    // Every client but the leaver reconnects to the survivor and resumes
    // after the last seq it saw.
    let mut resumed = Vec::new();
    for r in receivers {
        let (user, seqs) = r.await.unwrap();
        if user == "leaver" {
            continue;
        }
        let after = seqs.last().copied().unwrap_or(0);
        let cfg = cfg.clone();
        let url = survivor.ws_url();
        resumed.push(tokio::spawn(async move {
            let mut c = Client::connect(&url, &token(&cfg, "demo", &user))
                .await
                .unwrap();
            c.ok("rooms.join", json!({"room": "busy", "after": after}))
                .await;
            let mut seqs = seqs;
            assert!(collect(&mut c, "busy", MESSAGES, &mut seqs).await);
            (user, seqs, c)
        }));
    }
    let mut results = BTreeMap::new();
    let mut alive = Vec::new();
    for r in resumed {
        let (user, seqs, c) = r.await.unwrap();
        results.insert(user, seqs);
        alive.push(c);
    }
    let mut publisher = publishing.await.unwrap();

    let expected: Vec<u64> = (1..=MESSAGES).collect();
    for (user, seqs) in &results {
        let missing = expected.iter().filter(|s| !seqs.contains(s)).count();
        let duplicates = seqs.len() - {
            let mut d = seqs.clone();
            d.dedup();
            d.len()
        };
        assert_eq!(
            (missing, duplicates),
            (0, 0),
            "{user}: {missing} missing, {duplicates} duplicate"
        );
        assert_eq!(seqs, &expected, "{user}: out of order");
    }
    assert_eq!(results.len(), DOOMED_CLIENTS - 1);

    // The leaver's presence and membership converge within the bound.
    loop {
        let p = watcher.event("presence").await;
        if p["user"] == "leaver" && p["status"] == "offline" {
            break;
        }
    }
    let bound =
        Duration::from_millis(cfg.presence.gateway_dead_after_ms + cfg.presence.reap_interval_ms)
            + Duration::from_secs(3);
    assert!(
        killed.elapsed() < bound,
        "presence took {:?}",
        killed.elapsed()
    );
    loop {
        let left = publisher.event("member_left").await;
        if left["user"] == "leaver" {
            break;
        }
    }
    assert!(
        killed.elapsed() < bound,
        "membership took {:?}",
        killed.elapsed()
    );
    let info = publisher.ok("rooms.members", json!({"room": "busy"})).await;
    let users: Vec<&str> = info["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["user"].as_str().or(m.as_str()))
        .collect();
    assert!(!users.contains(&"leaver"), "stale member: {info}");
    assert_eq!(users.len(), DOOMED_CLIENTS, "{info}");
}
