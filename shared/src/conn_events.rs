//! Connection lifecycle events on `sb.evt.conn`, typed. Gateways announce
//! every socket's connect and disconnect and their own heartbeat; the presence
//! reaper announces the disconnects of a dead gateway's sockets. Every event
//! is built with [`ConnLifecycle::encode`] and read with
//! [`ConnLifecycle::decode`], so ids are validated once, here.

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
    /// A gateway is alive and holds `connections` sockets.
    Heartbeat {
        gw: GatewayId,
        connections: u64,
    },
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
        let (kind, gw, conn, who, count) = match self {
            Self::Connected(c) => (Kind::Connected, &c.gw, c.conn, Some(c), 0),
            Self::Disconnected(c) => (Kind::Disconnected, &c.gw, c.conn, Some(c), 0),
            Self::Heartbeat { gw, connections } => (Kind::Heartbeat, gw, 0, None, *connections),
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
            count,
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
                connections: ev.count,
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
                connections: 3,
            },
        ] {
            assert_eq!(
                ConnLifecycle::decode(&ev.encode()).unwrap_or_else(|e| panic!("{e}")),
                ev
            );
        }
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
