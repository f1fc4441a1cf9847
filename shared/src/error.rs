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
    /// Something failed on our side.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 16] = [
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

/// An error to report to a client: a code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ClientError {
    pub code: ErrorCode,
    pub message: String,
}

impl ClientError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
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
}
