//! Client credentials: HS256 tokens minted in-process with the same
//! configuration the gateway loads (defaults, `SB_CONFIG`, `SB_` variables),
//! so a benchmark needs no token service. The Socket.IO peer verifies the
//! same tokens with the same secret.

use anyhow::Context;
use switchboard_shared::auth::{Authenticator, TokenClaims};
use switchboard_shared::config::Config;

use crate::wire::Target;

/// Mints tokens for one app.
pub struct Tokens {
    auth: Option<Authenticator>,
    app: String,
}

impl Tokens {
    /// Tokens for `target`; B1 and B2 take none.
    pub fn new(target: Target, app: &str) -> anyhow::Result<Self> {
        let auth = match target {
            Target::Switchboard | Target::Socketio => {
                let cfg = Config::load(None).context("loading the Switchboard configuration")?;
                Some(Authenticator::from_config(&cfg.auth).context("auth configuration")?)
            }
            Target::B1 | Target::B2 => None,
        };
        Ok(Self {
            auth,
            app: app.to_owned(),
        })
    }

    /// A token for `user`, valid for two hours; `None` when the target needs none.
    pub fn for_user(&self, user: &str) -> anyhow::Result<Option<String>> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        let claims = TokenClaims::new(&self.app, user, 2 * 3600);
        Ok(Some(auth.mint(&claims).context("minting a token")?))
    }
}
