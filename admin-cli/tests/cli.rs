//! `switchboard-admin` against a real stack: NATS, Redis, a gateway and the
//! admin API in-process; the binary run as a process.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;

use switchboard_shared::Shutdown;
use switchboard_shared::config::Config;
use switchboard_test_harness::stack::token;
use switchboard_test_harness::{Client, Gateway, Stack};

const TOKEN: &str = "cli-admin-token-0123456";
const BIN: &str = env!("CARGO_BIN_EXE_switchboard-admin");

async fn admin(cfg: &Config) -> (SocketAddr, Shutdown, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let nats = switchboard_shared::bus::connect(&cfg.nats, "cli-test")
        .await
        .unwrap();
    let pool = switchboard_shared::redis::connect(&cfg.redis)
        .await
        .unwrap();
    let shutdown = Shutdown::new();
    let serving = switchboard_workers::admin::serve(
        Arc::new(cfg.clone()),
        listener,
        nats,
        pool,
        shutdown.clone(),
    );
    let task = tokio::spawn(async move {
        serving.await.unwrap();
    });
    (addr, shutdown, task)
}

async fn cli(addr: SocketAddr, token: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["--addr", &format!("http://{addr}")])
        .args(args)
        .env("SWITCHBOARD_ADMIN_TOKEN", token)
        .env_remove("SB_CONFIG");
    cmd.output().await.unwrap()
}

#[tokio::test]
async fn the_cli_lists_gateways_as_json_kicks_a_user_and_exits_with_documented_codes() {
    let stack = Stack::start();
    let mut cfg = stack.config();
    cfg.admin.tokens = vec![TOKEN.into()];
    cfg.admin.deadline_ms = 500;
    let gw = Gateway::start(cfg.clone()).await;
    let mut alice = Client::connect(&gw.ws_url(), &token(&cfg, "demo", "alice"))
        .await
        .unwrap();
    let (addr, stop, serving) = admin(&cfg).await;

    let out = cli(addr, TOKEN, &["--json", "gateways"]).await;
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gws = v["gateways"].as_array().unwrap();
    assert_eq!(gws.len(), 1, "{v}");
    assert_eq!(gws[0]["address"], gw.addr.to_string());
    assert_eq!(gws[0]["connections"], 1);

    let out = cli(addr, TOKEN, &["gateways"]).await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("GATEWAY"), "{text}");
    assert!(text.contains("ready"), "{text}");

    let out = cli(
        addr,
        TOKEN,
        &[
            "kick", "--app", "demo", "--user", "alice", "--reason", "bye now",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(alice.closed().await, Some((4000, "bye now".into())));

    let wrong = cli(addr, "not-the-token-at-all-x", &["gateways"]).await;
    assert_eq!(wrong.status.code(), Some(3));
    let bad = cli(addr, TOKEN, &["kick", "--app", "demo", "--user", "a b"]).await;
    assert_eq!(bad.status.code(), Some(2));
    let missing = cli(addr, TOKEN, &["room", "--app", "demo", "--room", "none"]).await;
    assert_eq!(missing.status.code(), Some(4));
    let usage = cli(addr, TOKEN, &["kick", "--app", "demo"]).await;
    assert_eq!(usage.status.code(), Some(2));
    // Once the server has stopped (and closed its listener) the CLI
    // cannot reach it.
    stop.cancel();
    serving.await.unwrap();
    let down = cli(addr, TOKEN, &["gateways"]).await;
    assert_eq!(down.status.code(), Some(5));
}

#[tokio::test]
async fn the_cli_mints_development_tokens_that_the_gateway_accepts() {
    let stack = Stack::start();
    let cfg = stack.config();
    let gw = Gateway::start(cfg.clone()).await;
    let out = std::process::Command::new(BIN)
        .args(["token", "--app", "demo", "--user", "carol"])
        .env_remove("SB_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let t = String::from_utf8(out.stdout).unwrap();
    Client::connect(&gw.ws_url(), t.trim()).await.unwrap();
}
