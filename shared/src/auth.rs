//! Token authentication (JWT, via jsonwebtoken).
//!
//! The accepted algorithms come from configuration only: the token's header
//! picks among them and can never add one (`alg: none` is refused outright).
//! `exp` is required; `nbf` is checked when present; `iss` and `aud`, when
//! configured, are required and must match (RFC 8725 §3.9). Claims give the
//! user (`sub`), the app/tenant (configurable claim, `app` by default) and
//! optional room grants (`rooms`: ids or `prefix*` patterns) that private
//! rooms require; every grant is checked with the rules of room ids.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::config::AuthConfig;
use crate::ids::{IdError, RoomId, TenantId, UserId};

/// Who a connection is, from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant: TenantId,
    pub user: UserId,
    /// Room grants: exact ids, `prefix*` patterns, or `*`.
    pub grants: Vec<String>,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
}

impl Identity {
    /// Whether the grants allow `room` (for private rooms). Grants are
    /// checked by [`check_grant`] when the token is verified.
    pub fn may_access(grants: &[String], room: &str) -> bool {
        grants.iter().any(|g| match g.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => g == room,
        })
    }
}

/// Checks one room grant: a room id (exact), or a room-id prefix followed by
/// one `*` (`*` alone grants every room). The prefix follows the rules of
/// [`RoomId`], so a grant can hold no `.`, `>`, whitespace, inner `*` or
/// other character a room id cannot have, and is at most
/// [`crate::ids::MAX_ID_LEN`] bytes before its `*`.
pub fn check_grant(grant: &str) -> Result<(), IdError> {
    match grant.strip_suffix('*') {
        Some("") => Ok(()),
        Some(prefix) => RoomId::parse(prefix).map(drop),
        None => RoomId::parse(grant).map(drop),
    }
}

/// At most this many bytes of a refused value are quoted back in an error.
const QUOTE_MAX: usize = 80;

/// `s` quoted for an error message, cut at [`QUOTE_MAX`] bytes.
fn quote(s: &str) -> String {
    if s.len() <= QUOTE_MAX {
        return format!("{s:?}");
    }
    let mut end = QUOTE_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}…", &s[..end])
}

/// Why a token was refused. The `Display` text is safe to show the client; it
/// never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no token: send `Authorization: Bearer <token>`, a `bearer.<token>` subprotocol, or `?token=`"
    )]
    Missing,
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm is not accepted")]
    Algorithm,
    #[error("token signature is invalid")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token audience is not accepted")]
    Audience,
    #[error("token issuer is not accepted")]
    Issuer,
    #[error("token lacks claim `{0}`")]
    MissingClaim(String),
    #[error("token claim `{claim}` is invalid: {reason}")]
    BadClaim { claim: String, reason: String },
}

/// Configuration that cannot be turned into keys.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("configuration key `{key}`: {source}")]
    Key {
        key: &'static str,
        source: jsonwebtoken::errors::Error,
    },
    #[error("configuration key `auth.algorithms`: unsupported algorithm {0:?}")]
    Algorithm(String),
}

/// Verifies tokens according to [`AuthConfig`].
pub struct Authenticator {
    keys: Vec<(Algorithm, DecodingKey)>,
    hs_secret: Option<Vec<u8>>,
    issuer: Option<String>,
    audience: Option<String>,
    tenant_claim: String,
    leeway: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "algorithms",
                &self.keys.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, AuthConfigError> {
        let mut keys = Vec::new();
        for alg in &cfg.algorithms {
            let (alg, key) = match alg.as_str() {
                "HS256" => (
                    Algorithm::HS256,
                    DecodingKey::from_secret(
                        cfg.hs256_secret.as_deref().unwrap_or_default().as_bytes(),
                    ),
                ),
                "RS256" => (
                    Algorithm::RS256,
                    DecodingKey::from_rsa_pem(
                        cfg.rs256_public_key
                            .as_deref()
                            .unwrap_or_default()
                            .as_bytes(),
                    )
                    .map_err(|source| AuthConfigError::Key {
                        key: "auth.rs256_public_key",
                        source,
                    })?,
                ),
                "ES256" => (
                    Algorithm::ES256,
                    DecodingKey::from_ec_pem(
                        cfg.es256_public_key
                            .as_deref()
                            .unwrap_or_default()
                            .as_bytes(),
                    )
                    .map_err(|source| AuthConfigError::Key {
                        key: "auth.es256_public_key",
                        source,
                    })?,
                ),
                other => return Err(AuthConfigError::Algorithm(other.to_owned())),
            };
            keys.push((alg, key));
        }
        Ok(Self {
            keys,
            hs_secret: cfg
                .algorithms
                .iter()
                .any(|a| a == "HS256")
                .then(|| cfg.hs256_secret.clone().unwrap_or_default().into_bytes()),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            tenant_claim: cfg.tenant_claim.clone(),
            leeway: cfg.leeway_secs,
        })
    }

    /// Verifies `token` and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm => AuthError::Algorithm,
            _ => AuthError::Malformed,
        })?;
        let (alg, key) = self
            .keys
            .iter()
            .find(|(a, _)| *a == header.alg)
            .ok_or(AuthError::Algorithm)?;
        let mut validation = Validation::new(*alg);
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // A configured audience or issuer is required, not only checked
        // when the token happens to carry it (RFC 8725 §3.9).
        let mut required = vec!["exp", "sub"];
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::Signature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidAudience => AuthError::Audience,
                ErrorKind::InvalidIssuer => AuthError::Issuer,
                ErrorKind::InvalidAlgorithm => AuthError::Algorithm,
                ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
                _ => AuthError::Malformed,
            },
        )?;
        self.identity(&data.claims)
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, AuthError> {
        let string_claim = |name: &str| -> Result<&str, AuthError> {
            match claims.get(name) {
                Some(Value::String(s)) => Ok(s),
                Some(_) => Err(AuthError::BadClaim {
                    claim: name.to_owned(),
                    reason: "must be a string".into(),
                }),
                None => Err(AuthError::MissingClaim(name.to_owned())),
            }
        };
        // `iss` is one StringOrURI (RFC 7519 §4.1.1); the validation above
        // would also take a list that contains the issuer.
        if self.issuer.is_some() {
            string_claim("iss")?;
        }
        let user = UserId::parse(string_claim("sub")?).map_err(|e| AuthError::BadClaim {
            claim: "sub".into(),
            reason: e.to_string(),
        })?;
        let tenant = TenantId::parse(string_claim(&self.tenant_claim)?).map_err(|e| {
            AuthError::BadClaim {
                claim: self.tenant_claim.clone(),
                reason: e.to_string(),
            }
        })?;
        let grants = match claims.get("rooms") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => match check_grant(s) {
                        Ok(()) => Ok(s.clone()),
                        Err(e) => Err(AuthError::BadClaim {
                            claim: "rooms".into(),
                            reason: format!(
                                "grant {} is neither a room id nor a `prefix*` pattern: {e}",
                                quote(s)
                            ),
                        }),
                    },
                    _ => Err(AuthError::BadClaim {
                        claim: "rooms".into(),
                        reason: "must be a list of room ids or `prefix*` patterns".into(),
                    }),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(AuthError::BadClaim {
                    claim: "rooms".into(),
                    reason: "must be a list".into(),
                });
            }
        };
        // Read as the validation read it: a fractional `exp` is accepted
        // there, rounded to whole seconds.
        let expires_at = claims
            .get("exp")
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f.round() as u64))
            })
            .unwrap_or_default();
        Ok(Identity {
            tenant,
            user,
            grants,
            expires_at,
        })
    }

    /// Mints an HS256 token with the configured secret: for development (the
    /// `token` subcommand) and tests. Fails when HS256 is not enabled.
    pub fn mint(&self, claims: &TokenClaims) -> Result<String, MintError> {
        let secret = self.hs_secret.as_deref().ok_or(MintError::NoSecret)?;
        let mut map = Map::new();
        map.insert("sub".into(), Value::String(claims.user.clone()));
        map.insert(
            self.tenant_claim.clone(),
            Value::String(claims.tenant.clone()),
        );
        map.insert("exp".into(), Value::from(claims.expires_at));
        map.insert("iat".into(), Value::from(crate::now_ms() / 1000));
        if !claims.rooms.is_empty() {
            map.insert("rooms".into(), Value::from(claims.rooms.clone()));
        }
        if let Some(aud) = &self.audience {
            map.insert("aud".into(), Value::String(aud.clone()));
        }
        if let Some(iss) = &self.issuer {
            map.insert("iss".into(), Value::String(iss.clone()));
        }
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &map,
            &EncodingKey::from_secret(secret),
        )
        .map_err(MintError::Encode)
    }
}

/// An unsigned token (`alg: none`) for app `demo`, user `u`, audience
/// `switchboard`, expiring in 2100: every gateway must refuse it. For tests.
pub const ALG_NONE_TOKEN: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1IiwiYXBwIjoiZGVtbyIsImV4cCI6NDEwMjQ0NDgwMCwiYXVkIjoic3dpdGNoYm9hcmQifQ.";

/// What [`Authenticator::mint`] puts in a token.
#[derive(Debug, Clone)]
pub struct TokenClaims {
    pub tenant: String,
    pub user: String,
    pub rooms: Vec<String>,
    /// Unix seconds.
    pub expires_at: u64,
}

impl TokenClaims {
    /// Claims valid for `ttl_secs` from now.
    pub fn new(tenant: &str, user: &str, ttl_secs: u64) -> Self {
        Self {
            tenant: tenant.into(),
            user: user.into(),
            rooms: Vec::new(),
            expires_at: crate::now_ms() / 1000 + ttl_secs,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("HS256 is not enabled, so no development token can be minted")]
    NoSecret,
    #[error("could not encode token: {0}")]
    Encode(jsonwebtoken::errors::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(audience: Option<&str>) -> Authenticator {
        let cfg = AuthConfig {
            audience: audience.map(str::to_owned),
            ..AuthConfig::default()
        };
        Authenticator::from_config(&cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    fn sign(claims: &Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn exp_in(secs: i64) -> i64 {
        (crate::now_ms() / 1000) as i64 + secs
    }

    #[test]
    fn a_minted_token_verifies() {
        let a = auth(None);
        let mut claims = TokenClaims::new("demo", "alice", 60);
        claims.rooms = vec!["couple-*".into()];
        let id = a
            .verify(&a.mint(&claims).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(id.tenant.as_str(), "demo");
        assert_eq!(id.user.as_str(), "alice");
        assert!(Identity::may_access(&id.grants, "couple-1"));
        assert!(!Identity::may_access(&id.grants, "other"));
    }

    #[test]
    fn bad_tokens_get_specific_errors() {
        let a = auth(Some("switchboard"));
        let secret = crate::config::DEV_SECRET;
        let ok =
            serde_json::json!({"sub": "u", "app": "demo", "exp": exp_in(60), "aud": "switchboard"});
        assert!(a.verify(&sign(&ok, secret)).is_ok());
        assert_eq!(a.verify(&sign(&ok, "wrong")), Err(AuthError::Signature));
        let expired = serde_json::json!({"sub": "u", "app": "demo", "exp": exp_in(-3600), "aud": "switchboard"});
        assert_eq!(a.verify(&sign(&expired, secret)), Err(AuthError::Expired));
        let no_exp = serde_json::json!({"sub": "u", "app": "demo", "aud": "switchboard"});
        assert_eq!(
            a.verify(&sign(&no_exp, secret)),
            Err(AuthError::MissingClaim("exp".into()))
        );
        let wrong_aud =
            serde_json::json!({"sub": "u", "app": "demo", "exp": exp_in(60), "aud": "other"});
        assert_eq!(
            a.verify(&sign(&wrong_aud, secret)),
            Err(AuthError::Audience)
        );
        let future = serde_json::json!({"sub": "u", "app": "demo", "exp": exp_in(600), "nbf": exp_in(300), "aud": "switchboard"});
        assert_eq!(
            a.verify(&sign(&future, secret)),
            Err(AuthError::NotYetValid)
        );
        let bad_tenant = serde_json::json!({"sub": "u", "app": "de.mo", "exp": exp_in(60), "aud": "switchboard"});
        assert!(matches!(
            a.verify(&sign(&bad_tenant, secret)),
            Err(AuthError::BadClaim { .. })
        ));
        let no_tenant = serde_json::json!({"sub": "u", "exp": exp_in(60), "aud": "switchboard"});
        assert_eq!(
            a.verify(&sign(&no_tenant, secret)),
            Err(AuthError::MissingClaim("app".into()))
        );
        assert_eq!(a.verify("not a token"), Err(AuthError::Malformed));
    }

    fn auth_with(audience: Option<&str>, issuer: Option<&str>) -> Authenticator {
        let cfg = AuthConfig {
            audience: audience.map(str::to_owned),
            issuer: issuer.map(str::to_owned),
            ..AuthConfig::default()
        };
        Authenticator::from_config(&cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_configured_audience_or_issuer_is_required() {
        let secret = crate::config::DEV_SECRET;
        let a = auth_with(Some("switchboard"), Some("https://id.example"));
        let full = serde_json::json!({"sub": "u", "app": "demo", "exp": exp_in(60),
            "aud": "switchboard", "iss": "https://id.example"});
        assert!(a.verify(&sign(&full, secret)).is_ok());
        for (drop, err) in [
            ("aud", AuthError::MissingClaim("aud".into())),
            ("iss", AuthError::MissingClaim("iss".into())),
        ] {
            let mut claims = full.clone();
            claims.as_object_mut().map(|m| m.remove(drop));
            assert_eq!(a.verify(&sign(&claims, secret)), Err(err), "without {drop}");
        }
        // A claim of the wrong type is no better than a missing one.
        let mut claims = full.clone();
        claims["aud"] = serde_json::json!(7);
        assert!(a.verify(&sign(&claims, secret)).is_err());
        let mut claims = full.clone();
        claims["iss"] = serde_json::json!("https://evil.example");
        assert_eq!(a.verify(&sign(&claims, secret)), Err(AuthError::Issuer));
        claims["iss"] = serde_json::json!(["https://id.example"]);
        assert!(matches!(
            a.verify(&sign(&claims, secret)),
            Err(AuthError::BadClaim { claim, .. }) if claim == "iss"
        ));
        // An audience list naming us is accepted; one that does not is not.
        let mut claims = full.clone();
        claims["aud"] = serde_json::json!(["other", "switchboard"]);
        assert!(a.verify(&sign(&claims, secret)).is_ok());
        claims["aud"] = serde_json::json!([]);
        assert_eq!(a.verify(&sign(&claims, secret)), Err(AuthError::Audience));

        // Not configured: neither is required.
        let plain = serde_json::json!({"sub": "u", "app": "demo", "exp": exp_in(60)});
        assert!(auth_with(None, None).verify(&sign(&plain, secret)).is_ok());
    }

    #[test]
    fn room_grants_must_be_ids_or_prefix_patterns() {
        let a = auth(None);
        let secret = crate::config::DEV_SECRET;
        let with_rooms = |rooms: serde_json::Value| {
            let claims =
                serde_json::json!({"sub": "u", "app": "demo", "exp": exp_in(60), "rooms": rooms});
            a.verify(&sign(&claims, secret))
        };
        let long = "x".repeat(crate::ids::MAX_ID_LEN + 1);
        let long_prefix = format!("{long}*");
        for bad in [
            "a.b",
            "a>",
            ">",
            "d e",
            "",
            "a*b",
            "**",
            "*a",
            "a**",
            "a:b",
            "{a}",
            "é",
            "a\n",
            &long,
            &long_prefix,
        ] {
            match with_rooms(serde_json::json!(["ok", bad])) {
                Err(AuthError::BadClaim { claim, reason }) => {
                    assert_eq!(claim, "rooms");
                    let shown = format!("{:?}", &bad[..bad.len().min(QUOTE_MAX)]);
                    assert!(reason.contains(&shown), "{bad:?}: {reason}");
                }
                other => panic!("grant {bad:?}: {other:?}"),
            }
        }
        // The reason quotes a long grant only in part.
        let huge = "y.".repeat(5000);
        let err = with_rooms(serde_json::json!([huge]))
            .err()
            .map(|e| e.to_string());
        assert!(err.as_ref().is_some_and(|e| e.len() < 300), "{err:?}");
        for bad_shape in [serde_json::json!("couple-*"), serde_json::json!([1])] {
            assert!(matches!(
                with_rooms(bad_shape),
                Err(AuthError::BadClaim { .. })
            ));
        }

        let max_id = "r".repeat(crate::ids::MAX_ID_LEN);
        let max_prefix = format!("{max_id}*");
        let good = ["lobby", "couple-*", "*", "A_b-9", &max_id, &max_prefix];
        let id = with_rooms(serde_json::json!(good)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(id.grants, good);
        assert!(Identity::may_access(&id.grants, "lobby"));
        assert!(Identity::may_access(&id.grants, "couple-7"));
        assert!(with_rooms(serde_json::json!([])).is_ok());
        assert!(with_rooms(serde_json::Value::Null).is_ok());
    }

    #[test]
    fn grant_patterns_only_match_what_they_name() {
        let g = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(Identity::may_access(&g(&["*"]), "anything"));
        assert!(Identity::may_access(&g(&["team-*"]), "team-"));
        assert!(!Identity::may_access(&g(&["team-*"]), "team"));
        assert!(!Identity::may_access(&g(&["team"]), "team-1"));
        assert!(!Identity::may_access(&[], "team"));
    }

    #[test]
    fn a_fractional_exp_is_read_as_validation_read_it() {
        let exp = exp_in(60);
        let claims = serde_json::json!({"sub": "u", "app": "demo", "exp": exp as f64 + 0.4});
        let id = auth(None).verify(&sign(&claims, crate::config::DEV_SECRET));
        assert_eq!(id.map(|i| i.expires_at), Ok(exp as u64));
    }

    #[test]
    fn alg_none_is_refused() {
        let err = auth(Some("switchboard")).verify(ALG_NONE_TOKEN);
        assert!(
            matches!(err, Err(AuthError::Algorithm | AuthError::Malformed)),
            "{err:?}"
        );
    }

    #[test]
    fn an_algorithm_not_configured_is_refused() {
        // HS384 with the right secret: the header may not widen the list.
        let claims = serde_json::json!({"sub": "u", "app": "demo", "exp": exp_in(60)});
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(crate::config::DEV_SECRET.as_bytes()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(auth(None).verify(&token), Err(AuthError::Algorithm));
    }
}
