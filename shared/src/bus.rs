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
    #[error("NATS round trip failed: {0}")]
    Sync(String),
}

/// Connects to NATS with a client name that shows up in server monitoring.
/// Fails when the first connection cannot be made (the process exits and its
/// supervisor restarts it); later disconnects are retried in the background.
/// Returning only once connected means a `flush()` after a subscribe proves
/// the server has the subscription.
pub async fn connect(cfg: &NatsConfig, name: &str) -> Result<Client, BusError> {
    async_nats::ConnectOptions::new()
        .name(name)
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

/// Waits until the NATS server has processed everything this client sent
/// before the call, subscriptions included. (`Client::flush` only flushes the
/// socket.) The server handles one connection's operations in order, so a
/// message to our own inbox coming back proves the earlier ones were applied.
pub async fn sync(client: &Client) -> Result<(), BusError> {
    use futures::StreamExt;
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| BusError::Sync(e.to_string()))?;
    client
        .publish(inbox, Bytes::new())
        .await
        .map_err(|e| BusError::Sync(e.to_string()))?;
    match tokio::time::timeout(std::time::Duration::from_secs(10), sub.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(BusError::Sync("subscription closed".into())),
        Err(_) => Err(BusError::Sync("no answer from the server in 10 s".into())),
    }
}
