//! Connection lifecycle events on `sb.evt.conn`, typed. Gateways announce
//! every socket's connect and disconnect and their own heartbeat; the presence
//! reaper announces the disconnects of a dead gateway's sockets. Every event
//! is built with [`ConnLifecycle::encode`] and read with
//! [`ConnLifecycle::decode`], so ids are validated once, here.
//!
//! A heartbeat carries the count and a digest of the connections the gateway
//! has announced and not withdrawn ([`Digest`]); the presence service keeps
//! the same digest of what it has recorded, so an announcement lost in an
//! outage shows up as a difference and can be repaired.

use bytes::Bytes;
use switchboard_proto::bus::{ConnEvent, ConnRef, conn_event::Kind};

use crate::bus::{self, BusError};
use crate::ids::{GatewayId, TenantId, UserId};
use crate::now_ms;

/// One socket of one user of one app, on one gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub gw: GatewayId,
    pub conn: u64,
    pub tenant: TenantId,
    pub user: UserId,
}

/// A connection lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnLifecycle {
    Connected(ConnInfo),
    Disconnected(ConnInfo),
    /// A gateway is alive and holds the connections `digest` describes.
    Heartbeat {
        gw: GatewayId,
        digest: Digest,
    },
}

/// The count of a set of connection ids and the sum of their
/// [`digest_term`]s. Adding and removing commute, so a gateway and a worker
/// that saw the same announcements agree whatever the order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest {
    pub count: u64,
    pub sum: u64,
}

impl Digest {
    pub fn add(&mut self, conn: u64) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(digest_term(conn));
    }

    pub fn remove(&mut self, conn: u64) {
        self.count = self.count.saturating_sub(1);
        self.sum = self.sum.wrapping_sub(digest_term(conn));
    }
}

/// A connection id's term in a [`Digest`]: 32 well-mixed bits (the
/// splitmix64 finaliser), so that sums of up to 2^31 terms stay exact in a
/// Redis integer.
pub fn digest_term(conn: u64) -> u64 {
    let mut z = conn.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) >> 32
}

/// Why a message on `sb.evt.conn` was not understood.
#[derive(Debug, thiserror::Error)]
pub enum ConnEventError {
    #[error(transparent)]
    Decode(#[from] BusError),
    #[error("connection event without a valid {0}")]
    Missing(&'static str),
}

impl ConnLifecycle {
    /// The protobuf envelope, stamped with the current time.
    pub fn encode(&self) -> Bytes {
        let (kind, gw, conn, who, digest) = match self {
            Self::Connected(c) => (Kind::Connected, &c.gw, c.conn, Some(c), Digest::default()),
            Self::Disconnected(c) => (
                Kind::Disconnected,
                &c.gw,
                c.conn,
                Some(c),
                Digest::default(),
            ),
            Self::Heartbeat { gw, digest } => (Kind::Heartbeat, gw, 0, None, *digest),
        };
        bus::encode(&ConnEvent {
            kind: kind as i32,
            conn: Some(ConnRef {
                gateway: gw.to_string(),
                conn,
            }),
            tenant: who.map(|c| c.tenant.to_string()).unwrap_or_default(),
            user: who.map(|c| c.user.to_string()).unwrap_or_default(),
            at_ms: now_ms(),
            count: digest.count,
            digest: digest.sum,
        })
    }

    /// Parses and validates an event received on `sb.evt.conn`.
    pub fn decode(payload: &[u8]) -> Result<Self, ConnEventError> {
        let ev: ConnEvent = bus::decode(payload)?;
        let conn = ev.conn.as_ref().ok_or(ConnEventError::Missing("conn"))?;
        let gw = GatewayId::parse(&conn.gateway).map_err(|_| ConnEventError::Missing("gateway"))?;
        let info = || -> Result<ConnInfo, ConnEventError> {
            Ok(ConnInfo {
                gw: gw.clone(),
                conn: conn.conn,
                tenant: TenantId::parse(&ev.tenant)
                    .map_err(|_| ConnEventError::Missing("tenant"))?,
                user: UserId::parse(&ev.user).map_err(|_| ConnEventError::Missing("user"))?,
            })
        };
        match ev.kind() {
            Kind::Connected => Ok(Self::Connected(info()?)),
            Kind::Disconnected => Ok(Self::Disconnected(info()?)),
            Kind::Heartbeat => Ok(Self::Heartbeat {
                gw: gw.clone(),
                digest: Digest {
                    count: ev.count,
                    sum: ev.digest,
                },
            }),
            Kind::Unspecified => Err(ConnEventError::Missing("kind")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ConnInfo {
        ConnInfo {
            gw: GatewayId::parse("gw-1").unwrap_or_else(|e| panic!("{e}")),
            conn: 7,
            tenant: TenantId::parse("app").unwrap_or_else(|e| panic!("{e}")),
            user: UserId::parse("alice").unwrap_or_else(|e| panic!("{e}")),
        }
    }

    #[test]
    fn events_round_trip() {
        for ev in [
            ConnLifecycle::Connected(info()),
            ConnLifecycle::Disconnected(info()),
            ConnLifecycle::Heartbeat {
                gw: info().gw,
                digest: Digest { count: 3, sum: 99 },
            },
        ] {
            assert_eq!(
                ConnLifecycle::decode(&ev.encode()).unwrap_or_else(|e| panic!("{e}")),
                ev
            );
        }
    }

    #[test]
    fn digests_agree_whatever_the_order() {
        let mut a = Digest::default();
        let mut b = Digest::default();
        for c in [1, 2, 3, 4] {
            a.add(c);
        }
        a.remove(2);
        for c in [4, 1, 3] {
            b.add(c);
        }
        assert_eq!(a, b);
        // Same count, another member: another digest.
        let mut c = Digest::default();
        for id in [4, 1, 5] {
            c.add(id);
        }
        assert_ne!(a, c);
        assert!((0..10_000).all(|i| digest_term(i) < 1 << 32));
    }

    #[test]
    fn hostile_events_are_refused() {
        let bad = |tenant: &str, user: &str, gw: &str| {
            bus::encode(&ConnEvent {
                kind: Kind::Connected as i32,
                conn: Some(ConnRef {
                    gateway: gw.into(),
                    conn: 1,
                }),
                tenant: tenant.into(),
                user: user.into(),
                ..ConnEvent::default()
            })
        };
        assert!(ConnLifecycle::decode(&bad("a.b", "u", "gw")).is_err());
        assert!(ConnLifecycle::decode(&bad("a", "", "gw")).is_err());
        assert!(ConnLifecycle::decode(&bad("a", "u", "g>")).is_err());
        assert!(ConnLifecycle::decode(b"\xff\xff garbage").is_err());
        assert!(ConnLifecycle::decode(&bus::encode(&ConnEvent::default())).is_err());
    }
}
