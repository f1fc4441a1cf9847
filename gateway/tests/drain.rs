//! A stopping gateway (promise 7): clients are told to reconnect with close
//! 1012, spread over `gateway.drain_window_ms`; requests already forwarded
//! get their replies first; and the gateway is gone within
//! `gateway.drain_grace_ms`.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use switchboard_proto::bus::Reply;
use switchboard_shared::bus;
use switchboard_shared::config::Config;
use switchboard_test_harness::client::WAIT;
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, Gateway, Stack, Workers};
use tokio::time::Instant;

async fn setup(cfg_fn: impl FnOnce(&mut Config)) -> (Stack, Config, Workers, Gateway) {
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg_fn(&mut cfg);
    let w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    (stack, cfg, w, gw)
}

#[tokio::test]
async fn a_stopping_gateway_tells_clients_to_reconnect() {
    let (_s, cfg, _w, gw) = setup(|_| {}).await;
    let mut c = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "u"))
        .await
        .unwrap();
    let stopping = tokio::spawn(gw.stop());
    assert_eq!(c.closed().await.map(|c| c.0), Some(1012));
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_drain_spreads_the_closes_and_answers_requests_in_flight_first() {
    let window = Duration::from_millis(1_000);
    let grace = Duration::from_millis(4_000);
    let (stack, cfg, _w, gw) = setup(|c| {
        c.gateway.drain_window_ms = window.as_millis() as u64;
        c.gateway.drain_grace_ms = grace.as_millis() as u64;
        // A service played by the test, which answers when it chooses.
        c.gateway.services.push("held".into());
    })
    .await;
    let service = stack.nats_client().await;
    let mut held = service.subscribe("sb.svc.held.>").await.unwrap();
    bus::sync(&service).await.unwrap();

    let url = gw.ws_url();
    let mut waiting = Client::connect(&url, &token(&cfg, "demo", "waiting"))
        .await
        .unwrap();
    let mut others = Vec::new();
    for i in 0..9 {
        let c = Client::connect(&url, &token(&cfg, "demo", &format!("u{i}")))
            .await
            .unwrap();
        others.push(c);
    }
    // One request is in flight when the drain starts.
    waiting
        .send_json(&json!({"id": "h1", "op": "held.work", "data": {"n": 1}}))
        .await;
    let request = tokio::time::timeout(WAIT, held.next())
        .await
        .unwrap()
        .unwrap();

    let start = Instant::now();
    let stopping = tokio::spawn(gw.stop());
    let closes: Vec<_> = others
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let code = c.closed().await.map(|c| c.0);
                (code, start.elapsed())
            })
        })
        .collect();
    let mut at = Vec::new();
    for close in closes {
        let (code, when) = close.await.unwrap();
        assert_eq!(code, Some(1012));
        at.push(when);
    }
    at.sort();
    let (first, last) = (at[0], at[at.len() - 1]);
    assert!(
        last - first >= window / 2,
        "closes not spread over the window: {at:?}"
    );
    assert!(last < grace, "{at:?}");

    // Every turn in the window has passed, yet the client with a request in
    // flight is still open: it gets the reply, then its 1012.
    tokio::time::sleep_until(start + window).await;
    let reply = Reply {
        ok: true,
        data: br#"{"done":true}"#.to_vec().into(),
        ..Reply::default()
    };
    service
        .publish(request.reply.unwrap(), bus::encode(&reply))
        .await
        .unwrap();
    let r = waiting.reply(&json!("h1")).await;
    assert_eq!(
        (r["ok"].clone(), r["data"].clone()),
        (json!(true), json!({"done": true}))
    );
    assert_eq!(waiting.closed().await.map(|c| c.0), Some(1012));

    stopping.await.unwrap();
    assert!(
        start.elapsed() < grace,
        "the gateway took {:?} to stop",
        start.elapsed()
    );
}
