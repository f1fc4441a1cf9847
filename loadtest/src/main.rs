//! `switchboard-loadtest`: load scenarios, baseline servers and the benchmark
//! suite behind `make bench`.
//!
//! ```text
//! switchboard-loadtest connect --url ws://127.0.0.1:18080/ws --connections 10000 --server-pid <gw>
//! switchboard-loadtest pairs   --url ... --pairs 250 --rate 4
//! switchboard-loadtest fanout  --url ... --members 1000 --rate 100
//! switchboard-loadtest dm      --url ... --users 500 --rooms 20 --server-pid <gw>
//! switchboard-loadtest rtt     --url ... --connections 32 [--rate 5000] [--op rooms.info]
//! switchboard-loadtest matchmaking --url ... --redis-url redis://127.0.0.1:6379 --waiting 100000
//! switchboard-loadtest reconnect --gateway-bin target/release/switchboard-gateway \
//!     --workers-bin target/release/switchboard-workers --nats-url ... --redis-url ... --clients 10000
//! switchboard-loadtest b1-server --listen 127.0.0.1:18081
//! switchboard-loadtest b2-relay  --listen 127.0.0.1:18082 --nats nats://127.0.0.1:14223
//! switchboard-loadtest b2-echo-worker --nats nats://127.0.0.1:14223
//! switchboard-loadtest soak --gateway-bin ... --workers-bin ... [--seconds 180] [--seed N]
//! switchboard-loadtest suite --out loadtest/results/NAME --sb-url ... --b1-url ...
//! ```
//!
//! Codemap: [`net`] (loopback-only sockets and the client handshake),
//! [`wire`] (each target's frames), [`conn`] (one client connection's
//! tasks), [`metrics`] (HDR histograms, `/proc` sampling), [`scenarios`],
//! [`servers`] (B1, B2), [`suite`] and [`report`]; [`soak`] (faults on a
//! schedule under load, with an invariant checker) and [`rng`].
//!
//! Only 127.0.0.0/8 is ever contacted or listened on; every scenario is
//! bounded in connections, messages and time.
#![forbid(unsafe_code)]

mod conn;
mod metrics;
mod net;
mod report;
mod rng;
mod scenarios;
mod servers;
mod soak;
mod suite;
mod tokens;
mod wire;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "switchboard-loadtest",
    version,
    about = "Switchboard load generator, baselines and benchmark suite (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ramp N connections, hold them; handshake rate and server RSS per connection.
    Connect(scenarios::connect::Args),
    /// Couples in two-member rooms sending at a set rate; latency and delivery.
    Pairs(scenarios::pairs::Args),
    /// One room, M members, one publisher; deliveries per second and latency.
    Fanout(scenarios::fanout::Args),
    /// N users each in K small rooms (distinct, then shared): gateway RSS per membership.
    Dm(scenarios::dm::Args),
    /// Request → reply round trips, closed or open loop.
    Rtt(scenarios::rtt::Args),
    /// Matching with many tickets waiting (seeded in Redis): newcomer latency, tickets/s.
    Matchmaking(scenarios::matchmaking::Args),
    /// A gateway killed under load: its clients' resume times, messages missed.
    Reconnect(scenarios::reconnect::Args),
    /// A whole cluster under load for a bounded time with faults on a seeded
    /// schedule and an invariant checker (`make soak`); non-zero on a violation.
    Soak(soak::Args),
    /// Every scenario against every target; writes the report.
    Suite(Box<suite::Args>),
    /// Render a suite's Markdown report again from its JSON.
    Report(suite::RenderArgs),
    /// B1: bare fastwebsockets echo/broadcast server.
    B1Server {
        #[arg(long, default_value = "127.0.0.1:18081")]
        listen: String,
    },
    /// B2: the relay (WebSocket ↔ NATS).
    B2Relay {
        #[arg(long, default_value = "127.0.0.1:18082")]
        listen: String,
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        /// Name each reply subject after its request, as Switchboard does
        /// (an experiment; the baseline uses one reply subject per connection).
        #[arg(long)]
        reply_per_request: bool,
    },
    /// B2: the trivial echo worker.
    B2EchoWorker {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
    },
    /// A share of a multi-process `connect` (started by `connect` itself).
    #[command(hide = true)]
    ConnectChild(scenarios::connect::ChildArgs),
}

pub fn check_nats_url(url: &str) -> anyhow::Result<()> {
    for part in url.split(',') {
        let hostport = part
            .trim()
            .trim_start_matches("nats://")
            .split('/')
            .next()
            .unwrap_or_default();
        let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
        let ip: std::net::IpAddr = if host == "localhost" {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        } else {
            host.parse()
                .map_err(|_| anyhow::anyhow!("{part}: NATS must be on a loopback IP"))?
        };
        net::check_loopback(ip)?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Connect(a) => scenarios::connect::main(a).await,
        Command::Pairs(a) => scenarios::pairs::main(a).await,
        Command::Fanout(a) => scenarios::fanout::main(a).await,
        Command::Dm(a) => scenarios::dm::main(a).await,
        Command::Rtt(a) => scenarios::rtt::main(a).await,
        Command::Matchmaking(a) => scenarios::matchmaking::main(a).await,
        Command::Reconnect(a) => scenarios::reconnect::main(a).await,
        Command::Soak(a) => soak::main(a).await,
        Command::Suite(a) => suite::main(*a).await,
        Command::Report(a) => suite::render(&a),
        Command::B1Server { listen } => servers::b1::run(net::loopback_listen(&listen)?).await,
        Command::B2Relay {
            listen,
            nats,
            reply_per_request,
        } => {
            check_nats_url(&nats)?;
            servers::b2::relay(net::loopback_listen(&listen)?, &nats, reply_per_request).await
        }
        Command::B2EchoWorker { nats } => {
            check_nats_url(&nats)?;
            servers::b2::echo_worker(&nats).await
        }
        Command::ConnectChild(a) => scenarios::connect::child(a).await,
    }
}
