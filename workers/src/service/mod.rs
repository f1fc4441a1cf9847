//! What every worker service is made of. A service implements [`Service`];
//! the [`runner`] serves it as a NATS queue group. The rest is what handlers
//! share:
//! - [`caller`]: who is asking ([`Caller`], from the gateway's envelope) and
//!   the request's JSON data ([`parse`]);
//! - [`fanout`]: pushes to a room's members, one message per gateway
//!   holding members (used by rooms and presence);
//! - [`push`]: frames to one connection (the `{"event","data"}` builder lives
//!   in `switchboard_shared::frames`);
//! - [`conns`]: the connection-gone marker that lets a `CONNECTED` processed
//!   after its `DISCONNECTED` undo itself.
//!
//! Adding a service: a folder under `workers/src/<name>/` with `mod.rs` (the
//! struct and its `impl Service`), one file per feature, `scripts.rs` for its
//! Lua with a typed result per script; a line in `lib.rs`'s `SERVICES` and
//! `start`.

pub mod caller;
pub mod conns;
pub mod fanout;
pub mod push;
pub mod runner;

use std::future::Future;

use bytes::Bytes;
use switchboard_proto::bus::{Interest, ReplayBatch, ReplayRequest, Request};
use switchboard_shared::conn_events::ConnLifecycle;
use switchboard_shared::error::ErrorCode;

pub use caller::{Caller, parse};

use crate::error::ServiceError;

/// What a successful request produces.
#[derive(Debug, Default)]
pub struct Outcome {
    /// JSON for the client's `data`.
    pub data: Vec<u8>,
    /// Feeds the gateway attaches the connection to, after the reply.
    pub attach: Vec<Interest>,
    /// Feed subjects the gateway detaches the connection from, before the reply.
    pub detach: Vec<String>,
}

impl Outcome {
    pub fn json(v: &serde_json::Value) -> Self {
        Self {
            data: serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec()),
            ..Self::default()
        }
    }
}

/// A worker service.
pub trait Service: Send + Sync + 'static {
    /// The service name: subject token and queue group.
    fn name(&self) -> &'static str;

    /// Handles one client request for `op`.
    fn handle(
        &self,
        op: &str,
        req: Request,
    ) -> impl Future<Output = Result<Outcome, ServiceError>> + Send;

    /// Returns a range of a sequenced feed, for a gateway filling a gap.
    /// Services without feeds keep this default.
    fn replay(
        &self,
        _req: ReplayRequest,
    ) -> impl Future<Output = Result<ReplayBatch, ServiceError>> + Send {
        let name = self.name();
        async move {
            Err(ServiceError::client(
                ErrorCode::UnknownOp,
                format!("{name} has no feeds to replay"),
            ))
        }
    }

    /// Reacts to a connection event (one replica of the service gets each).
    fn on_conn_event(&self, ev: ConnLifecycle) -> impl Future<Output = ()> + Send;

    /// Subjects of a backend API this service also answers (as the same
    /// queue group): trusted backends send JSON requests there.
    fn api_subjects(&self) -> &'static [&'static str] {
        &[]
    }

    /// Handles one backend API request; the answer is the JSON reply.
    fn handle_api(&self, _subject: &str, _payload: Bytes) -> impl Future<Output = Bytes> + Send {
        async {
            Bytes::from_static(
                br#"{"ok":false,"error":{"code":"unknown_op","message":"no such API"}}"#,
            )
        }
    }
}
