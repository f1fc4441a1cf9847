//! The WebSocket handshake checks: origin allow-list, subprotocol selection
//! and token extraction/verification. Pure functions over request headers, so
//! every rule is unit-tested without a socket.
//!
//! Tokens are read, in order, from `Authorization: Bearer <t>`, from a
//! `bearer.<t>` entry in `Sec-WebSocket-Protocol`, or from `?token=<t>`
//! (browser fallback). Tokens are never logged.

use hyper::StatusCode;
use hyper::header::{AUTHORIZATION, HeaderMap, ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use switchboard_shared::auth::{AuthError, Authenticator, Identity};

/// The protocol version this gateway speaks.
pub const SUBPROTOCOL: &str = "switchboard.v1";
/// Prefix of a token carried in the subprotocol list.
pub const TOKEN_PROTOCOL_PREFIX: &str = "bearer.";

/// Why an upgrade was refused: becomes an HTTP error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// The JSON body sent with the error status.
    pub fn body(&self) -> String {
        serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string()
    }
}

/// A successful handshake.
#[derive(Debug)]
pub struct Accepted {
    pub identity: Identity,
    /// Whether to answer with `Sec-WebSocket-Protocol: switchboard.v1`
    /// (only when the client offered a list).
    pub echo_protocol: bool,
}

/// Checks an upgrade request's headers and query.
pub fn check(
    headers: &HeaderMap,
    query: Option<&str>,
    allowed_origins: &[String],
    auth: &Authenticator,
) -> Result<Accepted, Rejection> {
    if !allowed_origins.is_empty()
        && let Some(origin) = headers.get(ORIGIN)
    {
        let origin = origin.to_str().unwrap_or_default();
        if !allowed_origins.iter().any(|o| o == origin || o == "*") {
            return Err(Rejection::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "origin is not allowed",
            ));
        }
    }

    let offered: Vec<&str> = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let versions: Vec<&str> = offered
        .iter()
        .copied()
        .filter(|p| !p.starts_with(TOKEN_PROTOCOL_PREFIX))
        .collect();
    if !offered.is_empty() && !versions.contains(&SUBPROTOCOL) {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "unsupported_protocol",
            format!("offer the `{SUBPROTOCOL}` subprotocol"),
        ));
    }

    let token = bearer(headers)
        .or_else(|| {
            offered
                .iter()
                .find_map(|p| p.strip_prefix(TOKEN_PROTOCOL_PREFIX))
                .filter(|t| !t.is_empty())
        })
        .or_else(|| query_token(query));
    let token = token.ok_or_else(|| unauthorized(&AuthError::Missing))?;
    let identity = auth.verify(token).map_err(|e| unauthorized(&e))?;
    Ok(Accepted {
        identity,
        echo_protocol: !offered.is_empty(),
    })
}

fn unauthorized(e: &AuthError) -> Rejection {
    Rejection::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use switchboard_shared::auth::TokenClaims;
    use switchboard_shared::config::AuthConfig;

    fn auth() -> Authenticator {
        Authenticator::from_config(&AuthConfig::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn token(a: &Authenticator) -> String {
        a.mint(&TokenClaims::new("demo", "alice", 60))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn headers(pairs: &[(hyper::header::HeaderName, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                k,
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        h
    }

    #[test]
    fn token_from_each_place() {
        let a = auth();
        let t = token(&a);
        let h = headers(&[(AUTHORIZATION, format!("Bearer {t}"))]);
        assert!(check(&h, None, &[], &a).is_ok());
        let h = headers(&[(SEC_WEBSOCKET_PROTOCOL, format!("{SUBPROTOCOL}, bearer.{t}"))]);
        let ok = check(&h, None, &[], &a).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(ok.echo_protocol);
        assert_eq!(ok.identity.user.as_str(), "alice");
        let q = format!("x=1&token={t}");
        assert!(check(&HeaderMap::new(), Some(&q), &[], &a).is_ok());
    }

    #[test]
    fn missing_or_bad_tokens_are_401() {
        let a = auth();
        let e = check(&HeaderMap::new(), None, &[], &a).err();
        assert_eq!(e.map(|e| e.status), Some(StatusCode::UNAUTHORIZED));
        let h = headers(&[(AUTHORIZATION, "Bearer nope".into())]);
        assert_eq!(
            check(&h, None, &[], &a).err().map(|e| e.status),
            Some(StatusCode::UNAUTHORIZED)
        );
    }

    #[test]
    fn a_wrong_protocol_version_is_refused() {
        let a = auth();
        let t = token(&a);
        let h = headers(&[
            (AUTHORIZATION, format!("Bearer {t}")),
            (SEC_WEBSOCKET_PROTOCOL, "switchboard.v9".into()),
        ]);
        assert_eq!(
            check(&h, None, &[], &a).err().map(|e| e.code),
            Some("unsupported_protocol")
        );
    }

    #[test]
    fn origins_outside_the_allow_list_are_403() {
        let a = auth();
        let t = token(&a);
        let allowed = vec!["https://app.example".to_owned()];
        let h = headers(&[
            (AUTHORIZATION, format!("Bearer {t}")),
            (ORIGIN, "https://evil.example".into()),
        ]);
        assert_eq!(
            check(&h, None, &allowed, &a).err().map(|e| e.status),
            Some(StatusCode::FORBIDDEN)
        );
        let h = headers(&[
            (AUTHORIZATION, format!("Bearer {t}")),
            (ORIGIN, "https://app.example".into()),
        ]);
        assert!(check(&h, None, &allowed, &a).is_ok());
    }
}
