//! `switchboard-workers`: runs one or more worker services.
//!
//! ```text
//! switchboard-workers rooms            # one service (one Deployment each)
//! switchboard-workers all              # every service, for local development
//! switchboard-workers admin            # the admin gRPC API (not part of `all`)
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use switchboard_shared::config::Config;
use switchboard_shared::telemetry;

#[derive(Parser)]
#[command(
    name = "switchboard-workers",
    version,
    about = "Switchboard worker services"
)]
struct Args {
    /// TOML config file (defaults, then this file, then SB_ environment variables).
    #[arg(long, env = "SB_CONFIG")]
    config: Option<PathBuf>,
    /// Services to run: any of `rooms`, `presence`, `notifications`,
    /// `signaling`, `matchmaking`, `admin` (the admin gRPC API), or `all`
    /// (every service but `admin`).
    #[arg(required = true)]
    services: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = Config::load(args.config.as_deref()).context("loading configuration")?;
    telemetry::init(&cfg.log);
    let services: Vec<String> = if args.services.iter().any(|s| s == "all") {
        switchboard_workers::SERVICES
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    } else {
        args.services
    };
    let shutdown = switchboard_shared::shutdown_on_signal();
    switchboard_workers::run(cfg, &services, shutdown).await?;
    Ok(())
}
