//! Error codes of the client protocol. The string forms are a stable contract
//! (docs/protocol.md); add codes, never rename them.

use std::fmt;

/// A machine-readable error code sent to clients in error replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame is not valid JSON or lacks a required field.
    BadRequest,
    /// No such service or operation.
    UnknownOp,
    /// An id (room, user, request) is malformed.
    InvalidId,
    /// The token does not allow this.
    Forbidden,
    /// The target (room, ...) does not exist.
    NotFound,
    /// The target exists already.
    AlreadyExists,
    /// The room has reached its member limit.
    RoomFull,
    /// The connection is not a member of the room.
    NotMember,
    /// Too many requests in flight on this connection.
    TooManyRequests,
    /// No worker answered in time.
    Timeout,
    /// No worker for that service is running.
    ServiceUnavailable,
    /// The user is already in a call.
    Busy,
    /// The operation does not fit the target's current state (e.g. answering
    /// a call that has ended).
    Conflict,
    /// A limit on request rates was hit; the error says when to retry
    /// (`retry_after_ms`).
    RateLimited,
    /// A dependency (the bus, the store) is down: try again shortly.
    Unavailable,
    /// A quota on what the cluster holds was reached; the error names it
    /// (`limit`) and its value (`value`). See `crate::quotas`.
    LimitExceeded,
    /// Something failed on our side.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 17] = [
        Self::BadRequest,
        Self::UnknownOp,
        Self::InvalidId,
        Self::Forbidden,
        Self::NotFound,
        Self::AlreadyExists,
        Self::RoomFull,
        Self::NotMember,
        Self::TooManyRequests,
        Self::Timeout,
        Self::ServiceUnavailable,
        Self::Busy,
        Self::Conflict,
        Self::RateLimited,
        Self::Unavailable,
        Self::LimitExceeded,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnknownOp => "unknown_op",
            Self::InvalidId => "invalid_id",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::RoomFull => "room_full",
            Self::NotMember => "not_member",
            Self::TooManyRequests => "too_many_requests",
            Self::Timeout => "timeout",
            Self::ServiceUnavailable => "service_unavailable",
            Self::Busy => "busy",
            Self::Conflict => "conflict",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::LimitExceeded => "limit_exceeded",
            Self::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The quota a `limit_exceeded` error names: sent to clients as the
/// error's `limit` and `value` fields, beside `code` and `message` (as
/// `rate_limited` carries `retry_after_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// The quota's name (`crate::quotas::Quota::name`).
    pub limit: String,
    /// Its value for this app.
    pub value: u64,
}

impl Exceeded {
    /// `{"limit": .., "value": ..}`: the fields added to the error object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"limit": self.limit, "value": self.value})
    }

    /// Reads what [`Exceeded::to_json`] wrote.
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        Some(Self {
            limit: v.get("limit")?.as_str()?.to_owned(),
            value: v.get("value")?.as_u64()?,
        })
    }
}

/// An error to report to a client: a code and a human message (and, for
/// `limit_exceeded`, the quota).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ClientError {
    pub code: ErrorCode,
    pub message: String,
    /// Set exactly when `code` is `limit_exceeded`.
    pub exceeded: Option<Exceeded>,
}

impl ClientError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            exceeded: None,
        }
    }

    /// `limit_exceeded` for quota `q`, whose value is `value`.
    pub fn limit_exceeded(q: crate::quotas::Quota, value: u64, what: &str) -> Self {
        Self {
            code: ErrorCode::LimitExceeded,
            message: format!("{what}: the {} quota is {value}", q.name()),
            exceeded: Some(Exceeded {
                limit: q.name().to_owned(),
                value,
            }),
        }
    }

    /// The error object clients see: `{"code", "message"}` plus the
    /// quota's fields for `limit_exceeded`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"code": self.code.as_str(), "message": self.message});
        if let (Some(e), Some(obj)) = (&self.exceeded, v.as_object_mut()) {
            obj.insert("limit".into(), e.limit.clone().into());
            obj.insert("value".into(), e.value.into());
        }
        v
    }
}

impl From<crate::ids::IdError> for ClientError {
    fn from(e: crate::ids::IdError) -> Self {
        Self::new(ErrorCode::InvalidId, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            assert!(seen.insert(c.as_str()));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }

    #[test]
    fn limit_exceeded_names_its_quota() {
        let e = ClientError::limit_exceeded(
            crate::quotas::Quota::RoomsPerConnection,
            20,
            "too many rooms",
        );
        assert_eq!(
            e.to_json(),
            serde_json::json!({"code": "limit_exceeded", "message": e.message,
                "limit": "rooms_per_connection", "value": 20})
        );
        let x = e.exceeded.clone().unwrap_or_else(|| panic!("no quota"));
        assert_eq!(Exceeded::from_json(&x.to_json()), Some(x));
        assert_eq!(
            ClientError::new(ErrorCode::NotFound, "x").to_json(),
            serde_json::json!({"code": "not_found", "message": "x"})
        );
    }
}
