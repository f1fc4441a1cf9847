//! Fuzz target: the bus envelope decoder (`switchboard_shared::bus::decode`)
//! for every message a gateway or worker takes off NATS — `Request`,
//! `Reply`, `Push`, `ConnEvent`, `ReplayRequest`, `ReplayBatch` — and the
//! checks that turn a decoded envelope into a caller (`Caller::from_request`)
//! or a typed connection event (`ConnLifecycle::decode`).
//!
//! Checks: no panic; whatever decodes re-encodes and decodes to the same
//! message; a caller or connection event built from it has ids that make
//! clean subjects and keys (no wildcard, whitespace or separator injected
//! from envelope text).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use switchboard_proto::bus::{ConnEvent, Push, ReplayBatch, ReplayRequest, Reply, Request};
use switchboard_shared::bus;
use switchboard_shared::conn_events::ConnLifecycle;
use switchboard_shared::ids::{GatewayId, TenantId, UserId};
use switchboard_shared::members::ConnMember;
use switchboard_shared::{keys, subjects};
use switchboard_workers::service::Caller;

/// Decodes `data` as `M`; when it decodes, checks the round trip.
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) -> Option<M> {
    let m: M = bus::decode(data).ok()?;
    let again: M = bus::decode(&bus::encode(&m)).expect("re-encoded message decodes");
    assert_eq!(again, m);
    Some(m)
}

fn clean_subject(s: &str, tokens: usize) {
    assert_eq!(s.split('.').count(), tokens, "{s}");
    assert!(
        s.split('.')
            .all(|t| !t.is_empty() && !t.contains(['*', '>']))
            && !s.chars().any(|c| c.is_whitespace() || c.is_control()),
        "{s}"
    );
}

fn clean_naming(tenant: &TenantId, user: &UserId, gw: &GatewayId, conn: u64) {
    clean_subject(&subjects::presence(tenant, user), 4);
    clean_subject(&subjects::tenant(tenant), 3);
    clean_subject(&subjects::conn(gw, conn), 5);
    let member = ConnMember::new(gw, conn).to_string();
    assert_eq!(member.matches(':').count(), 1, "{member}");
    assert_eq!(ConnMember::parse(&member), Some(ConnMember::new(gw, conn)));
    let key = keys::UserKeys::new(tenant, user).rooms;
    assert_eq!(key.matches(['{', '}']).count(), 2, "{key}");
    assert_eq!(key.matches(':').count(), 4, "{key}");
}

fuzz_target!(|data: &[u8]| {
    // Every type sees every input: a subject carries one type, but nothing
    // stops a stray or hostile publisher from sending another.
    if let Some(req) = round_trip::<Request>(data)
        && let Ok(caller) = Caller::from_request(&req)
    {
        assert_eq!(caller.tenant.as_str(), req.tenant);
        assert_eq!(caller.user.as_str(), req.user);
        clean_naming(&caller.tenant, &caller.user, &caller.gw, caller.conn);
        let origin = caller.origin();
        assert_eq!(
            (origin.gateway.as_str(), origin.conn),
            (caller.gw.as_str(), caller.conn)
        );
    }
    if round_trip::<ConnEvent>(data).is_some() {
        match ConnLifecycle::decode(data) {
            Ok(ConnLifecycle::Connected(c) | ConnLifecycle::Disconnected(c)) => {
                clean_naming(&c.tenant, &c.user, &c.gw, c.conn)
            }
            Ok(ConnLifecycle::Heartbeat { gw, .. }) => clean_subject(&subjects::conn(&gw, 0), 5),
            Err(_) => {}
        }
    }
    round_trip::<Reply>(data);
    round_trip::<Push>(data);
    round_trip::<ReplayRequest>(data);
    round_trip::<ReplayBatch>(data);
});
