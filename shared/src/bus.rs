//! The NATS bus: connecting, and encoding/decoding the protobuf envelope.

use bytes::Bytes;
use prost::Message;

use crate::config::NatsConfig;

pub use async_nats::Client;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("malformed bus message: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Connects to NATS with a client name that shows up in server monitoring.
pub async fn connect(cfg: &NatsConfig, name: &str) -> Result<Client, BusError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(std::time::Duration::from_secs(5))
        .subscription_capacity(64 * 1024)
        .connect(cfg.url.as_str())
        .await
        .map_err(|source| BusError::Connect {
            url: cfg.url.clone(),
            source,
        })
}

/// Encodes a bus message.
pub fn encode<M: Message>(m: &M) -> Bytes {
    Bytes::from(m.encode_to_vec())
}

/// Decodes a bus message.
pub fn decode<M: Message + Default>(b: &[u8]) -> Result<M, BusError> {
    Ok(M::decode(b)?)
}
