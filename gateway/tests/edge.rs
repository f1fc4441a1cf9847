//! The gateway's edge: handshake and auth failures, bad frames, id injection,
//! tenant isolation, slow readers and idle clients. Every case checks that the
//! offending client gets a clear answer and that other connections carry on.
//! (A stopping gateway is in `drain.rs`.)

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use switchboard_shared::config::Config;
use switchboard_test_harness::client::{ConnectError, closed, connect_raw};
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, Gateway, Stack, Workers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn jwt(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn now() -> i64 {
    (switchboard_shared::now_ms() / 1000) as i64
}

async fn http_get(gw: &Gateway, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, buf)
}

async fn setup(cfg_fn: impl FnOnce(&mut Config)) -> (Stack, Config, Workers, Gateway) {
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg_fn(&mut cfg);
    let w = Workers::start(cfg.clone(), &["rooms"]).await;
    let gw = Gateway::start(cfg.clone()).await;
    (stack, cfg, w, gw)
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_before_the_upgrade() {
    let (_s, cfg, _w, gw) = setup(|c| c.auth.audience = Some("switchboard".into())).await;
    let secret = cfg.auth.hs256_secret.clone().unwrap();
    let url = gw.ws_url();
    let good = json!({"sub": "u", "app": "demo", "exp": now() + 60, "aud": "switchboard"});

    let err = Client::connect_with(&url, &[]).await.err().unwrap();
    assert_eq!(err.status(), Some(401));
    assert!(err.to_string().contains("unauthorized"), "{err}");

    let cases = [
        (
            "expired",
            jwt(
                json!({"sub": "u", "app": "demo", "exp": now() - 3600, "aud": "switchboard"}),
                &secret,
            ),
            "expired",
        ),
        (
            "wrong signature",
            jwt(good.clone(), "not-the-secret"),
            "signature",
        ),
        (
            "wrong audience",
            jwt(
                json!({"sub": "u", "app": "demo", "exp": now() + 60, "aud": "other"}),
                &secret,
            ),
            "audience",
        ),
        (
            "no exp",
            jwt(
                json!({"sub": "u", "app": "demo", "aud": "switchboard"}),
                &secret,
            ),
            "exp",
        ),
        ("garbage", "abc.def.ghi".to_owned(), "malformed"),
    ];
    for (name, tok, why) in cases {
        let err = Client::connect(&url, &tok)
            .await
            .err()
            .unwrap_or_else(|| panic!("{name} accepted"));
        assert_eq!(err.status(), Some(401), "{name}");
        assert!(err.to_string().contains(why), "{name}: {err}");
    }

    // alg: none, with a valid-looking body and no signature.
    let err = Client::connect(&url, switchboard_shared::auth::ALG_NONE_TOKEN)
        .await
        .err()
        .unwrap();
    assert_eq!(err.status(), Some(401));

    // The good token works from every place a client can put it.
    let tok = jwt(good, &secret);
    Client::connect(&url, &tok).await.unwrap();
    let c = Client::connect_with(
        &url,
        &[(
            "Sec-WebSocket-Protocol",
            &format!("switchboard.v1, bearer.{tok}"),
        )],
    )
    .await
    .unwrap();
    assert_eq!(c.protocol.as_deref(), Some("switchboard.v1"));
    Client::connect_with(&format!("{url}?token={tok}"), &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn configured_claims_are_required_and_grants_must_be_valid() {
    let (_s, cfg, _w, gw) = setup(|c| {
        c.auth.audience = Some("switchboard".into());
        c.auth.issuer = Some("https://id.example".into());
    })
    .await;
    let secret = cfg.auth.hs256_secret.clone().unwrap();
    let url = gw.ws_url();
    let claims = |rooms: serde_json::Value| {
        json!({"sub": "u", "app": "demo", "exp": now() + 60, "aud": "switchboard",
            "iss": "https://id.example", "rooms": rooms})
    };
    let mut cases = Vec::new();
    for claim in ["aud", "iss"] {
        let mut c = claims(json!([]));
        c.as_object_mut().unwrap().remove(claim);
        cases.push((c, format!("lacks claim `{claim}`")));
    }
    for bad in ["a.b", "a>", "d e", "", "a*b", &"x".repeat(65)] {
        cases.push((claims(json!(["lobby", bad])), format!("grant {bad:?}")));
    }
    for (c, why) in cases {
        match Client::connect(&url, &jwt(c.clone(), &secret)).await.err() {
            Some(ConnectError::Http { status, body }) => {
                let body: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(
                    (status, &body["error"]["code"]),
                    (401, &json!("unauthorized"))
                );
                let msg = body["error"]["message"].as_str().unwrap_or_default();
                assert!(msg.contains(&why), "{why}: {msg}");
            }
            other => panic!("{c}: {other:?}"),
        }
    }
    // Valid grants still connect, and they open the private rooms they name.
    let good = jwt(claims(json!(["lobby", "team-*"])), &secret);
    let mut c = Client::connect(&url, &good).await.unwrap();
    c.ok("rooms.create", json!({"room": "team-1", "private": true}))
        .await;
    c.ok("rooms.join", json!({"room": "team-1"})).await;
    let other = json!({"room": "other", "private": true});
    assert_eq!(c.err("rooms.create", other).await, "forbidden");
}

#[tokio::test]
async fn handshake_rules_origin_protocol_and_health() {
    let (_s, cfg, _w, gw) =
        setup(|c| c.gateway.allowed_origins = vec!["https://app.example".into()]).await;
    let tok = token(&cfg, "demo", "u");
    let auth = format!("Bearer {tok}");
    let err = Client::connect_with(
        &gw.ws_url(),
        &[("Authorization", &auth), ("Origin", "https://evil.example")],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.status(), Some(403));
    Client::connect_with(
        &gw.ws_url(),
        &[("Authorization", &auth), ("Origin", "https://app.example")],
    )
    .await
    .unwrap();
    let err = Client::connect_with(
        &gw.ws_url(),
        &[
            ("Authorization", &auth),
            ("Sec-WebSocket-Protocol", "switchboard.v9"),
        ],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.status(), Some(400));

    assert_eq!(http_get(&gw, "/healthz").await.0, 200);
    assert_eq!(http_get(&gw, "/readyz").await.0, 200);
    assert_eq!(http_get(&gw, "/ws").await.0, 426);
    assert_eq!(http_get(&gw, "/nope").await.0, 404);
}

#[tokio::test]
async fn malformed_frames_get_typed_errors_and_the_connection_carries_on() {
    let (_s, cfg, _w, gw) = setup(|_| {}).await;
    let mut c = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "u"))
        .await
        .unwrap();
    let cases = [
        ("{not json", json!(null), "bad_request"),
        ("[1,2,3]", json!(null), "bad_request"),
        (r#"{"op":"rooms.create"}"#, json!(null), "bad_request"),
        (
            r#"{"id":{"x":1},"op":"rooms.create"}"#,
            json!(null),
            "invalid_id",
        ),
        (r#"{"id":"a","data":{}}"#, json!("a"), "bad_request"),
        (
            r#"{"id":"b","op":"rooms.explode"}"#,
            json!("b"),
            "unknown_op",
        ),
        (
            r#"{"id":"c","op":"billing.charge"}"#,
            json!("c"),
            "unknown_op",
        ),
        (r#"{"id":"d","op":"rooms.*"}"#, json!("d"), "unknown_op"),
        (
            r#"{"id":"e","op":"rooms._replay"}"#,
            json!("e"),
            "unknown_op",
        ),
        (
            r#"{"id":"f","op":"rooms.create","data":{"room":5}}"#,
            json!("f"),
            "bad_request",
        ),
        (
            r#"{"id":"g","op":"rooms.create","data":{"rom":"x"}}"#,
            json!("g"),
            "bad_request",
        ),
        (
            r#"{"id":"h","op":"rooms.publish","data":{"room":"x"}}"#,
            json!("h"),
            "bad_request",
        ),
        (
            r#"{"id":"i","op":"rooms.publish","data":{"room":"x","data":1e999}}"#,
            json!("i"),
            "bad_request",
        ),
    ];
    for (frame, id, code) in cases {
        c.send_text(frame).await;
        let r = c.any_reply().await;
        assert_eq!(
            (r["id"].clone(), r["ok"].clone(), r["error"]["code"].clone()),
            (id, json!(false), json!(code)),
            "{frame}"
        );
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // Still usable.
    c.ok("rooms.create", json!({"room": "after-errors"})).await;
}

#[tokio::test]
async fn crafted_ids_cannot_reach_other_subjects() {
    let (stack, cfg, _w, gw) = setup(|_| {}).await;
    let spy = stack.nats_client().await;
    // Room pushes are addressed to each gateway holding members.
    let mut sub = spy.subscribe("sb.gw.*.r.>").await.unwrap();
    spy.flush().await.unwrap();
    let mut c = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "u"))
        .await
        .unwrap();
    let long = "x".repeat(200);
    for bad in [
        "a.b",
        "*",
        ">",
        "a b",
        "demo.x",
        "x:y",
        "{x}",
        "",
        long.as_str(),
    ] {
        for op in [
            "rooms.create",
            "rooms.join",
            "rooms.publish",
            "rooms.history",
            "rooms.info",
            "rooms.leave",
        ] {
            let data = if op == "rooms.publish" {
                json!({"room": bad, "data": 1})
            } else {
                json!({"room": bad})
            };
            let code = c.err(op, data).await;
            assert_eq!(code, "invalid_id", "{op} {bad:?}");
        }
    }
    // A legitimate publish goes to exactly this app's room subject.
    c.ok("rooms.create", json!({"room": "ok"})).await;
    c.ok("rooms.join", json!({"room": "ok"})).await;
    c.ok("rooms.publish", json!({"room": "ok", "data": 1}))
        .await;
    let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    let gw = c.welcome["conn"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .0
        .to_owned();
    let room_subject = format!("sb.gw.{gw}.r.demo.ok");
    assert_eq!(msg.subject.as_str(), room_subject, "member_joined first");
    let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.subject.as_str(), room_subject);
}

#[tokio::test]
async fn apps_are_isolated_even_with_the_same_room_id() {
    let (_s, cfg, _w, gw) = setup(|_| {}).await;
    let mut a1 = Client::connect(&gw.ws_url(), &token(&cfg, "app1", "alice"))
        .await
        .unwrap();
    let mut a2 = Client::connect(&gw.ws_url(), &token(&cfg, "app2", "mallory"))
        .await
        .unwrap();
    a1.ok("rooms.create", json!({"room": "shared-name"})).await;
    a1.ok("rooms.join", json!({"room": "shared-name"})).await;
    // app2 does not see app1's room...
    assert_eq!(
        a2.err("rooms.join", json!({"room": "shared-name"})).await,
        "not_found"
    );
    assert_eq!(
        a2.err("rooms.history", json!({"room": "shared-name"}))
            .await,
        "not_found"
    );
    // ...and its own room of the same name is a different room.
    a2.ok("rooms.create", json!({"room": "shared-name"})).await;
    a2.ok("rooms.join", json!({"room": "shared-name"})).await;
    a1.ok(
        "rooms.publish",
        json!({"room": "shared-name", "data": "for app1"}),
    )
    .await;
    a2.ok(
        "rooms.publish",
        json!({"room": "shared-name", "data": "for app2", "echo": true}),
    )
    .await;
    let m = a2.event("message").await;
    assert_eq!(
        (m["data"].clone(), m["seq"].clone()),
        (json!("for app2"), json!(1))
    );
    let h = a2.ok("rooms.history", json!({"room": "shared-name"})).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    let info = a1.ok("rooms.info", json!({"room": "shared-name"})).await;
    assert_eq!(info["members"], 1);
}

#[tokio::test]
async fn oversize_and_binary_messages_close_only_that_connection() {
    let (_s, cfg, _w, gw) = setup(|c| c.gateway.max_message_bytes = 1024).await;
    let mut bystander = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "b"))
        .await
        .unwrap();

    let mut big = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "big"))
        .await
        .unwrap();
    big.send_text(&format!(
        r#"{{"id":1,"op":"rooms.create","data":{{"x":"{}"}}}}"#,
        "a".repeat(2000)
    ))
    .await;
    assert_eq!(big.closed().await.map(|c| c.0), Some(1009));

    // A message split into fragments is limited as a whole.
    let (mut frag, _) = connect_raw(
        &gw.ws_url(),
        &[(
            "Authorization",
            &format!("Bearer {}", token(&cfg, "demo", "f")),
        )],
    )
    .await
    .unwrap();
    use tokio_tungstenite::tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };
    let part = vec![b'a'; 600];
    let mut first = Frame::message(part.clone(), OpCode::Data(Data::Text), false);
    first.header_mut().is_final = false;
    frag.send(Message::Frame(first)).await.unwrap();
    frag.send(Message::Frame(Frame::message(
        part,
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(closed(&mut frag).await.map(|c| c.0), Some(1009));

    let mut bin = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "bin"))
        .await
        .unwrap();
    bin.send(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(bin.closed().await.map(|c| c.0), Some(1003));

    let (mut utf, _) = connect_raw(
        &gw.ws_url(),
        &[(
            "Authorization",
            &format!("Bearer {}", token(&cfg, "demo", "utf")),
        )],
    )
    .await
    .unwrap();
    utf.send(Message::Frame(Frame::message(
        vec![0xff, 0xfe],
        OpCode::Data(Data::Text),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(closed(&mut utf).await.map(|c| c.0), Some(1007));

    bystander
        .ok("rooms.create", json!({"room": "still-fine"}))
        .await;
}

#[tokio::test]
async fn a_slow_reader_is_cut_off_with_1008_and_the_room_carries_on() {
    let (_s, cfg, _w, gw) = setup(|c| {
        c.gateway.outbound_queue = 16;
        c.gateway.write_timeout_ms = 2_000;
    })
    .await;
    let url = gw.ws_url();
    let mut publisher = Client::connect(&url, &token(&cfg, "demo", "pub"))
        .await
        .unwrap();
    let mut reader = Client::connect(&url, &token(&cfg, "demo", "reader"))
        .await
        .unwrap();
    publisher
        .ok("rooms.create", json!({"room": "firehose"}))
        .await;
    publisher
        .ok("rooms.join", json!({"room": "firehose"}))
        .await;
    reader.ok("rooms.join", json!({"room": "firehose"})).await;

    // The slow client joins, then never reads again.
    let mut slow = Client::connect(&url, &token(&cfg, "demo", "slow"))
        .await
        .unwrap();
    slow.ok("rooms.join", json!({"room": "firehose"})).await;
    publisher.event("member_joined").await;
    publisher.event("member_joined").await;

    let payload = "x".repeat(30_000);
    let mut sent = 0u64;
    let left = loop {
        sent += 1;
        assert!(sent < 3_000, "the slow reader was never disconnected");
        publisher
            .ok(
                "rooms.publish",
                json!({"room": "firehose", "data": payload}),
            )
            .await;
        // Keep the healthy reader drained.
        assert_eq!(reader.event("message").await["seq"], json!(sent));
        if let Some(ev) = publisher_left(&mut publisher).await {
            break ev;
        }
    };
    assert_eq!(left["user"], "slow");
    // Reading again, the slow client finds whole frames (the one the gateway
    // was writing is completed) and then a proper close frame, not a dropped
    // connection.
    let (code, reason) = slow.closed().await.expect("a close frame");
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("slow consumer"), "{reason}");
    // The healthy reader still gets everything.
    publisher
        .ok(
            "rooms.publish",
            json!({"room": "firehose", "data": "after"}),
        )
        .await;
    assert_eq!(reader.event("message").await["data"], "after");
}

/// A `member_left` already delivered to the publisher, without waiting.
async fn publisher_left(c: &mut Client) -> Option<serde_json::Value> {
    // A cheap request flushes everything queued before its reply.
    c.ok("rooms.info", json!({"room": "firehose"})).await;
    c.take_event("member_left")
}

#[tokio::test]
async fn an_idle_client_is_closed_with_1001() {
    let (_s, cfg, _w, gw) = setup(|c| {
        c.gateway.ping_interval_ms = 200;
        c.gateway.idle_timeout_ms = 1_000;
    })
    .await;
    let auth = format!("Bearer {}", token(&cfg, "demo", "idle"));
    // A client that reads raw bytes never answers pings, so it goes idle.
    let (mut ws, _) = connect_raw(&gw.ws_url(), &[("Authorization", &auth)])
        .await
        .unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        ws.get_mut().read_to_end(&mut bytes),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        last_close_code(&bytes),
        Some(1001),
        "server frames: {bytes:?}"
    );

    // A client whose WebSocket answers pings stays connected across many
    // idle windows.
    let mut live = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "live"))
        .await
        .unwrap();
    let watch = tokio::time::timeout(Duration::from_millis(3_000), async {
        while let Some(m) = live.ws().next().await {
            if let Ok(Message::Close(c)) = m {
                return c;
            }
        }
        None
    })
    .await;
    assert!(watch.is_err(), "live client was closed: {watch:?}");
    live.ok("rooms.create", json!({})).await;
}

/// Walks unmasked server frames and returns the last close frame's code.
fn last_close_code(mut b: &[u8]) -> Option<u16> {
    let mut code = None;
    while b.len() >= 2 {
        let op = b[0] & 0x0f;
        let (len, head) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 => return code,
            n => (usize::from(n), 2),
        };
        if b.len() < head + len {
            break;
        }
        if op == 0x8 && len >= 2 {
            code = Some(u16::from_be_bytes([b[head], b[head + 1]]));
        }
        b = &b[head + len..];
    }
    code
}

#[tokio::test]
async fn a_stalled_handshake_is_dropped() {
    let (_s, _cfg, _w, gw) = setup(|c| c.gateway.handshake_timeout_ms = 300).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The request never completes: the gateway must hang up by itself.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open");
}
