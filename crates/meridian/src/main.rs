//! `meridian`: the operator's command: `up` (the whole mesh on one machine), `drill` (a
//! regional failover rehearsal with a report), `token` (mint a dev connection token), `certs`
//! (the relay mesh CA and per-region certificates), `route` (ask the router where an address
//! goes), `chat` (a terminal client that joins a room, prints every event and publishes what
//! you type) and the one-shot clients `members`, `presence`, `send` and `state`. Everything here drives the other crates' binaries and APIs; none of their logic
//! lives in the CLI.
//!
//! This file is the clap tree and the dispatch; each command lives in its module.

mod certs;
mod client;
mod drill;
mod duration;
mod ports;
mod procs;
mod route;
mod tls;
mod token;
mod up;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(version, about = "Meridian signaling mesh: operator tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The load generator of drills and benchmarks: connections, fan-out, direct-message
    /// pairs, join storms, idle connections, HTTP routing load; against Meridian or Socket.IO.
    /// Prints progress and a summary of rates and latency percentiles (the same as
    /// `meridian-loadgen`; `bench/run.sh` runs every scenario against both systems).
    #[command(after_help = "Examples:
  meridian bench fanout --system meridian --server 127.0.0.1:7101,127.0.0.1:7102 --json f.json
  meridian bench joinstorm --system meridian --server 127.0.0.1:7101 --clients 10000
  meridian bench route --name geo-router --server 127.0.0.1:8053 --path '/v1/route?ip={ip}'
  meridian bench fanout --help                  # every option of a scenario")]
    Bench(loadgen::BenchArgs),
    /// Bring up the whole mesh locally: a geo-router, and per region Redis, nodes behind
    /// HAProxy and an active + standby relay, all on loopback.
    #[command(after_help = "Examples:
  meridian up                                   # dev catalogue, ports from regions/*.toml
  meridian up --auto-ports --wan                # free ports; emulated WAN RTTs between regions
  meridian up --auto-ports --dns 127.0.0.1:0 --http 127.0.0.1:0 --state-dir /tmp/mesh
  meridian up --geoip GeoLite2-City.mmdb --relay-grace 5s")]
    Up(up::UpArgs),
    /// Rehearse a regional failover: run a workload, drain or kill a region, measure, restore,
    /// report. Exit status 3 when an SLO is violated.
    #[command(after_help = "Examples:
  # against a running `meridian up --state-dir /tmp/mesh`
  meridian drill --state-dir /tmp/mesh --region eu-central --mode kill
  meridian drill --state-dir /tmp/mesh --region us-east --mode drain --clients 60 --rooms 10 \\
      --duration 2m --report drill.json
  # against a deployment (routing-control drain; your command drains the nodes)
  MERIDIAN_ADMIN_TOKEN=... MERIDIAN_TOKEN_SECRET=... meridian drill --mode drain \\
      --region eu-central --router http://router.internal:8053 --dns router.internal:53 \\
      --zone mesh.example.com --drain-command 'ssh eu-ops drain-nodes' \\
      --restore-command 'ssh eu-ops start-nodes'

See docs/drills.md for what is measured and how to read the report.")]
    Drill(Box<drill::DrillArgs>),
    /// Print a signed connection token (HS256 JWT).
    #[command(after_help = "Examples:
  meridian token --user alice --rooms 'lobby' --publish --secret $SECRET
  meridian token --user bob --rooms 'stage/*,lobby' --ttl 30m --state-dir /tmp/mesh
  MERIDIAN_TOKEN_SECRET=... meridian token --user carol        # every room, with publish")]
    Token(token::TokenArgs),
    /// Write the relay mesh CA and one certificate per region (dev use).
    #[command(after_help = "Examples:
  meridian certs --out certs                        # regions from ./regions
  meridian certs --out certs --regions-list us-east,eu-central --force")]
    Certs(certs::CertsArgs),
    /// Ask the geo-router where a client address goes; prints the ranked answer.
    #[command(after_help = "Examples:
  meridian route --ip 81.20.3.1 --state-dir /tmp/mesh     # a Berlin address, local mesh
  meridian route --ip 103.20.1.1 --router http://127.0.0.1:8053
  meridian route --ip 23.10.4.1 --json")]
    Route(route::RouteArgs),
    /// Connect, join a room, print every event as a JSON line, publish each line typed on
    /// stdin; `/members`, `/send USER TEXT`, `/presence USER`, `/state`, `/set`, `/del`, `/help`.
    /// Follows `reconnect` (resuming where it was); exits at the end of input once every line is
    /// acknowledged. Exit status: 0 done, 1 connection failed or closed, 3 refused (bad token…).
    #[command(after_help = "Examples:
  meridian chat --state-dir /tmp/mesh --region ap-southeast --user alice --room lobby
  meridian chat --url ws://127.0.0.1:7200/v1/ws --room lobby --token \"$(meridian token --user bob --state-dir /tmp/mesh)\"
  echo 'hello' | meridian chat --state-dir /tmp/mesh --user carol --room lobby   # publish and exit")]
    Chat(client::ChatArgs),
    /// List a room's members (user and region), every page.
    #[command(after_help = "Examples:
  meridian members --state-dir /tmp/mesh --user carol --room lobby
  meridian members --url ws://127.0.0.1:7300/v1/ws --token $TOKEN --room lobby --json")]
    Members(client::MembersArgs),
    /// Ask whether users are online (the server answers for users sharing a room with you:
    /// join it with --room).
    #[command(after_help = "Examples:
  meridian presence --state-dir /tmp/mesh --user alice --room lobby bob carol
  meridian presence --url ws://127.0.0.1:7300/v1/ws --token $TOKEN --room lobby bob --json")]
    Presence(client::PresenceArgs),
    /// Send a direct message to every connection of a user. The recipient must share a room with
    /// the sender (join it with --room) unless the token allows direct messages to anyone.
    #[command(after_help = "Examples:
  meridian send --state-dir /tmp/mesh --user alice --room lobby bob 'hi bob'
  meridian send --state-dir /tmp/mesh --user alice --room lobby bob --data '{\"kind\":\"offer\",\"sdp\":\"v=0\"}' --json")]
    Send(client::SendArgs),
    /// Read a room's state, or write or delete one key.
    #[command(after_help = "Examples:
  meridian state --state-dir /tmp/mesh --user alice --room lobby                 # every key
  meridian state --state-dir /tmp/mesh --user alice --room lobby topic --set '\"launch\"'
  meridian state --state-dir /tmp/mesh --user alice --room lobby topic --delete --json")]
    State(client::StateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meridian: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Up(args) => up::run(args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => match loadgen::run(args) {
            Ok(_) => Ok(ExitCode::SUCCESS),
            Err(e @ loadgen::LoadgenError::Config(_)) => {
                eprintln!("meridian bench: {e} (see `meridian bench SCENARIO --help`)");
                Ok(ExitCode::from(2))
            }
            Err(e) => Err(anyhow::anyhow!(e)),
        },
        Command::Drill(args) => Ok(if drill::run(*args)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(3)
        }),
        Command::Token(args) => token::run(args).map(|()| ExitCode::SUCCESS),
        Command::Certs(args) => certs::run(args).map(|()| ExitCode::SUCCESS),
        Command::Route(args) => route::run(args).map(|()| ExitCode::SUCCESS),
        Command::Chat(args) => args.run(),
        Command::Members(args) => args.run(),
        Command::Presence(args) => args.run(),
        Command::Send(args) => args.run(),
        Command::State(args) => args.run(),
    }
}
