//! The `[admin]` config section: where the operator's admin gRPC API
//! listens, which bearer tokens it accepts, its TLS files and its
//! scatter-gather deadline. Served by `switchboard-workers admin`
//! (docs/operations.md).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Longest `admin.deadline_ms`: a call waits this long at most for the
/// gateways.
pub const MAX_DEADLINE_MS: u64 = 60_000;

/// Shortest accepted token: a guessable token is no token.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Accepted bearer tokens (`authorization: Bearer <token>`). Several, so
    /// a new one can be added before the old one is removed. Empty: every
    /// call is refused.
    pub tokens: Vec<String>,
    /// PEM certificate chain; TLS when both this and `tls_key` are set.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// How long a call that asks every gateway waits for their answers.
    pub deadline_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            tokens: Vec::new(),
            tls_cert: None,
            tls_key: None,
            deadline_ms: 1_000,
        }
    }
}

impl AdminConfig {
    /// The first invalid setting: its key and why.
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        if !(1..=MAX_DEADLINE_MS).contains(&self.deadline_ms) {
            return Some((
                "admin.deadline_ms",
                format!("must be between 1 and {MAX_DEADLINE_MS}"),
            ));
        }
        if self.tokens.iter().any(|t| t.len() < MIN_TOKEN_LEN) {
            return Some((
                "admin.tokens",
                format!("every token must be at least {MIN_TOKEN_LEN} bytes"),
            ));
        }
        if self
            .tokens
            .iter()
            .any(|t| t.bytes().any(|b| !b.is_ascii_graphic()))
        {
            return Some((
                "admin.tokens",
                "tokens must be printable ASCII without spaces".into(),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Some((
                "admin.tls_cert",
                "set both admin.tls_cert and admin.tls_key, or neither".into(),
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_settings_are_named() {
        assert_eq!(AdminConfig::default().invalid(), None);
        let short = AdminConfig {
            tokens: vec!["short".into()],
            ..AdminConfig::default()
        };
        assert_eq!(short.invalid().map(|e| e.0), Some("admin.tokens"));
        let spaced = AdminConfig {
            tokens: vec!["a token with spaces".into()],
            ..AdminConfig::default()
        };
        assert_eq!(spaced.invalid().map(|e| e.0), Some("admin.tokens"));
        let half_tls = AdminConfig {
            tls_cert: Some("c.pem".into()),
            ..AdminConfig::default()
        };
        assert_eq!(half_tls.invalid().map(|e| e.0), Some("admin.tls_cert"));
        let zero = AdminConfig {
            deadline_ms: 0,
            ..AdminConfig::default()
        };
        assert_eq!(zero.invalid().map(|e| e.0), Some("admin.deadline_ms"));
    }
}
