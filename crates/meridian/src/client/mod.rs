//! The terminal client: `meridian chat` (join a room, print every event, publish what you type,
//! `/members`, `/send bob …` and friends) and the one-shot commands `members`, `presence`,
//! `send` and `state`, each with `--json` for scripts.
//!
//! Exit status of every client command: 0 done; 1 the connection failed or the server closed it
//! (e.g. the mesh stopped); 3 the server refused (an error reply such as `token_invalid`,
//! `forbidden`, `user_offline`, or a close with 1008). stdout carries the results (JSON lines for
//! `chat` and with `--json`), stderr the notes meant for people.
//!
//! The one-shot commands' [`Session`] is a `meridian-client` connection (typed requests, the
//! reply's `result` printed as the node sent it); [`chat`] drives one too, printing every frame
//! as the node sent it.

use std::path::PathBuf;
use std::time::Duration;

use meridian_protocol::{Request, RoomId, UserId};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

pub mod chat;
mod commands;
mod human;

pub use commands::{ChatArgs, MembersArgs, PresenceArgs, SendArgs, StateArgs};
pub use human::human;

/// How long a one-shot request, or the acknowledgements after the end of input, may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit status when the server refused.
pub const EXIT_REFUSED: u8 = 3;

/// Where to connect and as whom: `--url` and `--token`, or a local mesh's `--state-dir` (its
/// `endpoints.json`) with `--region` and `--user`.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// WebSocket URL, e.g. ws://127.0.0.1:7300/v1/ws (default: the `ws_url` of --region, or of
    /// the first region, in --state-dir's endpoints.json).
    #[arg(long)]
    pub url: Option<String>,
    /// Connection token (see `meridian token`); default: one minted for --user with the token
    /// secret of --state-dir's mesh.
    #[arg(long, env = "MERIDIAN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With --state-dir and no --token: connect as this user (every room, with publish).
    #[arg(long)]
    pub user: Option<String>,
    /// With --state-dir and no --url: the region to connect to.
    #[arg(long)]
    pub region: Option<String>,
    /// The state directory of a running `meridian up`.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// `endpoints.json` of a running `meridian up`.
    #[arg(long)]
    pub endpoints: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for wss:// besides the system's (default: the dev CA of
    /// a `meridian up --tls` mesh given by --state-dir).
    #[arg(long, env = "MERIDIAN_CA")]
    pub ca: Option<PathBuf>,
}

impl ConnectArgs {
    /// The URL and token to use.
    pub fn resolve(&self) -> anyhow::Result<(String, String)> {
        let local = crate::drill::mesh::load_endpoints(
            self.endpoints.as_deref(),
            self.state_dir.as_deref(),
        )?;
        match (&self.ca, local.as_ref().and_then(|e| e.tls_ca.as_ref())) {
            (Some(ca), _) | (None, Some(ca)) => crate::tls::trust_ca(ca)?,
            (None, None) => {}
        }
        let url = match (&self.url, &local) {
            (Some(url), _) => url.clone(),
            (None, Some(e)) => {
                let region = match &self.region {
                    Some(name) => e.regions.iter().find(|r| &r.name == name).ok_or_else(|| {
                        anyhow::anyhow!(
                            "no region {name} in this mesh (it has {})",
                            e.regions
                                .iter()
                                .map(|r| r.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })?,
                    None => e
                        .regions
                        .first()
                        .ok_or_else(|| anyhow::anyhow!("the mesh has no regions"))?,
                };
                region.ws_url.clone()
            }
            (None, None) => anyhow::bail!(
                "where to connect: pass --url, or --state-dir of a running `meridian up`"
            ),
        };
        let token = match (&self.token, &self.user, &local) {
            (Some(token), _, _) => token.clone(),
            (None, Some(user), Some(e)) => crate::token::mint(user, &[], 3600, &e.token_secret)?,
            (None, Some(_), None) => anyhow::bail!(
                "--user needs --state-dir of a running `meridian up` (its token secret), or pass --token"
            ),
            (None, None, _) => anyhow::bail!(
                "who to connect as: pass --token (see `meridian token`), or --user with --state-dir"
            ),
        };
        Ok((url, token))
    }
}

/// Why a client command ended without doing its job.
#[derive(Debug)]
pub enum ClientError {
    /// The server answered an error (`code`, `message`), or closed with 1008.
    Refused(String),
    /// The connection could not be made, or ended.
    Failed(String),
}

impl ClientError {
    /// The exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Refused(_) => EXIT_REFUSED,
            ClientError::Failed(_) => 1,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Refused(what) => write!(f, "refused by the server: {what}"),
            ClientError::Failed(what) => f.write_str(what),
        }
    }
}

type Res<T> = Result<T, ClientError>;

fn failed(what: impl std::fmt::Display) -> ClientError {
    ClientError::Failed(what.to_string())
}

/// A close frame in plain words: `1008 (refused by policy): token_invalid`.
pub fn describe_close(frame: Option<&CloseFrame>) -> String {
    let Some(frame) = frame else {
        return "the connection ended without a close frame".to_owned();
    };
    let code = u16::from(frame.code);
    let meaning = match code {
        1000 => "normal close",
        1001 => "going away",
        1006 => "connection lost",
        1008 => "refused by policy",
        1009 => "frame too large",
        1011 => "server error",
        1012 => "node shutting down",
        1013 => "try again later",
        _ => "close",
    };
    let reason = frame.reason.as_str();
    if reason.is_empty() {
        format!("{code} ({meaning})")
    } else {
        format!("{code} ({meaning}): {reason}")
    }
}

/// The server's error in plain words: `token_invalid: the token's signature is wrong`.
fn describe_server_error(e: &meridian_client::ServerError) -> String {
    if e.message.is_empty() {
        e.name.clone()
    } else {
        format!("{}: {}", e.name, e.message)
    }
}

fn close_error(frame: Option<&CloseFrame>) -> ClientError {
    let text = format!(
        "the server closed the connection: {}",
        describe_close(frame)
    );
    match frame.map(|f| u16::from(f.code)) {
        Some(1008) => ClientError::Refused(describe_close(frame)),
        _ => ClientError::Failed(text),
    }
}

fn connect_error_text(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            _ => io.to_string(),
        },
        Error::Http(response) => format!("HTTP {}", response.status()),
        other => other.to_string(),
    }
}

/// A connection that has said `hello`, for request/reply use: a `meridian-client`
/// [`Connection`](meridian_client::Connection) whose errors read as the CLI's.
pub struct Session {
    conn: meridian_client::Connection,
}

/// The words of the client crate's errors, as the CLI says them (and their exit status).
fn session_error(op: &str, e: meridian_client::ClientError) -> ClientError {
    use meridian_client::ClientError as E;
    match e {
        E::Server(e) => ClientError::Refused(if e.message.is_empty() {
            format!("{op}: {}", e.name)
        } else {
            format!("{op}: {}: {}", e.name, e.message)
        }),
        E::Closed(info) => closed_error(info.as_ref()),
        E::WebSocket(e) => failed(format!("connection error: {e}")),
        other => failed(other),
    }
}

/// [`close_error`] for the client crate's record of a close frame.
fn closed_error(info: Option<&meridian_client::CloseInfo>) -> ClientError {
    let frame = info.map(|c| CloseFrame {
        code: c.code.into(),
        reason: c.reason.clone().into(),
    });
    close_error(frame.as_ref())
}

/// A request the node would refuse as malformed (a bad room or user id): refused here.
fn bad_input(op: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Refused(format!("{op}: {e}"))
}

fn room_id(op: &str, room: &str) -> Res<RoomId> {
    RoomId::new(room).map_err(|e| bad_input(op, format!("room {room:?}: {e}")))
}

fn user_id(op: &str, user: &str) -> Res<UserId> {
    UserId::new(user).map_err(|e| bad_input(op, format!("user {user:?}: {e}")))
}

fn raw(op: &str, value: &Value) -> Res<Box<RawValue>> {
    serde_json::value::to_raw_value(value).map_err(|e| bad_input(op, e))
}

impl Session {
    /// Connects and says `hello`.
    pub async fn open(url: &str, token: &str) -> Res<Session> {
        let conn = open_connection(url).await?;
        let mut session = Session { conn };
        session
            .call(&Request::Hello {
                token: Some(token.to_owned()),
                resume: Vec::new(),
            })
            .await?;
        Ok(session)
    }

    /// Sends one request and waits for its reply: `result` of `ok` as the node sent it, else
    /// the error.
    pub async fn call(&mut self, request: &Request) -> Res<Value> {
        let op = request.op();
        let result = tokio::time::timeout(REPLY_TIMEOUT, self.conn.request(request))
            .await
            .map_err(|_| failed(format!("no reply to {op} within {REPLY_TIMEOUT:?}")))?
            .map_err(|e| session_error(op, e))?;
        serde_json::from_str(result.get()).map_err(|e| failed(format!("{op}: {e}")))
    }

    /// Closes politely.
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

/// Connects (TLS roots: the system's and `--ca`'s) without saying `hello`; the error names
/// the URL once (tungstenite's errors repeat their cause).
async fn open_connection(url: &str) -> Res<meridian_client::Connection> {
    let options = meridian_client::ConnectOptions {
        tls: Some(crate::tls::client_config().map_err(|e| failed(format!("{e:#}")))?),
        ..meridian_client::ConnectOptions::default()
    };
    let connecting = meridian_client::Connection::connect_with(url, &options);
    match tokio::time::timeout(REPLY_TIMEOUT, connecting).await {
        Err(_) => Err(failed(format!(
            "cannot connect to {url}: no answer within {REPLY_TIMEOUT:?}"
        ))),
        Ok(Err(meridian_client::ClientError::Connect { source, .. })) => {
            let why = connect_error_text(&source);
            let hint = if why.contains("certificate") {
                "trust the mesh's CA with --ca FILE, or give --state-dir of a `meridian up --tls`"
            } else {
                "is the mesh running, and is the URL right?"
            };
            Err(failed(format!("cannot connect to {url}: {why} ({hint})")))
        }
        Ok(Err(e)) => Err(failed(format!("cannot connect to {url}: {e}"))),
        Ok(Ok(conn)) => Ok(conn),
    }
}

/// `meridian members`: every member of a room (all pages).
pub async fn members(url: &str, token: &str, room: &str) -> Res<Value> {
    let room_id = room_id("members", room)?;
    let mut session = Session::open(url, token).await?;
    let mut all = Vec::new();
    let mut after: Option<UserId> = None;
    loop {
        let page = session
            .call(&Request::Members {
                room: room_id.clone(),
                after: after.take(),
                limit: Some(100),
            })
            .await?;
        if let Some(list) = page["members"].as_array() {
            all.extend(list.iter().cloned());
        }
        match page["next"].as_str() {
            Some(next) if !next.is_empty() => after = Some(user_id("members", next)?),
            _ => break,
        }
    }
    session.close().await;
    Ok(json!({"room": room, "members": all}))
}

/// Joins the rooms first (a direct message, presence and writing state need a room shared with
/// the other user, or the room itself).
async fn join_all(session: &mut Session, rooms: &[String]) -> Res<()> {
    for room in rooms {
        let room = room_id("join", room)?;
        session.call(&Request::Join { room }).await?;
    }
    Ok(())
}

/// `meridian presence`.
pub async fn presence(url: &str, token: &str, rooms: &[String], users: &[String]) -> Res<Value> {
    let users = users
        .iter()
        .map(|u| user_id("presence", u))
        .collect::<Res<Vec<_>>>()?;
    let mut session = Session::open(url, token).await?;
    join_all(&mut session, rooms).await?;
    let result = session.call(&Request::Presence { users }).await?;
    session.close().await;
    Ok(result)
}

/// `meridian send`.
pub async fn send(url: &str, token: &str, rooms: &[String], to: &str, data: Value) -> Res<Value> {
    let request = Request::Send {
        to: user_id("send", to)?,
        data: raw("send", &data)?,
    };
    let mut session = Session::open(url, token).await?;
    join_all(&mut session, rooms).await?;
    let result = session.call(&request).await?;
    session.close().await;
    Ok(result)
}

/// What `meridian state` does.
#[derive(Debug, Clone)]
pub enum StateOp {
    /// `state_get` (one key or all).
    Get(Option<String>),
    /// `state_set`.
    Set {
        key: String,
        value: Value,
        if_version: Option<u64>,
    },
    /// `state_delete`.
    Delete {
        key: String,
        if_version: Option<u64>,
    },
}

/// `meridian state`.
pub async fn state(url: &str, token: &str, room: &str, op: StateOp) -> Res<Value> {
    let room_id = room_id("state", room)?;
    let (request, join) = match op {
        StateOp::Get(key) => (Request::StateGet { room: room_id, key }, false),
        StateOp::Set {
            key,
            value,
            if_version,
        } => (
            Request::StateSet {
                room: room_id,
                key,
                value: raw("state_set", &value)?,
                if_version,
            },
            true,
        ),
        StateOp::Delete { key, if_version } => (
            Request::StateDelete {
                room: room_id,
                key,
                if_version,
            },
            true,
        ),
    };
    let mut session = Session::open(url, token).await?;
    if join {
        join_all(&mut session, &[room.to_owned()]).await?;
    }
    let result = session.call(&request).await?;
    session.close().await;
    Ok(result)
}

/// A value typed by a person: JSON when it parses as JSON, else the text as a string.
pub fn loose_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    #[test]
    fn close_frames_read_as_plain_words() {
        let frame = CloseFrame {
            code: CloseCode::Policy,
            reason: "token_invalid".into(),
        };
        assert_eq!(
            describe_close(Some(&frame)),
            "1008 (refused by policy): token_invalid"
        );
        assert!(matches!(close_error(Some(&frame)), ClientError::Refused(_)));
        let restart = CloseFrame {
            code: CloseCode::Restart,
            reason: "node shutting down".into(),
        };
        let err = close_error(Some(&restart));
        assert_eq!(err.exit_code(), 1);
        assert!(!err.to_string().contains("CloseFrame"), "{err}");
        assert_eq!(
            describe_close(None),
            "the connection ended without a close frame"
        );
    }

    #[test]
    fn human_output_lists_members_and_presence() {
        let members = json!({"room": "lobby", "members": [
            {"user": "alice", "region": "ap-southeast"}, {"user": "bob", "region": "eu-central"}]});
        let text = human("members", &members);
        assert!(
            text.contains("alice") && text.contains("eu-central"),
            "{text}"
        );
        assert!(text.ends_with("2 members in lobby\n"), "{text}");
        let presence = json!({"users": [
            {"user": "bob", "online": true, "connections": 1, "regions": ["eu-central"]},
            {"user": "carol", "online": false, "connections": 0, "regions": []}]});
        let text = human("presence", &presence);
        assert!(
            text.contains("online  1 connection(s)  eu-central"),
            "{text}"
        );
        assert!(text.contains("carol") && text.contains("offline"), "{text}");
    }
}
