//! The `switchboard-gateway` binary as an operator meets it: bad config fails
//! at start naming the key, and `token` mints a token the gateway accepts.

// Test helpers panic on failure: that is how a test reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use switchboard_shared::auth::Authenticator;
use switchboard_shared::config::AuthConfig;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard-gateway");

#[test]
fn a_bad_config_value_stops_the_gateway_naming_the_key() {
    let out = Command::new(BIN)
        .env("SB_GATEWAY__MAX_MESSAGE_BYTES", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("gateway.max_message_bytes"), "{err}");

    let out = Command::new(BIN)
        .env("SB_AUTH__ALGORITHMS", "[\"none\"]")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.algorithms"));
}

#[test]
fn the_token_command_mints_a_token_the_gateway_accepts() {
    let out = Command::new(BIN)
        .args([
            "token", "--app", "demo", "--user", "alice", "--room", "couple-*",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let id = Authenticator::from_config(&AuthConfig::default())
        .unwrap()
        .verify(token.trim())
        .unwrap();
    assert_eq!((id.tenant.as_str(), id.user.as_str()), ("demo", "alice"));
    assert_eq!(id.grants, ["couple-*"]);
}
