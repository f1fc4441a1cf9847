//! Test harness for Switchboard: real `nats-server` and `redis-server`
//! processes on free ports (stopped on Drop), gateways and workers started
//! in-process against them, a WebSocket client that speaks the client
//! protocol, and the gateway and workers binaries as child processes that
//! can be killed, paused and restarted (for soaks and benchmarks). Every
//! wait has a deadline, so a broken build fails instead of hanging.
#![forbid(unsafe_code)]

pub mod client;
pub mod process;
pub mod servers;
pub mod stack;

pub use client::{Client, ConnectError};
pub use process::{ChildProcess, GatewayChild, ProcessError, WorkersChild};
pub use servers::{NatsServer, RedisServer};
pub use stack::{Gateway, GatewayProcess, Stack, Workers};
