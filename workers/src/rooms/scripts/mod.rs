//! Lua scripts for the rooms service and their typed results. Each script
//! touches only the keys of one hash tag, so it is atomic and Redis-Cluster
//! safe. The room scripts' KEYS are always `meta, conns, users, history,
//! read, delivered, reactions, msg_ids, msg_id_times, gateways` (see
//! `switchboard_shared::keys::RoomKeys::all`); the quota scripts take the
//! one set they count in.
//!
//! Every script is run through the function beside it, which passes its ARGV
//! in order and decodes the reply into a typed result. Status codes are read
//! in this module and nowhere else: 1 ok, -1 no such room, -2 room full,
//! -3 private room without a grant, -4 not a member, -5 no such message,
//! 0 nothing to do (for PUBLISH: a client message id already published). A reply outside a script's contract is a
//! `ServiceError::Script` naming the script.
//!
//! - [`membership`]: CREATE, JOIN, LEAVE;
//! - [`history`]: PUBLISH, READ;
//! - [`marks`]: MARK (receipts), REACT (reactions);
//! - [`quota`]: RESERVE and CONN_ROOM, the check-and-adds of the room
//!   quotas (each on one key of its own: a user's, an app's or a
//!   connection's set, not the room's).

mod history;
mod marks;
mod membership;
mod quota;

use deadpool_redis::redis::{FromRedisValue, Value};

use crate::error::ServiceError;

pub use history::{Entry, NewMessage, Publish, Read, publish, read};
pub use marks::{Mark, React, mark, react};
pub use membership::{Create, Join, Leave, NewRoom, create, join, leave};
pub use quota::{ConnRoom, Reserve, conn_room, reserve};

type Conn = deadpool_redis::Connection;

/// Reads a script's raw reply as `T`, or names the script whose contract it
/// broke.
fn reply<T: FromRedisValue>(script: &'static str, v: &Value) -> Result<T, ServiceError> {
    T::from_redis_value_ref(v).map_err(|_| ServiceError::script(script, v))
}

/// A 0/1 flag of a reply.
fn flag(script: &'static str, v: i64) -> Result<bool, ServiceError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(ServiceError::script(script, other)),
    }
}

/// A count or seq of a reply, never negative.
fn count(script: &'static str, v: i64) -> Result<u64, ServiceError> {
    u64::try_from(v).map_err(|_| ServiceError::script(script, v))
}

fn bool_arg(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

#[cfg(test)]
mod tests;
