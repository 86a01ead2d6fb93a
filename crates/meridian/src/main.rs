//! `meridian`: the operator's command: `up` (the whole mesh on one machine), `drill` (a
//! regional failover rehearsal with a report), `token` (mint a dev connection token), `certs`
//! (the relay mesh CA and per-region certificates), `route` (ask the router where an address
//! goes), `chat` (a terminal client that joins a room, prints every event and publishes what
//! you type) and the one-shot clients `members`, `presence`, `send` and `state`. Everything here drives the other crates' binaries and APIs; none of their logic
//! lives in the CLI.

mod client;
mod drill;
mod ports;
mod procs;
mod tls;
mod up;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use meridian_protocol::token::{issue, Claims, RoomGrant};
use meridian_protocol::UserId;
use serde_json::json;

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
    Token(TokenArgs),
    /// Write the relay mesh CA and one certificate per region (dev use).
    #[command(after_help = "Examples:
  meridian certs --out certs                        # regions from ./regions
  meridian certs --out certs --regions-list us-east,eu-central --force")]
    Certs {
        /// Output directory (ca.pem, ca.key.pem, <region>.cert.pem, <region>.key.pem).
        #[arg(long)]
        out: PathBuf,
        /// The region catalogue whose regions get certificates.
        #[arg(long, default_value = "regions")]
        regions: PathBuf,
        /// Region names instead of a catalogue (comma-separated).
        #[arg(long, value_delimiter = ',')]
        regions_list: Vec<String>,
        /// Replace existing files (a new CA invalidates every earlier certificate).
        #[arg(long)]
        force: bool,
    },
    /// Ask the geo-router where a client address goes; prints the ranked answer.
    #[command(after_help = "Examples:
  meridian route --ip 81.20.3.1 --state-dir /tmp/mesh     # a Berlin address, local mesh
  meridian route --ip 103.20.1.1 --router http://127.0.0.1:8053
  meridian route --ip 23.10.4.1 --json")]
    Route {
        /// The client address to route.
        #[arg(long)]
        ip: IpAddr,
        /// The router's HTTP API (default: from --state-dir/--endpoints, else
        /// http://127.0.0.1:8053). It must allow `?ip=` (allow_debug_ip = true).
        #[arg(long)]
        router: Option<String>,
        /// Also ask this DNS server (default: the local mesh's) with the address's ECS network.
        #[arg(long)]
        dns: Option<std::net::SocketAddr>,
        /// The state directory of a running `meridian up`.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// `endpoints.json` of a running `meridian up`.
        #[arg(long)]
        endpoints: Option<PathBuf>,
        /// Print the router's JSON as is.
        #[arg(long)]
        json: bool,
    },
    /// Connect, join a room, print every event as a JSON line, publish each line typed on
    /// stdin; `/members`, `/send USER TEXT`, `/presence USER`, `/state`, `/set`, `/del`, `/help`.
    /// Follows `reconnect` (resuming where it was); exits at the end of input once every line is
    /// acknowledged. Exit status: 0 done, 1 connection failed or closed, 3 refused (bad token…).
    #[command(after_help = "Examples:
  meridian chat --state-dir /tmp/mesh --region ap-southeast --user alice --room lobby
  meridian chat --url ws://127.0.0.1:7200/v1/ws --room lobby --token \"$(meridian token --user bob --state-dir /tmp/mesh)\"
  echo 'hello' | meridian chat --state-dir /tmp/mesh --user carol --room lobby   # publish and exit")]
    Chat {
        #[command(flatten)]
        connect: client::ConnectArgs,
        /// Room to join.
        #[arg(long)]
        room: String,
        /// Exit when the server asks to reconnect or the connection is lost, instead of
        /// reconnecting to the same URL and resuming.
        #[arg(long)]
        no_reconnect: bool,
    },
    /// List a room's members (user and region), every page.
    #[command(after_help = "Examples:
  meridian members --state-dir /tmp/mesh --user carol --room lobby
  meridian members --url ws://127.0.0.1:7300/v1/ws --token $TOKEN --room lobby --json")]
    Members {
        #[command(flatten)]
        connect: client::ConnectArgs,
        /// The room (the token must cover it; joining is not needed).
        #[arg(long)]
        room: String,
        /// Print the JSON result.
        #[arg(long)]
        json: bool,
    },
    /// Ask whether users are online (the server answers for users sharing a room with you:
    /// join it with --room).
    #[command(after_help = "Examples:
  meridian presence --state-dir /tmp/mesh --user alice --room lobby bob carol
  meridian presence --url ws://127.0.0.1:7300/v1/ws --token $TOKEN --room lobby bob --json")]
    Presence {
        #[command(flatten)]
        connect: client::ConnectArgs,
        /// Rooms to join first (repeatable).
        #[arg(long = "room")]
        rooms: Vec<String>,
        /// The users to ask about.
        #[arg(required = true)]
        users: Vec<String>,
        /// Print the JSON result.
        #[arg(long)]
        json: bool,
    },
    /// Send a direct message to every connection of a user. The recipient must share a room with
    /// the sender (join it with --room) unless the token allows direct messages to anyone.
    #[command(after_help = "Examples:
  meridian send --state-dir /tmp/mesh --user alice --room lobby bob 'hi bob'
  meridian send --state-dir /tmp/mesh --user alice --room lobby bob --data '{\"kind\":\"offer\",\"sdp\":\"v=0\"}' --json")]
    Send {
        #[command(flatten)]
        connect: client::ConnectArgs,
        /// Rooms to join first (repeatable).
        #[arg(long = "room")]
        rooms: Vec<String>,
        /// The recipient.
        to: String,
        /// The message text (sent as {"text": …}).
        #[arg(required_unless_present = "data")]
        text: Vec<String>,
        /// Send this JSON value as the message instead of text.
        #[arg(long, conflicts_with = "text")]
        data: Option<String>,
        /// Print the JSON result.
        #[arg(long)]
        json: bool,
    },
    /// Read a room's state, or write or delete one key.
    #[command(after_help = "Examples:
  meridian state --state-dir /tmp/mesh --user alice --room lobby                 # every key
  meridian state --state-dir /tmp/mesh --user alice --room lobby topic --set '\"launch\"'
  meridian state --state-dir /tmp/mesh --user alice --room lobby topic --delete --json")]
    State {
        #[command(flatten)]
        connect: client::ConnectArgs,
        /// The room.
        #[arg(long)]
        room: String,
        /// One key (default: every key).
        key: Option<String>,
        /// Write KEY with this value (JSON, else taken as text).
        #[arg(long, requires = "key", conflicts_with = "delete")]
        set: Option<String>,
        /// Delete KEY.
        #[arg(long, requires = "key")]
        delete: bool,
        /// Compare-and-set: the key's current version must be this (0: must not exist).
        #[arg(long)]
        if_version: Option<u64>,
        /// Print the JSON result.
        #[arg(long)]
        json: bool,
    },
}

/// `meridian token` options.
#[derive(clap::Args, Debug)]
struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    user: String,
    /// Room patterns (comma-separated or repeated): `lobby`, `stage/*`, `*`. A pattern may end
    /// in `:publish` to allow publishing in it alone. Without `--rooms`: `*` with publish.
    #[arg(long = "rooms", alias = "room", value_delimiter = ',')]
    rooms: Vec<String>,
    /// Allow publishing (publish, state_set, state_delete) in every pattern given.
    #[arg(long)]
    publish: bool,
    /// Lifetime: `3600`, `90s`, `30m`, `24h`.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
    /// Allow direct messages to, and presence of, users who share no room with this one (the
    /// token claim `dm`; for backends and support tools, not ordinary users).
    #[arg(long)]
    dm: bool,
    /// The shared token secret (default: from --state-dir/--endpoints of a local mesh).
    #[arg(long, env = "MERIDIAN_TOKEN_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// The state directory of a running `meridian up` (its token secret).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// `endpoints.json` of a running `meridian up`.
    #[arg(long)]
    endpoints: Option<PathBuf>,
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
        Command::Token(t) => {
            let secret = match (&t.secret, drill::mesh::load_endpoints(t.endpoints.as_deref(), t.state_dir.as_deref())?) {
                (Some(s), _) => s.clone(),
                (None, Some(e)) => e.token_secret,
                (None, None) => bail!(
                    "no token secret: pass --secret (or MERIDIAN_TOKEN_SECRET), or --state-dir of a \
                     running `meridian up`"
                ),
            };
            let rooms: Vec<String> = if t.publish {
                let patterns = if t.rooms.is_empty() {
                    vec!["*".to_owned()]
                } else {
                    t.rooms.clone()
                };
                patterns
                    .into_iter()
                    .map(|r| {
                        if r.ends_with(":publish") {
                            r
                        } else {
                            format!("{r}:publish")
                        }
                    })
                    .collect()
            } else if t.rooms.is_empty() {
                Vec::new()
            } else {
                t.rooms.clone()
            };
            println!(
                "{}",
                mint_with(&t.user, &rooms, t.ttl.as_secs().max(1), &secret, t.dm)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs {
            out,
            regions,
            regions_list,
            force,
        } => {
            let names: Vec<String> = if regions_list.is_empty() {
                meridian_catalogue::load_dir(&regions)
                    .with_context(|| {
                        format!(
                            "reading the catalogue {} (or name the regions with --regions-list)",
                            regions.display()
                        )
                    })?
                    .keys()
                    .cloned()
                    .collect()
            } else {
                regions_list
            };
            if names.is_empty() {
                bail!("no regions: the catalogue is empty; name them with --regions-list");
            }
            interregion_relay::certs::generate_dev_mesh(
                names.iter().map(String::as_str),
                &out,
                force,
            )
            .with_context(|| format!("writing certificates to {}", out.display()))?;
            println!("mesh CA: {}", out.join("ca.pem").display());
            for name in &names {
                println!(
                    "{name}: {} {}",
                    out.join(interregion_relay::certs::region_cert_file(name))
                        .display(),
                    out.join(interregion_relay::certs::region_key_file(name))
                        .display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Route {
            ip,
            router,
            dns,
            state_dir,
            endpoints,
            json,
        } => {
            let local = drill::mesh::load_endpoints(endpoints.as_deref(), state_dir.as_deref())?;
            let base = router
                .or_else(|| local.as_ref().map(|e| format!("http://{}", e.router.http)))
                .unwrap_or_else(|| "http://127.0.0.1:8053".into());
            let dns = dns.or(local.as_ref().map(|e| e.router.dns));
            let zone = local
                .as_ref()
                .map_or_else(|| "mesh.localhost.".to_owned(), |e| e.zone.clone());
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(route(&base, ip, dns, &zone, json))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Chat {
            connect,
            room,
            no_reconnect,
        } => {
            let (url, token) = connect.resolve()?;
            let options = client::ChatOptions {
                room,
                reconnect: !no_reconnect,
            };
            let result = tokio::runtime::Runtime::new()?
                .block_on(async { client::chat(&url, &token, &options).await });
            Ok(client_exit(
                "meridian chat",
                result.map(|()| None),
                false,
                "",
            ))
        }
        Command::Members {
            connect,
            room,
            json,
        } => {
            let (url, token) = connect.resolve()?;
            let result = client_runtime()?.block_on(client::members(&url, &token, &room));
            Ok(client_exit(
                "meridian members",
                result.map(Some),
                json,
                "members",
            ))
        }
        Command::Presence {
            connect,
            rooms,
            users,
            json,
        } => {
            let (url, token) = connect.resolve()?;
            let result = client_runtime()?.block_on(client::presence(&url, &token, &rooms, &users));
            Ok(client_exit(
                "meridian presence",
                result.map(Some),
                json,
                "presence",
            ))
        }
        Command::Send {
            connect,
            rooms,
            to,
            text,
            data,
            json,
        } => {
            let (url, token) = connect.resolve()?;
            let data = match data {
                Some(d) => {
                    serde_json::from_str(&d).with_context(|| format!("--data {d:?} is not JSON"))?
                }
                None => json!({"text": text.join(" ")}),
            };
            let result = client_runtime()?.block_on(client::send(&url, &token, &rooms, &to, data));
            Ok(client_exit("meridian send", result.map(Some), json, "send"))
        }
        Command::State {
            connect,
            room,
            key,
            set,
            delete,
            if_version,
            json,
        } => {
            let (url, token) = connect.resolve()?;
            let op = match (key, set, delete) {
                (Some(key), Some(value), _) => client::StateOp::Set {
                    key,
                    value: client::loose_json(&value),
                    if_version,
                },
                (Some(key), None, true) => client::StateOp::Delete { key, if_version },
                (key, _, _) => client::StateOp::Get(key),
            };
            let result = client_runtime()?.block_on(client::state(&url, &token, &room, op));
            Ok(client_exit(
                "meridian state",
                result.map(Some),
                json,
                "state",
            ))
        }
    }
}

fn client_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Prints a client command's result (JSON or for people) or its error; the exit status.
fn client_exit(
    name: &str,
    result: Result<Option<serde_json::Value>, client::ClientError>,
    json: bool,
    kind: &str,
) -> ExitCode {
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(value)) => {
            if json {
                println!("{value}");
            } else {
                print!("{}", client::human(kind, &value));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn route(
    base: &str,
    ip: IpAddr,
    dns: Option<std::net::SocketAddr>,
    zone: &str,
    json: bool,
) -> Result<()> {
    let router = drill::mesh::RouterApi::new(base)?;
    let answer = router.route(ip).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer.raw)?);
        return Ok(());
    }
    let location = &answer.client["location"];
    println!(
        "client {} (network {}, {}{})",
        ip,
        answer.client["network"].as_str().unwrap_or("?"),
        location["country"].as_str().unwrap_or("unknown location"),
        location["continent"]
            .as_str()
            .map(|c| format!(", {c}"))
            .unwrap_or_default()
    );
    if answer.regions.is_empty() {
        println!("no region can take users (503)");
    }
    println!(
        "  {:<4} {:<16} {:>10} {:<9} ws_url",
        "rank", "region", "est. RTT", "reason"
    );
    for (i, r) in answer.regions.iter().enumerate() {
        println!(
            "  {:<4} {:<16} {:>8.1}ms {:<9} {}",
            i + 1,
            r.name,
            r.estimated_rtt_ms,
            r.reason,
            r.ws_url
        );
    }
    if answer.all_down {
        println!("  (every region is down: this is the least-bad answer)");
    }
    if let Some(scope) = answer.scope {
        println!("  ECS scope for DNS answers: /{scope}");
    }
    if let Some(server) = dns {
        let qname = drill::mesh::ws_name(zone);
        let subnet = drill::mesh::client_network(ip);
        match drill::mesh::dns_addresses(server, &qname, Some(subnet)).await {
            Ok(addresses) => println!(
                "DNS {qname} via {server} with ECS {}/{}: {} (the region's public address; \
                 clients connect to its ws_url)",
                subnet.0,
                subnet.1,
                if addresses.is_empty() {
                    "no address".to_owned()
                } else {
                    addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            Err(e) => println!("DNS {qname} via {server}: {e:#}"),
        }
    }
    Ok(())
}

/// Parses `500ms`, `30s`, `2m`, `1h` or a plain number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write e.g. 500ms, 30s, 2m or 1h"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}; use ms, s, m or h"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{text:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub(crate) fn mint(user: &str, rooms: &[String], ttl: u64, secret: &str) -> Result<String> {
    mint_with(user, rooms, ttl, secret, false)
}

/// [`mint`], and with `dm` the claim that lets the user send direct messages to, and see the
/// presence of, users it shares no room with (docs/protocol.md `send`).
pub(crate) fn mint_with(
    user: &str,
    rooms: &[String],
    ttl: u64,
    secret: &str,
    dm: bool,
) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let grants = if rooms.is_empty() {
        vec![RoomGrant {
            pattern: "*".into(),
            publish: true,
        }]
    } else {
        rooms
            .iter()
            .map(|r| match r.strip_suffix(":publish") {
                Some(p) => RoomGrant {
                    pattern: p.into(),
                    publish: true,
                },
                None => RoomGrant {
                    pattern: r.clone(),
                    publish: false,
                },
            })
            .collect()
    };
    let claims = Claims {
        sub: UserId::new(user).context("--user")?,
        exp: now + ttl,
        rooms: grants,
        nbf: None,
        iat: Some(now),
        dm,
    };
    Ok(issue(secret.as_bytes(), &claims)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_protocol::token::TokenVerifier;

    #[test]
    fn minted_tokens_verify_with_grants() {
        let t = mint(
            "alice",
            &["lobby/*:publish".into(), "stage".into()],
            60,
            "0123456789abcdef",
        )
        .unwrap();
        let c = TokenVerifier::new(b"0123456789abcdef").verify(&t).unwrap();
        assert_eq!(c.rooms.len(), 2);
        assert!(c.rooms[0].publish && !c.rooms[1].publish);
        assert!(mint("bad user", &[], 60, "s").is_err());
        let dm = mint_with("support", &[], 60, "0123456789abcdef", true).unwrap();
        let claims = TokenVerifier::new(b"0123456789abcdef").verify(&dm).unwrap();
        assert!(claims.dm, "--dm sets the claim");
        assert!(!c.dm, "without --dm the claim is off");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
