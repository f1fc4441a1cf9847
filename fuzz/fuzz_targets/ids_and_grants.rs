//! Fuzz target: id and grant validation (`ids.rs`, `auth::check_grant`) and
//! the subjects and keys built from what passes, plus the gateway's parser of
//! the subjects it receives on its wildcard subscription.
//!
//! Checks, for any string: no panic; a valid tenant/room/gateway id is only
//! `[A-Za-z0-9_-]{1,64}` and re-parses to itself from its display; a user id
//! encodes to one clean subject token that decodes back; subjects have exactly
//! the promised tokens and keys exactly one hash tag; a valid grant is a room
//! id or `prefix*` and matches exactly what it names; a gateway subject that
//! parses names a connection whose own subject parses to the same target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_shared::auth::{Identity, check_grant};
use switchboard_shared::ids::{GatewayId, MAX_ID_LEN, RoomId, TenantId, UserId};
use switchboard_shared::keys::RoomKeys;
use switchboard_shared::subjects::{self, GatewayTarget};

fn safe_token_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn tokens(subject: &str) -> Vec<&str> {
    let parts: Vec<&str> = subject.split('.').collect();
    for t in &parts {
        assert!(
            !t.is_empty()
                && !t.contains(['*', '>'])
                && !t.chars().any(|c| c.is_whitespace() || c.is_control()),
            "token {t:?} of {subject:?}"
        );
    }
    parts
}

fn decode_user(enc: &str) -> Option<String> {
    let Some(hex) = enc.strip_prefix('~') else {
        return Some(enc.to_owned());
    };
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    // The input doubles as a room id probe: "<tenant-or-anything>|<room>".
    let (a, b) = s.split_once('|').unwrap_or((s, "r"));

    let tenant = TenantId::parse(s);
    let room = RoomId::parse(s);
    let gw = GatewayId::parse(s);
    assert_eq!(tenant.is_ok(), safe_token_id(s), "{s:?}");
    assert_eq!(room.is_ok(), safe_token_id(s), "{s:?}");
    assert_eq!(gw.is_ok(), safe_token_id(s), "{s:?}");
    if let Ok(t) = &tenant {
        assert_eq!(TenantId::parse(&t.to_string()).as_ref(), Ok(t));
        assert_eq!(tokens(&subjects::tenant(t)), ["sb", "tenant", s]);
    }
    if let Ok(g) = &gw {
        assert_eq!(GatewayId::parse(&g.to_string()).as_ref(), Ok(g));
        for conn in [0, 1, u64::MAX] {
            let push = subjects::conn(g, conn);
            assert_eq!(tokens(&push).len(), 5);
            assert_eq!(
                subjects::parse_gateway_subject(g, &push),
                Some(GatewayTarget::Push { conn })
            );
            let reply = subjects::conn_reply(g, conn, u32::MAX);
            assert_eq!(
                subjects::parse_gateway_subject(g, &reply),
                Some(GatewayTarget::Reply {
                    conn,
                    req: u32::MAX
                })
            );
        }
    }

    if let (Ok(t), Ok(r)) = (TenantId::parse(a), RoomId::parse(b)) {
        let subject = subjects::room(&t, &r);
        assert_eq!(tokens(&subject), ["sb", "room", a, b]);
        let tag = format!("{{room:{a}:{b}}}");
        for key in RoomKeys::new(&t, &r).all() {
            assert!(key.starts_with(&format!("sb:{tag}:")), "{key}");
            assert_eq!(key.matches(['{', '}']).count(), 2, "{key}");
        }
    }

    if let Ok(user) = UserId::parse(s) {
        assert_eq!(user.as_str(), s);
        let enc = user.encoded();
        assert!(
            enc.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_~".contains(&b)),
            "{enc}"
        );
        assert_eq!(decode_user(&enc).as_deref(), Some(s));
        if let Ok(t) = TenantId::parse("app") {
            assert_eq!(
                tokens(&subjects::presence(&t, &user)),
                ["sb", "presence", "app", &enc]
            );
        }
    } else {
        assert!(
            s.is_empty()
                || s.len() > switchboard_shared::ids::MAX_USER_LEN
                || s.chars().any(|c| c.is_whitespace() || c.is_control()),
            "user {s:?} refused"
        );
    }

    match check_grant(s) {
        Ok(()) => {
            let named = s.strip_suffix('*').unwrap_or(s);
            assert!(named.is_empty() || safe_token_id(named), "grant {s:?}");
            let grants = [s.to_owned()];
            if !named.is_empty() {
                assert!(Identity::may_access(&grants, named));
            }
            assert_eq!(
                Identity::may_access(&grants, b),
                if s.ends_with('*') {
                    b.starts_with(named)
                } else {
                    b == s
                },
                "grant {s:?} room {b:?}"
            );
        }
        Err(_) => {
            let named = s.strip_suffix('*').unwrap_or(s);
            assert!(s != "*" && !safe_token_id(named), "grant {s:?} refused");
        }
    }

    // What the router does with a subject received on `sb.gw.<gw>.>`.
    if let Ok(g) = GatewayId::parse("gw-1") {
        match subjects::parse_gateway_subject(&g, s) {
            None => {}
            Some(target) => {
                assert!(s.starts_with("sb.gw.gw-1.c."), "{s:?}");
                let canonical = match target {
                    GatewayTarget::Push { conn } => subjects::conn(&g, conn),
                    GatewayTarget::Reply { conn, req } => subjects::conn_reply(&g, conn, req),
                };
                assert_eq!(
                    subjects::parse_gateway_subject(&g, &canonical),
                    Some(target)
                );
            }
        }
    }
});
