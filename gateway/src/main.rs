//! `switchboard-gateway`: serve WebSockets, or mint a development token.
//!
//! ```text
//! switchboard-gateway                       # serve (config: defaults, file, SB_ env)
//! switchboard-gateway token --app demo --user alice
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchboard_shared::auth::{Authenticator, TokenClaims};
use switchboard_shared::config::Config;
use switchboard_shared::telemetry;

#[derive(Parser)]
#[command(
    name = "switchboard-gateway",
    version,
    about = "Switchboard WebSocket gateway"
)]
struct Args {
    /// TOML config file (defaults, then this file, then SB_ environment variables).
    #[arg(long, env = "SB_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve WebSockets (the default).
    Serve,
    /// Print a development token signed with the configured HS256 secret.
    Token {
        /// App (tenant) id.
        #[arg(long, default_value = "demo")]
        app: String,
        /// User id (`sub`).
        #[arg(long)]
        user: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 24 * 3600)]
        ttl: u64,
        /// Room grants for private rooms (ids or `prefix*`), repeatable.
        #[arg(long = "room")]
        rooms: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = Config::load(args.config.as_deref()).context("loading configuration")?;
    match args.command.unwrap_or(Command::Serve) {
        Command::Token {
            app,
            user,
            ttl,
            rooms,
        } => {
            let auth = Authenticator::from_config(&cfg.auth)?;
            let mut claims = TokenClaims::new(&app, &user, ttl);
            claims.rooms = rooms;
            let token = auth.mint(&claims)?;
            // Check it the way the gateway will.
            auth.verify(&token)
                .context("the minted token does not verify")?;
            println!("{token}");
            Ok(())
        }
        Command::Serve => {
            telemetry::init(&cfg.log);
            let listener = switchboard_gateway::bind(&cfg).await?;
            let shutdown = switchboard_shared::shutdown_on_signal();
            switchboard_gateway::serve(cfg, listener, shutdown).await?;
            Ok(())
        }
    }
}
