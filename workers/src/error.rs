//! The one error type of request handlers. A handler returns
//! `Result<_, ServiceError>` and uses `?` on Redis, NATS and id errors; the
//! runner turns the error into the client's reply, logging every failure
//! that is ours (not the client's) with its service and op.

use switchboard_shared::error::{ClientError, ErrorCode};
use switchboard_shared::ids::IdError;

/// Why a request (or a piece of background work) failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A refusal the client sees as it is: bad input, not found, forbidden…
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("redis unreachable: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("redis: {0}")]
    Redis(#[from] deadpool_redis::redis::RedisError),
    /// A Lua script answered something its typed result does not know.
    #[error("script {script} answered {detail}")]
    Script {
        script: &'static str,
        detail: String,
    },
    #[error("NATS publish: {0}")]
    Publish(#[from] async_nats::PublishError),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Another service, asked over NATS, did not help.
    #[error("{service} service: {detail}")]
    Upstream {
        service: &'static str,
        detail: String,
    },
}

/// What kind of failure a [`ServiceError`] is, for callers to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client's request was refused with this code.
    Client(ErrorCode),
    /// A dependency (Redis, NATS, another service) could not be reached.
    Unavailable,
    /// Something on our side is wrong.
    Internal,
}

impl ServiceError {
    /// A client-facing refusal.
    pub fn client(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Client(ClientError::new(code, message))
    }

    /// `limit_exceeded`: quota `q`, whose value is `value`, is reached.
    pub fn limit(q: switchboard_shared::quotas::Quota, value: u64, what: &str) -> Self {
        Self::Client(ClientError::limit_exceeded(q, value, what))
    }

    /// `bad_request` with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::client(ErrorCode::BadRequest, message)
    }

    /// A script result outside its contract.
    pub fn script(script: &'static str, detail: impl std::fmt::Debug) -> Self {
        Self::Script {
            script,
            detail: format!("{detail:?}"),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Client(e) => ErrorKind::Client(e.code),
            Self::Pool(_) => ErrorKind::Unavailable,
            Self::Redis(e)
                if e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_io_error()
                    || e.is_timeout()
                    || redis_says_retry(e) =>
            {
                ErrorKind::Unavailable
            }
            Self::Upstream { .. } => ErrorKind::Unavailable,
            Self::Redis(_) | Self::Script { .. } | Self::Publish(_) | Self::Json(_) => {
                ErrorKind::Internal
            }
        }
    }

    /// What the client is told. Failures that are ours carry no detail; an
    /// outage of a dependency is `unavailable`, so the client retries.
    pub fn to_client(&self) -> ClientError {
        match (self, self.kind()) {
            (Self::Client(e), _) => e.clone(),
            (_, ErrorKind::Unavailable) => ClientError::new(
                ErrorCode::Unavailable,
                "a backing service is unavailable; retry shortly",
            ),
            _ => ClientError::new(ErrorCode::Internal, "internal error"),
        }
    }
}

impl From<IdError> for ServiceError {
    fn from(e: IdError) -> Self {
        Self::Client(e.into())
    }
}

/// For work nobody waits on (connection events, sweepers, fan-out): a failure
/// is logged with what was being done, never dropped silently.
pub trait LogFailure {
    fn log_failure(self, what: &str);
}

impl<T, E: Into<ServiceError>> LogFailure for Result<T, E> {
    fn log_failure(self, what: &str) {
        if let Err(e) = self {
            let e: ServiceError = e.into();
            tracing::warn!(error = %e, kind = ?e.kind(), "{what} failed");
        }
    }
}

/// Redis answers, but asks to be tried again later: it is still loading its
/// data after a restart (`LOADING`), a failover is under way (`MASTERDOWN`,
/// `TRYAGAIN`) or the cluster is down (`CLUSTERDOWN`). For a client that is
/// an outage, not a failure of ours.
fn redis_says_retry(e: &deadpool_redis::redis::RedisError) -> bool {
    use deadpool_redis::redis::{ErrorKind as Kind, ServerErrorKind as Server};
    matches!(
        e.kind(),
        Kind::Server(
            Server::BusyLoading | Server::TryAgain | Server::MasterDown | Server::ClusterDown
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_tell_client_refusals_from_our_failures() {
        let e = ServiceError::client(ErrorCode::NotFound, "no room r");
        assert_eq!(e.kind(), ErrorKind::Client(ErrorCode::NotFound));
        assert_eq!(e.to_client().message, "no room r");
        let e = ServiceError::script("JOIN", vec![9]);
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert_eq!(e.to_client().code, ErrorCode::Internal);
        assert!(!e.to_client().message.contains("JOIN"), "no detail leaks");
        let io = deadpool_redis::redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        let io = ServiceError::from(io);
        assert_eq!(io.kind(), ErrorKind::Unavailable);
        assert_eq!(io.to_client().code, ErrorCode::Unavailable);
        // Redis still loading its data after a restart is an outage too.
        let loading = deadpool_redis::redis::parse_redis_value(b"-LOADING Redis is loading\r\n")
            .and_then(|v| v.extract_error());
        let Err(loading) = loading else {
            panic!("a server error parses as an error")
        };
        assert_eq!(ServiceError::from(loading).kind(), ErrorKind::Unavailable);
        let other = deadpool_redis::redis::parse_redis_value(b"-ERR wrong\r\n")
            .and_then(|v| v.extract_error());
        let Err(other) = other else {
            panic!("a server error parses as an error")
        };
        assert_eq!(ServiceError::from(other).kind(), ErrorKind::Internal);
        let id = switchboard_shared::ids::RoomId::parse("a.b").map_err(ServiceError::from);
        assert!(matches!(
            id.map_err(|e| e.kind()),
            Err(ErrorKind::Client(ErrorCode::InvalidId))
        ));
    }
}
