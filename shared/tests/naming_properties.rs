//! Property tests of the naming invariants: whatever string comes in, it
//! either fails to parse or becomes an id whose subjects and keys have exactly
//! the shape the scheme promises (no `.`, `*`, `>`, whitespace or hash-tag
//! braces injected from it), and parsing what an id displays gives it back.
//! Room grants are held to the same rules. The fuzz targets in `fuzz/` cover
//! the same ground with coverage guidance; these run in every `make test`.

use proptest::prelude::*;
use switchboard_shared::auth::{Identity, check_grant};
use switchboard_shared::ids::{GatewayId, MAX_ID_LEN, RoomId, TenantId, UserId};
use switchboard_shared::keys::{RoomKeys, UserKeys};
use switchboard_shared::members::ConnMember;
use switchboard_shared::subjects::{self, GatewayTarget};

/// Strings of every kind, tilted towards the characters that matter here so
/// that valid ids and near misses both come up often.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_-]{1,64}",
        "[A-Za-z0-9_.*> \t:{}~@é-]{0,70}",
        "[a-z]{0,8}[*]{0,2}[a-z.>]{0,3}",
    ]
}

/// A NATS token carries nothing that changes a subject's shape.
fn clean_token(t: &str) -> bool {
    !t.is_empty()
        && !t.contains(['*', '>'])
        && !t.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Splits `subject` into tokens and checks each is clean.
fn tokens(subject: &str) -> Vec<&str> {
    let parts: Vec<&str> = subject.split('.').collect();
    for t in &parts {
        assert!(clean_token(t), "token {t:?} in {subject:?}");
    }
    parts
}

/// The hash tag of a Redis key: the text between the first `{` and the next `}`.
fn hash_tag(key: &str) -> Option<&str> {
    let start = key.find('{')? + 1;
    let end = start + key[start..].find('}')?;
    Some(&key[start..end])
}

/// Inverse of [`UserId::encoded`], to show the encoding loses nothing.
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

fn token_id_safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn token_ids_parse_exactly_the_safe_strings(s in any_text()) {
        let safe = token_id_safe(&s);
        for parsed in [
            TenantId::parse(&s).map(|i| i.to_string()),
            RoomId::parse(&s).map(|i| i.to_string()),
            GatewayId::parse(&s).map(|i| i.to_string()),
        ] {
            prop_assert_eq!(parsed.is_ok(), safe, "{:?}", s);
            if let Ok(shown) = parsed {
                prop_assert_eq!(&shown, &s);
            }
        }
        if let Ok(room) = RoomId::parse(&s) {
            prop_assert_eq!(RoomId::parse(&room.to_string()), Ok(room.clone()));
            prop_assert_eq!(room.as_str().parse::<RoomId>(), Ok(room));
        }
    }

    #[test]
    fn room_and_tenant_subjects_and_keys_keep_their_shape(t in any_text(), r in any_text()) {
        let (Ok(tenant), Ok(room)) = (TenantId::parse(&t), RoomId::parse(&r)) else {
            return Ok(());
        };
        let (room_subject, tenant_subject) = (subjects::room(&tenant, &room), subjects::tenant(&tenant));
        prop_assert_eq!(tokens(&room_subject), ["sb", "room", &t, &r]);
        prop_assert_eq!(tokens(&tenant_subject), ["sb", "tenant", &t]);
        let tag = format!("room:{t}:{r}");
        for key in RoomKeys::new(&tenant, &room).all() {
            prop_assert_eq!(hash_tag(key), Some(tag.as_str()));
            prop_assert_eq!(key.matches(['{', '}']).count(), 2, "{}", key);
        }
    }

    #[test]
    fn user_ids_encode_to_one_clean_token_and_back(u in any_text(), t in "[a-z]{1,8}") {
        let Ok(user) = UserId::parse(&u) else {
            // Refused: empty, too long, or with whitespace/control characters.
            prop_assert!(
                u.is_empty()
                    || u.len() > switchboard_shared::ids::MAX_USER_LEN
                    || u.chars().any(|c| c.is_whitespace() || c.is_control())
            );
            return Ok(());
        };
        prop_assert_eq!(user.to_string(), u.clone());
        let enc = user.encoded();
        prop_assert!(enc.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_~".contains(&b)), "{}", enc);
        prop_assert_eq!(decode_user(&enc), Some(u.clone()));
        let tenant = TenantId::parse(&t).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let presence = subjects::presence(&tenant, &user);
        prop_assert_eq!(tokens(&presence), ["sb", "presence", t.as_str(), enc.as_str()]);
        let tag = format!("user:{t}:{enc}");
        let k = UserKeys::new(&tenant, &user);
        for key in [&k.presence, &k.presence_conns, &k.rooms, &k.notif_conns,
                    &k.notif_data, &k.notif_order, &k.notif_expiry, &k.notif_unread] {
            prop_assert_eq!(hash_tag(key), Some(tag.as_str()));
        }
    }

    #[test]
    fn different_users_never_share_an_encoding(a in any_text(), b in any_text()) {
        if let (Ok(ua), Ok(ub)) = (UserId::parse(&a), UserId::parse(&b)) {
            prop_assert_eq!(ua.encoded() == ub.encoded(), a == b);
        }
    }

    #[test]
    fn connection_subjects_round_trip(g in any_text(), conn in any::<u64>(), req in any::<u32>(), other in any_text()) {
        let Ok(gw) = GatewayId::parse(&g) else { return Ok(()) };
        let push = subjects::conn(&gw, conn);
        let reply = subjects::conn_reply(&gw, conn, req);
        prop_assert_eq!(tokens(&push).len(), 5);
        prop_assert_eq!(tokens(&reply).len(), 6);
        prop_assert_eq!(subjects::parse_gateway_subject(&gw, &push), Some(GatewayTarget::Push { conn }));
        prop_assert_eq!(
            subjects::parse_gateway_subject(&gw, &reply),
            Some(GatewayTarget::Reply { conn, req })
        );
        let member = ConnMember::new(&gw, conn);
        prop_assert_eq!(member.to_string(), format!("{g}:{conn}"));
        prop_assert_eq!(ConnMember::parse(&member.to_string()), Some(member));
        // Whatever else arrives names a connection of this gateway, or nothing.
        if subjects::parse_gateway_subject(&gw, &other).is_some() {
            prop_assert!(other.starts_with(&format!("sb.gw.{g}.c.")), "{:?}", other);
        }
        match subjects::parse_gateway_subject(&gw, &other) {
            None => {}
            Some(GatewayTarget::Push { conn }) => prop_assert_eq!(
                subjects::parse_gateway_subject(&gw, &subjects::conn(&gw, conn)),
                Some(GatewayTarget::Push { conn })
            ),
            Some(GatewayTarget::Reply { conn, req }) => prop_assert_eq!(
                subjects::parse_gateway_subject(&gw, &subjects::conn_reply(&gw, conn, req)),
                Some(GatewayTarget::Reply { conn, req })
            ),
        }
    }

    #[test]
    fn request_subjects_have_four_clean_tokens(service in any_text(), op in any_text()) {
        if subjects::is_op_name(&service) && subjects::is_op_name(&op) {
            let s = subjects::service_op(&service, &op);
            prop_assert_eq!(tokens(&s), ["sb", "svc", service.as_str(), op.as_str()]);
        }
    }

    #[test]
    fn grants_are_room_ids_or_prefix_patterns(g in any_text(), room in "[a-z0-9-]{1,12}") {
        let ok = check_grant(&g).is_ok();
        let expected = match g.strip_suffix('*') {
            Some(prefix) => prefix.is_empty() || token_id_safe(prefix),
            None => token_id_safe(&g),
        };
        prop_assert_eq!(ok, expected, "{:?}", g);
        if ok {
            prop_assert!(!g.contains(['.', '>']) && !g.chars().any(char::is_whitespace));
            prop_assert!(!g.trim_end_matches('*').contains('*') && !g.ends_with("**"));
            let grants = [g.clone()];
            // A grant opens the room it names and, as a pattern, what starts with its prefix.
            let named = g.trim_end_matches('*');
            if !named.is_empty() {
                prop_assert!(Identity::may_access(&grants, named));
            }
            prop_assert_eq!(
                Identity::may_access(&grants, &room),
                if g.ends_with('*') { room.starts_with(named) } else { room == g }
            );
        }
    }
}
