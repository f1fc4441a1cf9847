//! Client frames built on both sides of the bus: the `{"event", "data"}`
//! push frame that gateways write and workers publish ready-made.

use bytes::Bytes;
use serde::Serialize;

#[derive(Serialize)]
struct EventFrame<'a, T: ?Sized> {
    event: &'a str,
    data: &'a T,
}

/// `{"event": <event>, "data": <data>}`, the client frame of a push.
pub fn event<T: Serialize + ?Sized>(event: &str, data: &T) -> Bytes {
    // Serialising a derived struct of strings and JSON values cannot fail;
    // `null` data is the harmless fallback if a custom `Serialize` does.
    serde_json::to_vec(&EventFrame { event, data })
        .or_else(|_| serde_json::to_vec(&EventFrame::<()> { event, data: &() }))
        .map(Bytes::from)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_frames_are_json_with_event_and_data() {
        let f = event("presence", &serde_json::json!({"user": "a\"b", "n": 1}));
        let v: serde_json::Value = serde_json::from_slice(&f).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            v,
            serde_json::json!({"event": "presence", "data": {"user": "a\"b", "n": 1}})
        );
    }
}
