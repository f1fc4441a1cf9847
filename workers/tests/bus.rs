//! The rooms worker on the bus, without a gateway: garbage envelopes get a
//! typed error reply (or are dropped, for events) and the worker carries on.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use prost::Message;
use switchboard_proto::bus::{ConnRef, ReplayBatch, ReplayRequest, Reply, Request};
use switchboard_test_harness::{Stack, Workers};

async fn ask(nats: &async_nats::Client, subject: &str, payload: Vec<u8>) -> Reply {
    let msg = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        nats.request(subject.to_owned(), payload.into()),
    )
    .await
    .unwrap()
    .unwrap();
    Reply::decode(msg.payload).unwrap()
}

fn request(op: &str, payload: &str) -> Vec<u8> {
    Request {
        conn: Some(ConnRef {
            gateway: "gwtest".into(),
            conn: 1,
        }),
        tenant: "demo".into(),
        user: "u".into(),
        op: op.into(),
        payload: payload.as_bytes().to_vec().into(),
        ..Request::default()
    }
    .encode_to_vec()
}

#[tokio::test]
async fn garbage_on_the_bus_gets_typed_errors_and_the_worker_carries_on() {
    let stack = Stack::start();
    let _w = Workers::start(stack.config(), &["rooms"]).await;
    let nats = stack.nats_client().await;

    let r = ask(
        &nats,
        "sb.svc.rooms.create",
        b"\xff\xff not protobuf".to_vec(),
    )
    .await;
    assert!(!r.ok);
    assert_eq!(r.error.unwrap().code, "bad_request");

    let r = ask(&nats, "sb.svc.rooms.create", request("create", "{not json")).await;
    assert_eq!(r.error.unwrap().code, "bad_request");

    let r = ask(
        &nats,
        "sb.svc.rooms.frobnicate",
        request("frobnicate", "{}"),
    )
    .await;
    assert_eq!(r.error.unwrap().code, "unknown_op");

    // An envelope with a tenant that could address other keys is refused.
    let mut bad = Request::decode(request("create", "{}").as_slice()).unwrap();
    bad.tenant = "demo:other".into();
    let r = ask(&nats, "sb.svc.rooms.create", bad.encode_to_vec()).await;
    assert_eq!(r.error.unwrap().code, "internal");

    // Garbage connection events are dropped.
    nats.publish("sb.evt.conn", "junk".into()).await.unwrap();

    // Still serving.
    let r = ask(
        &nats,
        "sb.svc.rooms.create",
        request("create", r#"{"room":"fine"}"#),
    )
    .await;
    assert!(r.ok, "{r:?}");
    let replay = ReplayRequest {
        tenant: "demo".into(),
        key: "fine".into(),
        after_seq: 0,
        until_seq: 0,
    };
    let r = ask(&nats, "sb.svc.rooms._replay", replay.encode_to_vec()).await;
    let batch = ReplayBatch::decode(r.data).unwrap();
    assert_eq!(
        (
            batch.head_seq,
            batch.first_seq,
            batch.items.len(),
            batch.gone
        ),
        (0, 1, 0, false)
    );
}
