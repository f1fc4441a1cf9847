//! `switchboard-admin`: the command line for the admin gRPC API
//! (docs/operations.md), and a minter of development client tokens.
//!
//! ```text
//! switchboard-admin --addr http://127.0.0.1:7070 gateways
//! SWITCHBOARD_ADMIN_TOKEN=... switchboard-admin --json kick --app demo --user alice --reason "spam"
//! switchboard-admin token --app demo --user alice
//! ```
//!
//! Exit codes: 0 ok, 1 any other failure, 2 usage or INVALID_ARGUMENT,
//! 3 UNAUTHENTICATED, 4 NOT_FOUND, 5 UNAVAILABLE (or the server cannot be
//! reached), 6 UNIMPLEMENTED.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;
use switchboard_proto::admin::admin_client::AdminClient;
use switchboard_proto::admin::publish_request::Target;
use switchboard_proto::admin::*;
use switchboard_shared::auth::{Authenticator, TokenClaims};
use switchboard_shared::config::Config;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};

#[derive(Parser)]
#[command(
    name = "switchboard-admin",
    version,
    about = "Switchboard admin API client"
)]
struct Args {
    /// The admin API's address.
    #[arg(
        long,
        env = "SWITCHBOARD_ADMIN_ADDR",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    addr: String,
    /// Bearer token (one of the server's `admin.tokens`).
    #[arg(
        long,
        env = "SWITCHBOARD_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
    /// Print the answer as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// TOML config file, for `token` (the HS256 secret).
    #[arg(long, env = "SB_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List gateways, unresponsive ones included.
    Gateways {
        #[arg(long, default_value_t = 0)]
        page_size: u32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Per-app counts (connections, rooms, notifications, tickets) and calls.
    Stats {
        /// Apps to report (repeatable); none: every app seen.
        #[arg(long = "app")]
        apps: Vec<String>,
    },
    /// A user's live connections.
    Conns {
        #[arg(long)]
        app: String,
        #[arg(long)]
        user: String,
    },
    /// Close every connection of a user (close code 4000).
    Kick {
        #[arg(long)]
        app: String,
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Close one connection (close code 4000).
    KickConn {
        #[arg(long)]
        gateway: String,
        #[arg(long)]
        conn: u64,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Push an `admin` event to a room, a user or a whole app.
    Publish {
        #[arg(long)]
        app: String,
        #[arg(long, group = "target")]
        room: Option<String>,
        #[arg(long, group = "target")]
        user: Option<String>,
        #[arg(long, group = "target")]
        app_wide: bool,
        /// The event's data, JSON.
        #[arg(long, default_value = "null")]
        data: String,
    },
    /// Send a notification (the JSON request of sb.api.notifications.send).
    Notify {
        /// e.g. '{"app":"demo","to":{"user":"alice"},"type":"hello"}'
        request: String,
    },
    /// A room's metadata and counts.
    Room {
        #[arg(long)]
        app: String,
        #[arg(long)]
        room: String,
    },
    /// A room's member connections.
    Members {
        #[arg(long)]
        app: String,
        #[arg(long)]
        room: String,
    },
    /// Matchmaking queue lengths.
    Queues {
        #[arg(long = "app")]
        apps: Vec<String>,
    },
    /// Drain a gateway as on SIGTERM; it exits afterwards.
    Drain {
        #[arg(long)]
        gateway: String,
    },
    /// Print a development client token signed with the configured HS256
    /// secret (no server needed).
    Token {
        #[arg(long, default_value = "demo")]
        app: String,
        #[arg(long)]
        user: String,
        #[arg(long, default_value_t = 24 * 3600)]
        ttl: u64,
        #[arg(long = "room")]
        rooms: Vec<String>,
    },
}

/// What a failed call exits with (see the header).
fn exit_code(s: &Status) -> u8 {
    match s.code() {
        Code::InvalidArgument => 2,
        Code::Unauthenticated | Code::PermissionDenied => 3,
        Code::NotFound => 4,
        Code::Unavailable | Code::DeadlineExceeded => 5,
        Code::Unimplemented => 6,
        _ => 1,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(s) = e.downcast_ref::<Status>() {
                eprintln!("error: {:?}: {}", s.code(), s.message());
                ExitCode::from(exit_code(s))
            } else if e.downcast_ref::<tonic::transport::Error>().is_some() {
                eprintln!("error: cannot reach the admin API: {e:#}");
                ExitCode::from(5)
            } else {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Command::Token {
        app,
        user,
        ttl,
        rooms,
    } = &args.command
    {
        let cfg = Config::load(args.config.as_deref()).context("loading configuration")?;
        let auth = Authenticator::from_config(&cfg.auth)?;
        let mut claims = TokenClaims::new(app, user, *ttl);
        claims.rooms = rooms.clone();
        let token = auth.mint(&claims)?;
        auth.verify(&token)
            .context("the minted token does not verify")?;
        println!("{token}");
        return Ok(());
    }
    let channel = Channel::from_shared(args.addr.clone())
        .context("--addr")?
        .connect()
        .await?;
    let bearer: Option<MetadataValue<_>> = match &args.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .context("--token is not a valid header value")?,
        ),
        None => None,
    };
    let mut api = AdminClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        if let Some(b) = &bearer {
            req.metadata_mut().insert("authorization", b.clone());
        }
        Ok(req)
    });
    let out = Output { json: args.json };
    match args.command {
        Command::Gateways {
            page_size,
            page_token,
        } => {
            let r = api
                .list_gateways(ListGatewaysRequest {
                    page_size,
                    page_token,
                })
                .await?
                .into_inner();
            out.show(&r, || {
                let rows = r.gateways.iter().map(|g| {
                    vec![
                        g.id.clone(),
                        g.address.clone(),
                        g.connections.to_string(),
                        secs(g.uptime_ms),
                        state(g),
                    ]
                });
                table(&["GATEWAY", "ADDRESS", "CONNS", "UPTIME", "STATE"], rows);
                next(&r.next_page_token);
            })
        }
        Command::Stats { apps } => {
            let r = api
                .cluster_stats(ClusterStatsRequest {
                    apps,
                    ..Default::default()
                })
                .await?
                .into_inner();
            out.show(&r, || {
                let rows = r.apps.iter().map(|a| {
                    vec![
                        a.app.clone(),
                        a.connections.to_string(),
                        a.live_rooms.to_string(),
                        a.pending_notifications.to_string(),
                        a.waiting_tickets.to_string(),
                    ]
                });
                table(&["APP", "CONNS", "ROOMS", "NOTIFICATIONS", "TICKETS"], rows);
                println!(
                    "calls ringing {}, in grace {}; gateways answered {}, unresponsive {}",
                    r.calls_ringing, r.calls_in_grace, r.gateways_answered, r.gateways_unresponsive
                );
            })
        }
        Command::Conns { app, user } => {
            let r = api
                .user_connections(UserConnectionsRequest {
                    app,
                    user,
                    ..Default::default()
                })
                .await?
                .into_inner();
            out.show(&r, || {
                let rows = r.connections.iter().map(|c| {
                    vec![
                        c.gateway.clone(),
                        c.conn.to_string(),
                        c.since_ms.to_string(),
                    ]
                });
                table(&["GATEWAY", "CONN", "SINCE_MS"], rows);
            })
        }
        Command::Kick { app, user, reason } => {
            let r = api
                .disconnect_user(DisconnectUserRequest { app, user, reason })
                .await?
                .into_inner();
            out.show(&r, || disconnected(&r))
        }
        Command::KickConn {
            gateway,
            conn,
            reason,
        } => {
            let r = api
                .disconnect_connection(DisconnectConnectionRequest {
                    gateway,
                    conn,
                    reason,
                })
                .await?
                .into_inner();
            out.show(&r, || disconnected(&r))
        }
        Command::Publish {
            app,
            room,
            user,
            app_wide,
            data,
        } => {
            let target = match (room, user) {
                (Some(r), _) => Some(Target::Room(r)),
                (_, Some(u)) => Some(Target::User(u)),
                _ => app_wide.then_some(Target::AppWide(true)),
            };
            let r = api
                .publish(PublishRequest {
                    app,
                    target,
                    data_json: data,
                })
                .await?
                .into_inner();
            out.show(&r, || println!("addressed {}", r.addressed))
        }
        Command::Notify { request } => {
            let r = api
                .send_notification(SendNotificationRequest {
                    request_json: request,
                })
                .await?
                .into_inner();
            out.show(&r, || println!("{}", r.reply_json))
        }
        Command::Room { app, room } => {
            let r = api
                .room_info(RoomInfoRequest { app, room })
                .await?
                .into_inner();
            out.show(&r, || {
                let rows = [
                    ("room", r.room.clone()),
                    ("created_by", r.created_by.clone()),
                    ("created_at_ms", r.created_at_ms.to_string()),
                    ("private", r.private.to_string()),
                    ("max_members", r.max_members.to_string()),
                    ("seq", r.seq.to_string()),
                    ("member_users", r.member_users.to_string()),
                    ("member_connections", r.member_connections.to_string()),
                    ("gateways", r.gateways.to_string()),
                    ("history_len", r.history_len.to_string()),
                ];
                table(
                    &["FIELD", "VALUE"],
                    rows.into_iter().map(|(k, v)| vec![k.to_owned(), v]),
                );
            })
        }
        Command::Members { app, room } => {
            let r = api
                .list_room_members(ListRoomMembersRequest {
                    app,
                    room,
                    ..Default::default()
                })
                .await?
                .into_inner();
            out.show(&r, || {
                let rows = r
                    .members
                    .iter()
                    .map(|m| vec![m.user.clone(), m.gateway.clone(), m.conn.to_string()]);
                table(&["USER", "GATEWAY", "CONN"], rows);
                next(&r.next_page_token);
            })
        }
        Command::Queues { apps } => {
            let r = api
                .matchmaking_stats(MatchmakingStatsRequest { apps })
                .await?
                .into_inner();
            out.show(&r, || {
                let rows = r
                    .queues
                    .iter()
                    .map(|q| vec![q.app.clone(), q.waiting_tickets.to_string()]);
                table(&["APP", "WAITING"], rows);
            })
        }
        Command::Drain { gateway } => {
            let r = api
                .drain_gateway(DrainGatewayRequest { gateway })
                .await?
                .into_inner();
            out.show(&r, || {
                println!(
                    "draining: {} connections closed with 1012 over {} ms, then the gateway exits",
                    r.connections, r.drain_window_ms
                );
            })
        }
        Command::Token { .. } => Ok(()),
    }
}

/// Table or JSON.
struct Output {
    json: bool,
}

impl Output {
    fn show<T: Serialize>(&self, v: &T, table: impl FnOnce()) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v)?);
        } else {
            table();
        }
        Ok(())
    }
}

fn state(g: &Gateway) -> String {
    match (g.unresponsive, g.draining, g.ready) {
        (true, _, _) => "unresponsive".into(),
        (_, true, _) => "draining".into(),
        (_, _, true) => "ready".into(),
        _ => "not ready".into(),
    }
}

fn secs(ms: u64) -> String {
    format!("{}s", ms / 1000)
}

fn next(token: &str) {
    if !token.is_empty() {
        println!("more: --page-token {token}");
    }
}

fn disconnected(r: &DisconnectResponse) {
    println!("closed {} connection(s)", r.closed);
    if !r.unresponsive.is_empty() {
        println!(
            "gateways that did not answer: {}",
            r.unresponsive.join(", ")
        );
    }
}

/// Prints rows under headers, columns padded to their widest cell.
fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}
