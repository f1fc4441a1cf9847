//! Fuzz target: token verification (`Authenticator::verify`) with a fixed
//! configuration: HS256 with the development secret, `auth.audience =
//! "switchboard"`, `auth.issuer = "https://id.example"`.
//!
//! The first input byte picks how the rest becomes a token:
//! - `0`: the rest is the token text, verified as is (a forged signature
//!   can never pass);
//! - `1`: the rest is the claims JSON, put under an HS256 header and signed
//!   with the right secret, so the claim checks themselves get fuzzed;
//! - `2`: the rest is `<header JSON>\n<claims JSON>`, signed with the right
//!   secret, so header parsing and algorithm confusion get fuzzed too.
//!
//! Checks: no panic; an accepted token carries every required claim with an
//! accepted value — `exp` in the future (within leeway), `aud` naming
//! "switchboard", `iss` equal to the issuer, `sub` and `app` equal to the
//! identity, every grant a room id or `prefix*` — and its header says HS256.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchboard_shared::auth::{Authenticator, check_grant};
use switchboard_shared::config::{AuthConfig, DEV_SECRET};

const AUDIENCE: &str = "switchboard";
const ISSUER: &str = "https://id.example";

static AUTH: LazyLock<(Authenticator, u64)> = LazyLock::new(|| {
    let cfg = AuthConfig {
        audience: Some(AUDIENCE.into()),
        issuer: Some(ISSUER.into()),
        ..AuthConfig::default()
    };
    let leeway = cfg.leeway_secs;
    (
        Authenticator::from_config(&cfg).expect("fixed config is valid"),
        leeway,
    )
});

fn signed(header: &[u8], claims: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = EncodingKey::from_secret(DEV_SECRET.as_bytes());
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
        .expect("HMAC signing cannot fail");
    format!("{message}.{sig}")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = match mode % 3 {
        0 => match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        },
        1 => signed(br#"{"alg":"HS256","typ":"JWT"}"#, rest),
        _ => {
            let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let (header, claims) = rest.split_at(split);
            signed(header, claims.get(1..).unwrap_or_default())
        }
    };
    let (auth, leeway) = &*AUTH;
    let Ok(identity) = auth.verify(&token) else {
        return;
    };

    let header = jsonwebtoken::decode_header(&token).expect("accepted token has a header");
    assert_eq!(header.alg, Algorithm::HS256);
    let claims: Value =
        jsonwebtoken::dangerous::insecure_decode_claims(&token).expect("accepted token has claims");
    assert_eq!(claims["sub"].as_str(), Some(identity.user.as_str()));
    assert_eq!(claims["app"].as_str(), Some(identity.tenant.as_str()));
    match &claims["aud"] {
        Value::String(a) => assert_eq!(a, AUDIENCE),
        Value::Array(list) => assert!(list.iter().any(|a| a == AUDIENCE), "aud {list:?}"),
        other => panic!("accepted aud {other:?}"),
    }
    assert_eq!(claims["iss"].as_str(), Some(ISSUER));
    let exp = claims["exp"].as_f64().expect("accepted exp is a number");
    assert!(
        exp + (*leeway as f64) + 1.0 >= now() as f64,
        "expired {exp}"
    );
    assert!(
        identity.expires_at.abs_diff(exp.round() as u64) <= 1,
        "{} vs {exp}",
        identity.expires_at
    );
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64) {
        assert!(nbf <= (now() + leeway + 1) as f64, "not yet valid {nbf}");
    }
    for g in &identity.grants {
        assert!(check_grant(g).is_ok(), "grant {g:?}");
    }
});
