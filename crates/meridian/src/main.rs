//! `meridian`: the operator's command: `up` (the whole mesh on one machine), `token` (mint a dev
//! connection token), `chat` (a terminal client that joins a room, prints every event and
//! publishes what you type).

mod procs;
mod up;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use meridian_protocol::token::{issue, Claims, RoomGrant};
use meridian_protocol::UserId;
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(version, about = "Meridian signaling mesh: operator tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Bring up the whole mesh locally: a geo-router, and per region Redis, nodes behind
    /// HAProxy and a relay, all on loopback.
    ///
    /// Examples:
    ///   meridian up                          # dev catalogue, ports from regions/*.toml
    ///   meridian up --auto-ports --wan       # free ports; emulated WAN RTTs between regions
    ///   meridian up --geoip GeoLite2-City.mmdb --state-dir /tmp/mesh
    Up(up::UpArgs),
    /// Print a signed connection token (HS256 JWT).
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// Room grant `PATTERN` (join only) or `PATTERN:publish`; repeatable. Default `*:publish`.
        #[arg(long = "room")]
        rooms: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// The shared token secret.
        #[arg(long, env = "MERIDIAN_TOKEN_SECRET")]
        secret: String,
    },
    /// Connect, join a room, print events, publish each line typed on stdin.
    Chat {
        /// WebSocket URL, e.g. ws://127.0.0.1:7101/v1/ws
        #[arg(long)]
        url: String,
        /// Connection token (see `meridian token`).
        #[arg(long)]
        token: String,
        /// Room to join.
        #[arg(long)]
        room: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(args) => up::run(args),
        Command::Token {
            user,
            rooms,
            ttl,
            secret,
        } => {
            println!("{}", mint(&user, &rooms, ttl, &secret)?);
            Ok(())
        }
        Command::Chat { url, token, room } => {
            tokio::runtime::Runtime::new()?.block_on(chat(&url, &token, &room))
        }
    }
}

pub(crate) fn mint(user: &str, rooms: &[String], ttl: u64, secret: &str) -> Result<String> {
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
    };
    Ok(issue(secret.as_bytes(), &claims)?)
}

async fn chat(url: &str, token: &str, room: &str) -> Result<()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("connect {url}"))?;
    ws.send(Message::Text(
        json!({"id": 1, "op": "hello", "token": token})
            .to_string()
            .into(),
    ))
    .await?;
    ws.send(Message::Text(
        json!({"id": 2, "op": "join", "room": room})
            .to_string()
            .into(),
    ))
    .await?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut next_id = 3u64;
    let mut stdin_open = true;
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => println!("{t}"),
                Some(Ok(Message::Close(f))) => { println!("closed: {f:?}"); return Ok(()) }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("connection error: {e}"),
                None => return Ok(()),
            },
            line = lines.next_line(), if stdin_open => match line? {
                Some(text) => {
                    next_id += 1;
                    let req = json!({"id": next_id, "op": "publish", "room": room, "data": {"text": text}});
                    ws.send(Message::Text(req.to_string().into())).await?;
                }
                None => stdin_open = false,
            },
        }
    }
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
    }
}
