//! Fuzz target: the client frame parser (`protocol::parse_request`), which
//! every WebSocket text frame goes through before anything else looks at it.
//!
//! Checks, for any UTF-8 text: no panic; an accepted request names a
//! configured service and an op that makes a clean four-token NATS subject,
//! has a valid id and JSON `data`, and its reply frame is JSON echoing that
//! id; a refused one carries a parser error code, a message, a valid id (or
//! none), and its error frame is JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchboard_gateway::protocol::{self, MAX_REQUEST_ID_LEN};
use switchboard_shared::error::ErrorCode;
use switchboard_shared::subjects;

const SERVICES: [&str; 5] = [
    "rooms",
    "presence",
    "notifications",
    "signaling",
    "matchmaking",
];

/// The `id` rule of docs/protocol.md: a string of 1–64 bytes or a u64.
fn valid_id(raw: &str) -> bool {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::String(s)) => !s.is_empty() && s.len() <= MAX_REQUEST_ID_LEN,
        Ok(Value::Number(n)) => n.is_u64(),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    // The gateway closes with 1007 on text frames that are not UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let services: Vec<String> = SERVICES.iter().map(|s| (*s).to_owned()).collect();
    match protocol::parse_request(text, &services) {
        Ok(req) => {
            assert!(SERVICES.contains(&req.service), "service {:?}", req.service);
            assert!(subjects::is_op_name(req.service) && subjects::is_op_name(req.op));
            let subject = subjects::service_op(req.service, req.op);
            let tokens: Vec<&str> = subject.split('.').collect();
            assert_eq!(tokens, ["sb", "svc", req.service, req.op], "{subject}");
            assert!(
                !subject.contains(['*', '>']) && !subject.chars().any(char::is_whitespace),
                "{subject}"
            );
            assert!(valid_id(req.id.get()), "id {}", req.id.get());
            let data: Value = serde_json::from_slice(req.data).expect("data is JSON");
            let frame = protocol::ok_frame(req.id.get(), req.data);
            let reply: Value = serde_json::from_slice(&frame).expect("reply frame is JSON");
            let id: Value = serde_json::from_str(req.id.get()).expect("id is JSON");
            assert_eq!(reply["id"], id);
            assert_eq!(reply["ok"], Value::Bool(true));
            assert_eq!(reply["data"], data);
        }
        Err(refused) => {
            let code = refused.error.code;
            assert!(
                matches!(
                    code,
                    ErrorCode::BadRequest | ErrorCode::InvalidId | ErrorCode::UnknownOp
                ),
                "{code:?}"
            );
            assert!(!refused.error.message.is_empty());
            if let Some(id) = refused.id {
                assert!(valid_id(id.get()), "refusal echoes id {}", id.get());
            }
            let frame = protocol::error_frame(
                refused.id.map(|i| i.get()),
                code.as_str(),
                &refused.error.message,
            );
            let reply: Value = serde_json::from_slice(&frame).expect("error frame is JSON");
            assert_eq!(reply["ok"], Value::Bool(false));
            assert_eq!(reply["error"]["code"], code.as_str());
            assert_eq!(reply["error"]["message"], refused.error.message.as_str());
        }
    }
});
