//! The terminal client: `meridian chat` (join a room, print every event, publish what you type,
//! `/members`, `/send bob …` and friends) and the one-shot commands `members`, `presence`,
//! `send` and `state`, each with `--json` for scripts.
//!
//! Exit status of every client command: 0 done; 1 the connection failed or the server closed it
//! (e.g. the mesh stopped); 3 the server refused (an error reply such as `token_invalid`,
//! `forbidden`, `user_offline`, or a close with 1008). stdout carries the results (JSON lines for
//! `chat` and with `--json`), stderr the notes meant for people.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::tls::Ws;

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
            (None, Some(user), Some(e)) => crate::mint(user, &[], 3600, &e.token_secret)?,
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

/// The server's error reply in plain words: `token_invalid: the token's signature is wrong`.
fn describe_error(reply: &Value) -> String {
    let code = reply["code"].as_str().unwrap_or("error");
    match reply["message"].as_str() {
        Some(m) if !m.is_empty() => format!("{code}: {m}"),
        _ => code.to_owned(),
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

/// Connects; the error names the URL once (tungstenite's errors repeat their cause).
async fn connect(url: &str) -> Res<Ws> {
    match tokio::time::timeout(REPLY_TIMEOUT, crate::tls::connect_ws(url)).await {
        Err(_) => Err(failed(format!(
            "cannot connect to {url}: no answer within {REPLY_TIMEOUT:?}"
        ))),
        Ok(Err(e)) => {
            let why = connect_error_text(&e);
            let hint = if why.contains("certificate") {
                "trust the mesh's CA with --ca FILE, or give --state-dir of a `meridian up --tls`"
            } else {
                "is the mesh running, and is the URL right?"
            };
            Err(failed(format!("cannot connect to {url}: {why} ({hint})")))
        }
        Ok(Ok((ws, _))) => Ok(ws),
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

async fn send_json(ws: &mut Ws, value: &Value) -> Res<()> {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .map_err(|e| failed(format!("sending to the server failed: {e}")))
}

/// A connection that has said `hello`, for request/reply use.
pub struct Session {
    ws: Ws,
    next_id: u64,
}

impl Session {
    /// Connects and says `hello`.
    pub async fn open(url: &str, token: &str) -> Res<Session> {
        let ws = connect(url).await?;
        let mut session = Session { ws, next_id: 1 };
        session.call(json!({"op": "hello", "token": token})).await?;
        Ok(session)
    }

    /// Sends one request and waits for its reply: `result` of `ok`, else the error.
    pub async fn call(&mut self, mut request: Value) -> Res<Value> {
        let id = self.next_id;
        self.next_id += 1;
        request["id"] = json!(id);
        send_json(&mut self.ws, &request).await?;
        let op = request["op"].as_str().unwrap_or("request").to_owned();
        let wait = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                            continue;
                        };
                        if frame["id"] != json!(id) {
                            continue; // an event, or another reply
                        }
                        return match frame["type"].as_str() {
                            Some("ok") => Ok(frame["result"].clone()),
                            _ => Err(ClientError::Refused(format!(
                                "{op}: {}",
                                describe_error(&frame)
                            ))),
                        };
                    }
                    Some(Ok(Message::Close(frame))) => return Err(close_error(frame.as_ref())),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(failed(format!("connection error: {e}"))),
                    None => return Err(close_error(None)),
                }
            }
        };
        tokio::time::timeout(REPLY_TIMEOUT, wait)
            .await
            .map_err(|_| failed(format!("no reply to {op} within {REPLY_TIMEOUT:?}")))?
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// `meridian members`: every member of a room (all pages).
pub async fn members(url: &str, token: &str, room: &str) -> Res<Value> {
    let mut session = Session::open(url, token).await?;
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut request = json!({"op": "members", "room": room, "limit": 100});
        if let Some(a) = &after {
            request["after"] = json!(a);
        }
        let page = session.call(request).await?;
        if let Some(list) = page["members"].as_array() {
            all.extend(list.iter().cloned());
        }
        match page["next"].as_str() {
            Some(next) if !next.is_empty() => after = Some(next.to_owned()),
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
        session.call(json!({"op": "join", "room": room})).await?;
    }
    Ok(())
}

/// `meridian presence`.
pub async fn presence(url: &str, token: &str, rooms: &[String], users: &[String]) -> Res<Value> {
    let mut session = Session::open(url, token).await?;
    join_all(&mut session, rooms).await?;
    let result = session
        .call(json!({"op": "presence", "users": users}))
        .await?;
    session.close().await;
    Ok(result)
}

/// `meridian send`.
pub async fn send(url: &str, token: &str, rooms: &[String], to: &str, data: Value) -> Res<Value> {
    let mut session = Session::open(url, token).await?;
    join_all(&mut session, rooms).await?;
    let result = session
        .call(json!({"op": "send", "to": to, "data": data}))
        .await?;
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
    let mut session = Session::open(url, token).await?;
    let request = match op {
        StateOp::Get(key) => {
            let mut r = json!({"op": "state_get", "room": room});
            if let Some(k) = key {
                r["key"] = json!(k);
            }
            r
        }
        StateOp::Set {
            key,
            value,
            if_version,
        } => {
            join_all(&mut session, &[room.to_owned()]).await?;
            let mut r = json!({"op": "state_set", "room": room, "key": key, "value": value});
            if let Some(v) = if_version {
                r["if_version"] = json!(v);
            }
            r
        }
        StateOp::Delete { key, if_version } => {
            join_all(&mut session, &[room.to_owned()]).await?;
            let mut r = json!({"op": "state_delete", "room": room, "key": key});
            if let Some(v) = if_version {
                r["if_version"] = json!(v);
            }
            r
        }
    };
    let result = session.call(request).await?;
    session.close().await;
    Ok(result)
}

/// A value typed by a person: JSON when it parses as JSON, else the text as a string.
pub fn loose_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// The human form of a one-shot result.
pub fn human(command: &str, result: &Value) -> String {
    let mut out = String::new();
    match command {
        "members" => {
            let list = result["members"].as_array().cloned().unwrap_or_default();
            for m in &list {
                out.push_str(&format!(
                    "{:<24} {}\n",
                    m["user"].as_str().unwrap_or("?"),
                    m["region"].as_str().unwrap_or("?")
                ));
            }
            out.push_str(&format!(
                "{} member{} in {}\n",
                list.len(),
                if list.len() == 1 { "" } else { "s" },
                result["room"].as_str().unwrap_or("?")
            ));
        }
        "presence" => {
            for u in result["users"].as_array().cloned().unwrap_or_default() {
                let regions: Vec<&str> = u["regions"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let online = u["online"].as_bool().unwrap_or(false);
                out.push_str(&format!(
                    "{:<24} {}",
                    u["user"].as_str().unwrap_or("?"),
                    if online { "online" } else { "offline" }
                ));
                if online {
                    out.push_str(&format!(
                        "  {} connection(s)  {}",
                        u["connections"].as_u64().unwrap_or(0),
                        regions.join(", ")
                    ));
                }
                out.push('\n');
            }
        }
        "send" => out.push_str(&format!(
            "sent to {}\n",
            result["to"].as_str().unwrap_or("?")
        )),
        _ => {
            if let Some(entries) = result["entries"].as_array() {
                if entries.is_empty() {
                    out.push_str("(no keys)\n");
                }
                for e in entries {
                    out.push_str(&format!(
                        "{} = {}  (version {})\n",
                        e["key"].as_str().unwrap_or("?"),
                        e["value"],
                        e["version"]
                    ));
                }
            } else if let Some(version) = result["version"].as_u64() {
                out.push_str(&format!(
                    "{} set, version {version}\n",
                    result["key"].as_str().unwrap_or("?")
                ));
            } else if let Some(deleted) = result["deleted"].as_bool() {
                out.push_str(&format!(
                    "{} {}\n",
                    result["key"].as_str().unwrap_or("?"),
                    if deleted { "deleted" } else { "did not exist" }
                ));
            } else {
                out.push_str(&format!("{result}\n"));
            }
        }
    }
    out
}

/// `meridian chat` options beyond where to connect.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// The room to join and publish in.
    pub room: String,
    /// Follow `reconnect` events and lost connections (false: exit instead).
    pub reconnect: bool,
}

/// A line from stdin, or its end.
enum Input {
    Line(String),
    Eof,
}

/// Reads stdin on a plain thread (so that the process can exit while it blocks).
fn stdin_lines() -> mpsc::UnboundedReceiver<Input> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match std::io::BufRead::read_line(&mut stdin.lock(), &mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Input::Eof);
                    return;
                }
                Ok(_) => {
                    let text = line.trim_end_matches(['\n', '\r']).to_owned();
                    if tx.send(Input::Line(text)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

const CHAT_HELP: &str = "commands: a plain line publishes it as {\"text\": …};
  /members                 list the room's members
  /presence USER…          who is online (users sharing a room with you)
  /send USER TEXT…         direct message ({\"text\": …}; a JSON object is sent as is)
  /state [KEY]             read the room's state
  /set KEY VALUE           write a state key (VALUE: JSON, else text)
  /del KEY                 delete a state key
  /quit                    leave (so does end of input, once every line is acknowledged)
  //text                   publish a line that starts with /";

/// What a chat line asks for: a request to send, a local action, or nothing.
#[derive(Debug, PartialEq)]
pub enum ChatLine {
    /// Send this request (without id).
    Request(Value),
    /// Print the help.
    Help,
    /// Leave.
    Quit,
    /// Explain this mistake.
    Bad(String),
}

/// Turns one typed line into what it asks for.
pub fn parse_chat_line(room: &str, line: &str) -> ChatLine {
    if let Some(text) = line.strip_prefix("//") {
        return ChatLine::Request(
            json!({"op": "publish", "room": room, "data": {"text": format!("/{text}")}}),
        );
    }
    let Some(command) = line.strip_prefix('/') else {
        return ChatLine::Request(json!({"op": "publish", "room": room, "data": {"text": line}}));
    };
    let mut words = command.splitn(2, char::is_whitespace);
    let name = words.next().unwrap_or("");
    let rest = words.next().unwrap_or("").trim();
    match name {
        "members" => ChatLine::Request(json!({"op": "members", "room": room})),
        "presence" if !rest.is_empty() => ChatLine::Request(
            json!({"op": "presence", "users": rest.split_whitespace().collect::<Vec<_>>()}),
        ),
        "send" | "dm" => match rest.split_once(char::is_whitespace) {
            Some((to, text)) => {
                let data = match serde_json::from_str::<Value>(text.trim()) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"text": text.trim()}),
                };
                ChatLine::Request(json!({"op": "send", "to": to, "data": data}))
            }
            None => ChatLine::Bad("usage: /send USER TEXT…".into()),
        },
        "state" if rest.is_empty() => ChatLine::Request(json!({"op": "state_get", "room": room})),
        "state" => ChatLine::Request(json!({"op": "state_get", "room": room, "key": rest})),
        "set" => match rest.split_once(char::is_whitespace) {
            Some((key, value)) => ChatLine::Request(
                json!({"op": "state_set", "room": room, "key": key, "value": loose_json(value.trim())}),
            ),
            None => ChatLine::Bad("usage: /set KEY VALUE".into()),
        },
        "del" | "delete" if !rest.is_empty() => {
            ChatLine::Request(json!({"op": "state_delete", "room": room, "key": rest}))
        }
        "help" | "?" => ChatLine::Help,
        "quit" | "exit" => ChatLine::Quit,
        _ => ChatLine::Bad(format!(
            "unknown or incomplete command /{command}; /help lists them"
        )),
    }
}

fn note(text: impl std::fmt::Display) {
    eprintln!("meridian chat: {text}");
}

/// Where this chat stands in the room's event stream (to resume after a reconnect).
#[derive(Default)]
struct Position {
    epoch: Option<String>,
    seq: u64,
}

/// One request in flight: the request as sent (publishes are re-sent after a reconnect with
/// the same idempotency key, so nothing typed is lost or doubled).
struct Pending {
    request: Value,
}

/// `meridian chat`: returns when the chat ends; Ok at the end of input (or `/quit`) once every
/// request was answered.
pub async fn chat(url: &str, token: &str, options: &ChatOptions) -> Res<()> {
    let room = options.room.as_str();
    // Where to (re)connect: the given URL, or the one a `reconnect` event names.
    let mut url = url.to_owned();
    let run_key: String = {
        use rand::Rng;
        let n: u64 = rand::thread_rng().gen();
        format!("chat-{n:x}")
    };
    let mut input = stdin_lines();
    let mut stdin_open = true;
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut next_id = 1u64;
    let mut position = Position::default();
    let mut attempt = 0u32;
    let mut eof_deadline: Option<tokio::time::Instant> = None;

    'connection: loop {
        // Connect (again), hello (with resume after a reconnect), join.
        let mut ws = match connect(&url).await {
            Ok(ws) => ws,
            Err(e) if attempt > 0 && attempt < 8 => {
                note(format!("{e}; retrying"));
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
                continue 'connection;
            }
            Err(e) => return Err(e),
        };
        let mut hello = json!({"id": 0, "op": "hello", "token": token});
        if let Some(epoch) = &position.epoch {
            hello["resume"] = json!([{"room": room, "epoch": epoch, "seq": position.seq}]);
        }
        send_json(&mut ws, &hello).await?;
        let joined_by_resume = position.epoch.is_some();
        // In the room (join or resume answered): only then may the end of input end the chat.
        let mut ready = false;
        if !joined_by_resume {
            send_json(&mut ws, &json!({"id": "join", "op": "join", "room": room})).await?;
        }
        // Requests still unanswered on the old connection: send them again.
        for (id, p) in &pending {
            let mut request = p.request.clone();
            request["id"] = json!(id);
            send_json(&mut ws, &request).await?;
        }

        loop {
            let eof_wait = async {
                match eof_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                frame = ws.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(frame))) => {
                            let code = frame.as_ref().map(|f| u16::from(f.code));
                            let err = close_error(frame.as_ref());
                            if matches!(err, ClientError::Refused(_)) || !options.reconnect || code == Some(1000) {
                                return Err(err);
                            }
                            note(format!("{err}; reconnecting"));
                            attempt = 1;
                            tokio::time::sleep(backoff(attempt)).await;
                            continue 'connection;
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => {
                            if !options.reconnect {
                                return Err(close_error(None));
                            }
                            note("the connection was lost; reconnecting");
                            attempt = 1;
                            tokio::time::sleep(backoff(attempt)).await;
                            continue 'connection;
                        }
                    };
                    println!("{text}");
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                    match frame["type"].as_str() {
                        Some("ok") if frame["id"] == json!(0) => {
                            let result = &frame["result"];
                            for r in result["resumed"].as_array().into_iter().flatten() {
                                if r["status"] == "error" {
                                    return Err(ClientError::Refused(format!("rejoining {room}: {}", describe_error(r))));
                                }
                                if let Some(e) = r["epoch"].as_str() {
                                    position.epoch = Some(e.to_owned());
                                    position.seq = r["seq"].as_u64().unwrap_or(0);
                                }
                            }
                            ready = joined_by_resume;
                            note(format!(
                                "connected to {} as {}{}; type a line to publish, /help for commands",
                                result["region"].as_str().unwrap_or("?"),
                                result["user"].as_str().unwrap_or("?"),
                                if joined_by_resume { " (resumed)" } else { "" }
                            ));
                        }
                        Some("ok") if frame["id"] == json!("join") => {
                            if let Some(e) = frame["result"]["epoch"].as_str() {
                                position.epoch = Some(e.to_owned());
                                position.seq = frame["result"]["seq"].as_u64().unwrap_or(0);
                            }
                            ready = true;
                        }
                        Some("error") if frame["id"] == json!(0) || frame["id"] == json!("join") => {
                            return Err(ClientError::Refused(describe_error(&frame)));
                        }
                        Some("ok" | "error") => {
                            let answered = frame["id"].as_u64().and_then(|id| pending.remove(&id));
                            if let (Some(p), Some("error")) = (answered, frame["type"].as_str()) {
                                note(format!(
                                    "{} refused: {}",
                                    p.request["op"].as_str().unwrap_or("request"),
                                    describe_error(&frame)
                                ));
                            }
                        }
                        Some("reconnect") => {
                            let reason = frame["reason"].as_str().unwrap_or("no reason");
                            if !options.reconnect {
                                return Err(failed(format!(
                                    "the server asked to reconnect ({reason}); not following it (--no-reconnect)"
                                )));
                            }
                            let after = frame["after_ms"].as_u64().unwrap_or(500).min(30_000);
                            note(format!("the server asks to reconnect ({reason}); reconnecting in {after} ms"));
                            if let Some(next) = frame["url"].as_str().filter(|u| *u != url) {
                                // Another region numbers the room's events itself: join afresh.
                                note(format!("moving to {next}; events published meanwhile are not replayed"));
                                url = next.to_owned();
                                position = Position::default();
                            }
                            let _ = ws.close(None).await;
                            tokio::time::sleep(Duration::from_millis(after)).await;
                            attempt = 1;
                            continue 'connection;
                        }
                        _ => {
                            if frame["room"] == json!(room) {
                                if let (Some(e), Some(s)) = (frame["epoch"].as_str(), frame["seq"].as_u64()) {
                                    position.epoch = Some(e.to_owned());
                                    position.seq = s;
                                }
                            }
                        }
                    }
                    if !stdin_open && ready && pending.is_empty() {
                        let _ = ws.close(None).await;
                        return Ok(());
                    }
                }
                line = input.recv(), if stdin_open => {
                    let line = match line {
                        Some(Input::Line(l)) => l,
                        Some(Input::Eof) | None => {
                            stdin_open = false;
                            if ready && pending.is_empty() {
                                let _ = ws.close(None).await;
                                return Ok(());
                            }
                            eof_deadline = Some(tokio::time::Instant::now() + REPLY_TIMEOUT);
                            continue;
                        }
                    };
                    if line.trim().is_empty() {
                        continue;
                    }
                    match parse_chat_line(room, &line) {
                        ChatLine::Request(mut request) => {
                            let id = next_id;
                            next_id += 1;
                            request["id"] = json!(id);
                            if request["op"] == "publish" {
                                request["idempotency_key"] = json!(format!("{run_key}-{id}"));
                            }
                            send_json(&mut ws, &request).await?;
                            pending.insert(id, Pending { request });
                        }
                        ChatLine::Help => eprintln!("{CHAT_HELP}"),
                        ChatLine::Bad(why) => note(why),
                        ChatLine::Quit => {
                            stdin_open = false;
                            if ready && pending.is_empty() {
                                let _ = ws.close(None).await;
                                return Ok(());
                            }
                            eof_deadline = Some(tokio::time::Instant::now() + REPLY_TIMEOUT);
                        }
                    }
                }
                () = eof_wait => {
                    return Err(failed(format!(
                        "{} request(s) still unanswered {REPLY_TIMEOUT:?} after the end of input",
                        pending.len()
                    )));
                }
            }
        }
    }
}

/// Full-jitter backoff: up to 100 ms × 2^attempt, capped at 3 s.
fn backoff(attempt: u32) -> Duration {
    use rand::Rng;
    let cap = (100u64 << attempt.min(5)).min(3000);
    Duration::from_millis(rand::thread_rng().gen_range(cap / 2..=cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    #[test]
    fn chat_lines_become_requests() {
        assert_eq!(
            parse_chat_line("lobby", "hi there"),
            ChatLine::Request(
                json!({"op": "publish", "room": "lobby", "data": {"text": "hi there"}})
            )
        );
        assert_eq!(
            parse_chat_line("lobby", "//members"),
            ChatLine::Request(
                json!({"op": "publish", "room": "lobby", "data": {"text": "/members"}})
            )
        );
        assert_eq!(
            parse_chat_line("lobby", "/members"),
            ChatLine::Request(json!({"op": "members", "room": "lobby"}))
        );
        assert_eq!(
            parse_chat_line("lobby", "/send bob hello you"),
            ChatLine::Request(json!({"op": "send", "to": "bob", "data": {"text": "hello you"}}))
        );
        assert_eq!(
            parse_chat_line("lobby", r#"/send bob {"kind":"offer"}"#),
            ChatLine::Request(json!({"op": "send", "to": "bob", "data": {"kind": "offer"}}))
        );
        assert_eq!(
            parse_chat_line("lobby", "/presence bob carol"),
            ChatLine::Request(json!({"op": "presence", "users": ["bob", "carol"]}))
        );
        assert_eq!(
            parse_chat_line("lobby", "/set topic {\"a\":1}"),
            ChatLine::Request(
                json!({"op": "state_set", "room": "lobby", "key": "topic", "value": {"a": 1}})
            )
        );
        assert_eq!(
            parse_chat_line("lobby", "/set topic launch day"),
            ChatLine::Request(
                json!({"op": "state_set", "room": "lobby", "key": "topic", "value": "launch day"})
            )
        );
        assert_eq!(parse_chat_line("lobby", "/quit"), ChatLine::Quit);
        assert!(matches!(
            parse_chat_line("lobby", "/send bob"),
            ChatLine::Bad(_)
        ));
        assert!(matches!(
            parse_chat_line("lobby", "/bogus"),
            ChatLine::Bad(_)
        ));
    }

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
