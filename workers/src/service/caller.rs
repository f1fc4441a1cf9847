//! Who is asking, and what they sent: the parts of a request envelope every
//! handler needs.

use switchboard_proto::bus::{ConnRef, Request};
use switchboard_shared::error::{ClientError, ErrorCode};
use switchboard_shared::ids::{GatewayId, TenantId, UserId};
use switchboard_shared::members::ConnMember;

use crate::error::ServiceError;

/// Who is asking, from the envelope the gateway built (tenant and user come
/// from the verified token, never from client data).
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantId,
    pub user: UserId,
    pub gw: GatewayId,
    pub conn: u64,
    /// Room grants from the token.
    pub grants: Vec<String>,
}

impl Caller {
    pub fn from_request(req: &Request) -> Result<Self, ServiceError> {
        let bad = |what: &str| {
            ServiceError::client(ErrorCode::Internal, format!("malformed envelope: {what}"))
        };
        let conn = req.conn.as_ref().ok_or_else(|| bad("conn"))?;
        Ok(Self {
            tenant: TenantId::parse(&req.tenant).map_err(|_| bad("tenant"))?,
            user: UserId::parse(&req.user).map_err(|_| bad("user"))?,
            gw: GatewayId::parse(&conn.gateway).map_err(|_| bad("gateway"))?,
            conn: conn.conn,
            grants: req.grants.clone(),
        })
    }

    /// The caller's connection.
    pub fn conn_member(&self) -> ConnMember {
        ConnMember::new(&self.gw, self.conn)
    }

    /// The caller's connection as stored in Redis (`<gateway>:<conn>`).
    pub fn member(&self) -> String {
        self.conn_member().to_string()
    }

    pub fn origin(&self) -> ConnRef {
        ConnRef {
            gateway: self.gw.to_string(),
            conn: self.conn,
        }
    }
}

/// Parses a request's JSON payload into `T`, with a client-facing error.
/// Absent data (`null`) reads as `{}`, so ops whose fields are all optional
/// need no `data`.
pub fn parse<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, ServiceError> {
    let payload: &[u8] = match req.payload.as_ref() {
        b"" | b"null" => b"{}",
        p => p,
    };
    serde_json::from_slice(payload).map_err(|e| {
        ServiceError::Client(ClientError::new(
            ErrorCode::BadRequest,
            format!("invalid data: {e}"),
        ))
    })
}
