//! The clap arguments of the client commands (`chat`, `members`, `presence`, `send`, `state`)
//! and how each one runs, prints and exits.

use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::json;

use super::{ClientError, ConnectArgs};

/// `meridian chat` options.
#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Room to join.
    #[arg(long)]
    room: String,
    /// Exit when the server asks to reconnect or the connection is lost, instead of
    /// reconnecting to the same URL and resuming.
    #[arg(long)]
    no_reconnect: bool,
}

impl ChatArgs {
    /// Runs the chat until the end of input; the exit status.
    pub fn run(self) -> Result<ExitCode> {
        let (url, token) = self.connect.resolve()?;
        let options = super::chat::ChatOptions {
            room: self.room,
            reconnect: !self.no_reconnect,
        };
        let result = tokio::runtime::Runtime::new()?
            .block_on(async { super::chat::chat(&url, &token, &options).await });
        Ok(client_exit(
            "meridian chat",
            result.map(|()| None),
            false,
            "",
        ))
    }
}

/// `meridian members` options.
#[derive(clap::Args, Debug)]
pub struct MembersArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The room (the token must cover it; joining is not needed).
    #[arg(long)]
    room: String,
    /// Print the JSON result.
    #[arg(long)]
    json: bool,
}

impl MembersArgs {
    /// Lists the members; the exit status.
    pub fn run(self) -> Result<ExitCode> {
        let (url, token) = self.connect.resolve()?;
        let result = client_runtime()?.block_on(super::members(&url, &token, &self.room));
        Ok(client_exit(
            "meridian members",
            result.map(Some),
            self.json,
            "members",
        ))
    }
}

/// `meridian presence` options.
#[derive(clap::Args, Debug)]
pub struct PresenceArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Rooms to join first (repeatable).
    #[arg(long = "room")]
    rooms: Vec<String>,
    /// The users to ask about.
    #[arg(required = true)]
    users: Vec<String>,
    /// Print the JSON result.
    #[arg(long)]
    json: bool,
}

impl PresenceArgs {
    /// Asks for the users' presence; the exit status.
    pub fn run(self) -> Result<ExitCode> {
        let (url, token) = self.connect.resolve()?;
        let result =
            client_runtime()?.block_on(super::presence(&url, &token, &self.rooms, &self.users));
        Ok(client_exit(
            "meridian presence",
            result.map(Some),
            self.json,
            "presence",
        ))
    }
}

/// `meridian send` options.
#[derive(clap::Args, Debug)]
pub struct SendArgs {
    #[command(flatten)]
    connect: ConnectArgs,
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
}

impl SendArgs {
    /// Sends the direct message; the exit status.
    pub fn run(self) -> Result<ExitCode> {
        let (url, token) = self.connect.resolve()?;
        let data = match self.data {
            Some(d) => {
                serde_json::from_str(&d).with_context(|| format!("--data {d:?} is not JSON"))?
            }
            None => json!({"text": self.text.join(" ")}),
        };
        let result =
            client_runtime()?.block_on(super::send(&url, &token, &self.rooms, &self.to, data));
        Ok(client_exit(
            "meridian send",
            result.map(Some),
            self.json,
            "send",
        ))
    }
}

/// `meridian state` options.
#[derive(clap::Args, Debug)]
pub struct StateArgs {
    #[command(flatten)]
    connect: ConnectArgs,
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
}

impl StateArgs {
    /// Reads, writes or deletes; the exit status.
    pub fn run(self) -> Result<ExitCode> {
        let (url, token) = self.connect.resolve()?;
        let if_version = self.if_version;
        let op = match (self.key, self.set, self.delete) {
            (Some(key), Some(value), _) => super::StateOp::Set {
                key,
                value: super::loose_json(&value),
                if_version,
            },
            (Some(key), None, true) => super::StateOp::Delete { key, if_version },
            (key, _, _) => super::StateOp::Get(key),
        };
        let result = client_runtime()?.block_on(super::state(&url, &token, &self.room, op));
        Ok(client_exit(
            "meridian state",
            result.map(Some),
            self.json,
            "state",
        ))
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
    result: Result<Option<serde_json::Value>, ClientError>,
    json: bool,
    kind: &str,
) -> ExitCode {
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(value)) => {
            if json {
                println!("{value}");
            } else {
                print!("{}", super::human(kind, &value));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
