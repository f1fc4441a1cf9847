//! The client wire protocol (`switchboard.v1`, JSON text frames), as the
//! gateway sees it: parsing requests and encoding replies and error frames.
//! docs/protocol.md is the contract; this module implements it.
//!
//! - request: `{"id": "1", "op": "rooms.join", "data": {...}}`
//! - reply:   `{"id": "1", "ok": true, "data": {...}}` or
//!   `{"id": "1", "ok": false, "error": {"code": "...", "message": "..."}}`
//! - push:    `{"event": "message", "data": {...}}`

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_shared::error::{ClientError, ErrorCode};
use switchboard_shared::subjects::is_op_name;

/// Longest request id accepted (string ids), in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// A parsed, validated request.
#[derive(Debug)]
pub struct ClientRequest<'a> {
    /// The id as it appeared (a JSON string or integer), echoed in the reply.
    pub id: &'a RawValue,
    pub service: &'a str,
    pub op: &'a str,
    /// The `data` JSON; `null` when absent.
    pub data: &'a [u8],
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    op: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// A request that could not be accepted, with the id to answer to (if any).
#[derive(Debug)]
pub struct Refused<'a> {
    pub id: Option<&'a RawValue>,
    pub error: ClientError,
}

/// Parses and validates one text frame.
pub fn parse_request<'a>(
    text: &'a str,
    services: &[String],
) -> Result<ClientRequest<'a>, Refused<'a>> {
    // serde would accept a JSON array for a struct; the protocol does not.
    if !text.trim_start().starts_with('{') {
        return Err(Refused {
            id: None,
            error: ClientError::new(ErrorCode::BadRequest, "frame is not a JSON request object"),
        });
    }
    let raw: RawRequest<'a> = serde_json::from_str(text).map_err(|e| Refused {
        id: None,
        error: ClientError::new(
            ErrorCode::BadRequest,
            format!("frame is not a JSON request object: {e}"),
        ),
    })?;
    let id = raw.id.ok_or_else(|| Refused {
        id: None,
        error: ClientError::new(ErrorCode::BadRequest, "missing field `id`"),
    })?;
    let id_ok = match id.get().as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(id.get())
            .is_ok_and(|s| !s.is_empty() && s.len() <= MAX_REQUEST_ID_LEN),
        _ => serde_json::from_str::<u64>(id.get()).is_ok(),
    };
    if !id_ok {
        return Err(Refused {
            id: None,
            error: ClientError::new(
                ErrorCode::InvalidId,
                format!(
                    "`id` must be a non-negative integer or a string of 1 to {MAX_REQUEST_ID_LEN} bytes"
                ),
            ),
        });
    }
    let refuse = |code, msg: String| Refused {
        id: Some(id),
        error: ClientError::new(code, msg),
    };
    let op_raw = raw
        .op
        .ok_or_else(|| refuse(ErrorCode::BadRequest, "missing field `op`".into()))?;
    let op: &str = serde_json::from_str(op_raw.get()).map_err(|_| {
        refuse(
            ErrorCode::BadRequest,
            "`op` must be a string like \"rooms.join\"".into(),
        )
    })?;
    let Some((service, op_name)) = op.split_once('.') else {
        return Err(refuse(
            ErrorCode::UnknownOp,
            "`op` must look like \"<service>.<op>\"".into(),
        ));
    };
    if !is_op_name(service) || !is_op_name(op_name) || !services.iter().any(|s| s == service) {
        return Err(refuse(
            ErrorCode::UnknownOp,
            format!("unknown op {:?}", truncate(op, 80)),
        ));
    }
    if let Some(data) = raw.data
        && let Err(e) = serde_json::from_str::<Readable>(data.get())
    {
        return Err(refuse(
            ErrorCode::BadRequest,
            format!("`data` cannot be read: {e}"),
        ));
    }
    Ok(ClientRequest {
        id,
        service,
        op: op_name,
        data: raw.data.map_or(b"null".as_slice(), |d| d.get().as_bytes()),
    })
}

/// A JSON value walked without being kept, to refuse what the syntax-only
/// scan of `RawValue` lets through but a decoder cannot read: a number
/// beyond the range of a 64-bit float (`1e999`, or 400 digits). Passed on,
/// it would reach other members' clients, and many decoders reject it.
struct Readable;

impl<'de> Deserialize<'de> for Readable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Readable)
    }
}

impl<'de> serde::de::Visitor<'de> for Readable {
    type Value = Readable;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_str<E>(self, _: &str) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_unit<E>(self) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Readable, A::Error> {
        while seq.next_element::<Readable>()?.is_some() {}
        Ok(Readable)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Readable, A::Error> {
        while map.next_key::<Readable>()?.is_some() {
            map.next_value::<Readable>()?;
        }
        Ok(Readable)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `{"id":<id>,"ok":true,"data":<data>}`; `data` must be JSON (empty → null).
pub fn ok_frame(id: &str, data: &[u8]) -> Bytes {
    let data = if data.is_empty() {
        b"null".as_slice()
    } else {
        data
    };
    let mut f = Vec::with_capacity(id.len() + data.len() + 26);
    f.extend_from_slice(b"{\"id\":");
    f.extend_from_slice(id.as_bytes());
    f.extend_from_slice(b",\"ok\":true,\"data\":");
    f.extend_from_slice(data);
    f.push(b'}');
    Bytes::from(f)
}

/// `{"id":<id>,"ok":false,"error":{"code":..,"message":..}}`; `id` is raw
/// JSON (`null` when the request had none).
pub fn error_frame(id: Option<&str>, code: &str, message: &str) -> Bytes {
    let v = serde_json::json!({"code": code, "message": message});
    let mut f = Vec::with_capacity(64 + message.len());
    f.extend_from_slice(b"{\"id\":");
    f.extend_from_slice(id.unwrap_or("null").as_bytes());
    f.extend_from_slice(b",\"ok\":false,\"error\":");
    f.extend_from_slice(v.to_string().as_bytes());
    f.push(b'}');
    Bytes::from(f)
}

/// `{"event":<event>,"data":<data>}`.
pub fn push_frame(event: &str, data: &serde_json::Value) -> Bytes {
    switchboard_shared::frames::event(event, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> Vec<String> {
        vec!["rooms".into()]
    }

    fn code(text: &str) -> (Option<String>, ErrorCode) {
        let s = services();
        match parse_request(text, &s) {
            Ok(_) => panic!("accepted {text}"),
            Err(r) => (r.id.map(|i| i.get().to_owned()), r.error.code),
        }
    }

    #[test]
    fn well_formed_requests_parse() {
        let s = services();
        let r = parse_request(r#"{"id":"a1","op":"rooms.join","data":{"room":"x"}}"#, &s)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((r.id.get(), r.service, r.op), ("\"a1\"", "rooms", "join"));
        assert_eq!(r.data, br#"{"room":"x"}"#);
        let r =
            parse_request(r#"{"id":7,"op":"rooms.info"}"#, &s).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((r.id.get(), r.data), ("7", b"null".as_slice()));
    }

    #[test]
    fn malformed_frames_get_typed_errors() {
        assert_eq!(code("not json"), (None, ErrorCode::BadRequest));
        assert_eq!(code("[1,2]"), (None, ErrorCode::BadRequest));
        assert_eq!(
            code(r#"{"op":"rooms.join"}"#),
            (None, ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"id":{},"op":"rooms.join"}"#),
            (None, ErrorCode::InvalidId)
        );
        assert_eq!(
            code(r#"{"id":-1,"op":"rooms.join"}"#),
            (None, ErrorCode::InvalidId)
        );
        assert_eq!(
            code(r#"{"id":"","op":"rooms.join"}"#),
            (None, ErrorCode::InvalidId)
        );
        let long = format!(r#"{{"id":"{}","op":"rooms.join"}}"#, "x".repeat(65));
        assert_eq!(code(&long), (None, ErrorCode::InvalidId));
        assert_eq!(
            code(r#"{"id":1}"#),
            (Some("1".into()), ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"id":1,"op":5}"#),
            (Some("1".into()), ErrorCode::BadRequest)
        );
        for op in [
            "rooms",
            "rooms.",
            "nope.join",
            "rooms.*",
            "rooms.>",
            "rooms.a.b",
            "rooms._replay",
            "Rooms.join",
            "rooms.jo in",
        ] {
            let f = format!(r#"{{"id":1,"op":"{op}"}}"#);
            assert_eq!(code(&f), (Some("1".into()), ErrorCode::UnknownOp), "{op}");
        }
    }

    #[test]
    fn data_with_numbers_no_decoder_can_read_is_refused() {
        let huge_int = "9".repeat(400);
        for data in ["1e999", "[1,{\"a\":-1E+400}]", huge_int.as_str()] {
            let f = format!(r#"{{"id":1,"op":"rooms.publish","data":{data}}}"#);
            assert_eq!(
                code(&f),
                (Some("1".into()), ErrorCode::BadRequest),
                "{data}"
            );
        }
        let s = services();
        let ok = r#"{"id":1,"op":"rooms.publish","data":{"n":[1e300,-5,1.5e-400,18446744073709551616],"s":"\u00e9"}}"#;
        assert!(parse_request(ok, &s).is_ok());
    }

    #[test]
    fn frames_are_json() {
        let ok: serde_json::Value =
            serde_json::from_slice(&ok_frame("\"x\"", b"")).unwrap_or_default();
        assert_eq!(ok, serde_json::json!({"id": "x", "ok": true, "data": null}));
        let err: serde_json::Value =
            serde_json::from_slice(&error_frame(None, "bad_request", "quote \" here"))
                .unwrap_or_default();
        assert_eq!(err["error"]["message"], "quote \" here");
        assert_eq!(err["id"], serde_json::Value::Null);
    }
}
