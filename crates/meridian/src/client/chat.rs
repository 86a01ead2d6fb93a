//! `meridian chat`: join a room, print every event as a JSON line, publish each line typed on
//! stdin (with `/members`, `/send`, `/state` and friends), follow `reconnect` and resume.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{
    close_error, connect, describe_error, failed, loose_json, send_json, ClientError, Res,
    REPLY_TIMEOUT,
};

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
}
