//! Bearer tokens of the admin API: `authorization: Bearer <token>` must be
//! one of `admin.tokens`, compared in constant time (`subtle`), every
//! configured token checked whatever matched, so timing tells nothing about
//! which or how much matched. No token configured: every call is refused.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The accepted tokens; also the interceptor that checks them.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<Vec<u8>>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    pub fn new(tokens: &[String]) -> Self {
        Self(Arc::new(
            tokens.iter().map(|t| t.as_bytes().to_vec()).collect(),
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `presented` is one of the tokens.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let mut ok = subtle::Choice::from(0);
        for t in self.0.iter() {
            ok |= t.as_slice().ct_eq(presented);
        }
        bool::from(ok)
    }
}

impl tonic::service::Interceptor for Tokens {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if self.is_empty() {
            return Err(Status::unauthenticated(
                "no admin token is configured on the server (admin.tokens)",
            ));
        }
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match presented {
            None => Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>`",
            )),
            Some(t) if self.accepts(t.as_bytes()) => Ok(req),
            Some(_) => Err(Status::unauthenticated("invalid admin token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_configured_token_is_accepted_and_nothing_else() {
        let t = Tokens::new(&["first-token-0123456".into(), "second-token-012345".into()]);
        assert!(t.accepts(b"first-token-0123456"));
        assert!(t.accepts(b"second-token-012345"));
        assert!(!t.accepts(b"first-token-012345"));
        assert!(!t.accepts(b""));
        assert!(!Tokens::new(&[]).accepts(b""));
    }
}
