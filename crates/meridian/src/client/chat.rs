//! `meridian chat`: join a room, print every event as a JSON line, publish each line typed on
//! stdin (with `/members`, `/send`, `/state` and friends), follow `reconnect` and resume.
//!
//! The connection is a `meridian-client` [`Connection`](meridian_client::Connection): typed
//! requests, frames printed as the node sent them, the room's [`RoomPosition`] (cursor and
//! version vector) sent back in `hello` after a reconnect.

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_client::{ClientError as WireError, Event, Frame, Received, RoomPosition};
use meridian_protocol::{HelloResult, JoinResult, Request, RequestId, ResumedRoom, RoomId};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{
    bad_input, closed_error, describe_server_error, failed, loose_json, open_connection, raw,
    user_id, ClientError, Res, REPLY_TIMEOUT,
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
#[derive(Debug)]
pub enum ChatLine {
    /// Send this request.
    Request(Request),
    /// Print the help.
    Help,
    /// Leave.
    Quit,
    /// Explain this mistake.
    Bad(String),
}

/// A publish of `{"text": text}`.
fn publish_text(room: &RoomId, text: &str) -> ChatLine {
    request(
        raw("publish", &serde_json::json!({ "text": text })).map(|data| Request::Publish {
            room: room.clone(),
            data,
            idempotency_key: None,
        }),
    )
}

fn request(built: Res<Request>) -> ChatLine {
    match built {
        Ok(r) => ChatLine::Request(r),
        Err(e) => ChatLine::Bad(e.to_string()),
    }
}

/// Turns one typed line into what it asks for.
pub fn parse_chat_line(room: &RoomId, line: &str) -> ChatLine {
    if let Some(text) = line.strip_prefix("//") {
        return publish_text(room, &format!("/{text}"));
    }
    let Some(command) = line.strip_prefix('/') else {
        return publish_text(room, line);
    };
    let mut words = command.splitn(2, char::is_whitespace);
    let name = words.next().unwrap_or("");
    let rest = words.next().unwrap_or("").trim();
    let room = room.clone();
    match name {
        "members" => ChatLine::Request(Request::Members {
            room,
            after: None,
            limit: None,
        }),
        "presence" if !rest.is_empty() => request(
            rest.split_whitespace()
                .map(|u| user_id("presence", u))
                .collect::<Res<Vec<_>>>()
                .map(|users| Request::Presence { users }),
        ),
        "send" | "dm" => match rest.split_once(char::is_whitespace) {
            Some((to, text)) => {
                let data = match serde_json::from_str::<Value>(text.trim()) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => serde_json::json!({ "text": text.trim() }),
                };
                request(user_id("send", to).and_then(|to| {
                    Ok(Request::Send {
                        to,
                        data: raw("send", &data)?,
                    })
                }))
            }
            None => ChatLine::Bad("usage: /send USER TEXT…".into()),
        },
        "state" => ChatLine::Request(Request::StateGet {
            room,
            key: (!rest.is_empty()).then(|| rest.to_owned()),
        }),
        "set" => match rest.split_once(char::is_whitespace) {
            Some((key, value)) => {
                request(raw("state_set", &loose_json(value.trim())).map(|value| {
                    Request::StateSet {
                        room,
                        key: key.to_owned(),
                        value,
                        if_version: None,
                    }
                }))
            }
            None => ChatLine::Bad("usage: /set KEY VALUE".into()),
        },
        "del" | "delete" if !rest.is_empty() => ChatLine::Request(Request::StateDelete {
            room,
            key: rest.to_owned(),
            if_version: None,
        }),
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

/// The ids of the chat's own requests: `hello` and `join` (the tests and scripts look for
/// `"id":"join"` in the output); typed lines are numbered from 1.
const HELLO_ID: RequestId = RequestId::Num(0);

fn join_id() -> RequestId {
    RequestId::Str("join".to_owned())
}

fn sending(e: WireError) -> ClientError {
    failed(format!("sending to the server failed: {e}"))
}

fn decode<T: serde::de::DeserializeOwned>(op: &str, raw: &serde_json::value::RawValue) -> Res<T> {
    serde_json::from_str(raw.get()).map_err(|e| failed(format!("{op} reply: {e}")))
}

/// How a connection ended.
enum Next {
    /// Connect again (to `url`, resuming from the position).
    Reconnect,
    /// Done.
    Exit(Res<()>),
}

/// `meridian chat`: returns when the chat ends; Ok at the end of input (or `/quit`) once every
/// request was answered.
pub async fn chat(url: &str, token: &str, options: &ChatOptions) -> Res<()> {
    let room_name = options.room.as_str();
    let room = RoomId::new(room_name)
        .map_err(|e| bad_input("join", format!("room {room_name:?}: {e}")))?;
    // Where to (re)connect: the given URL, or the one a `reconnect` event names.
    let mut url = url.to_owned();
    let run_key: String = {
        use rand::Rng;
        let n: u64 = rand::thread_rng().gen();
        format!("chat-{n:x}")
    };
    let mut input = stdin_lines();
    let mut stdin_open = true;
    // Requests in flight, as sent (re-sent after a reconnect; publishes keep their
    // idempotency key, so nothing typed is lost or doubled).
    let mut pending: BTreeMap<u64, Request> = BTreeMap::new();
    let mut next_id = 1u64;
    let mut position: Option<RoomPosition> = None;
    let mut attempt = 0u32;
    let mut eof_deadline: Option<tokio::time::Instant> = None;

    'connection: loop {
        // Connect (again), hello (with resume after a reconnect), join.
        let mut conn = match open_connection(&url).await {
            Ok(conn) => conn,
            Err(e) if attempt > 0 && attempt < 8 => {
                note(format!("{e}; retrying"));
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
                continue 'connection;
            }
            Err(e) => return Err(e),
        };
        let joined_by_resume = position.is_some();
        let hello = Request::Hello {
            token: Some(token.to_owned()),
            resume: position.iter().map(RoomPosition::resume_point).collect(),
        };
        let mut frames = vec![hello.encode(&HELLO_ID)];
        if !joined_by_resume {
            frames.push(Request::Join { room: room.clone() }.encode(&join_id()));
        }
        // Requests still unanswered on the old connection: send them again.
        frames.extend(pending.iter().map(|(id, r)| r.encode(&RequestId::Num(*id))));
        conn.send_texts(frames).await.map_err(sending)?;
        // The node's region (events without `origin` happened there).
        let mut region = String::new();
        // In the room (join or resume answered): only then may the end of input end the chat.
        let mut ready = false;

        let next = loop {
            let eof_wait = async {
                match eof_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                received = conn.next_frame() => {
                    let Received { frame, text } = match received {
                        Ok(r) => r,
                        // A frame this client cannot read: skipped.
                        Err(WireError::Protocol(_)) => continue,
                        Err(WireError::Closed(Some(info))) => {
                            let err = closed_error(Some(&info));
                            if matches!(err, ClientError::Refused(_)) || !options.reconnect || info.code == 1000 {
                                break Next::Exit(Err(err));
                            }
                            note(format!("{err}; reconnecting"));
                            attempt = 1;
                            tokio::time::sleep(backoff(attempt)).await;
                            break Next::Reconnect;
                        }
                        Err(_) => {
                            if !options.reconnect {
                                break Next::Exit(Err(closed_error(None)));
                            }
                            note("the connection was lost; reconnecting");
                            attempt = 1;
                            tokio::time::sleep(backoff(attempt)).await;
                            break Next::Reconnect;
                        }
                    };
                    println!("{text}");
                    match frame {
                        Frame::Reply(reply) if reply.id.as_ref() == Some(&HELLO_ID) => {
                            let result = match reply.outcome {
                                Ok(result) => result,
                                Err(e) => break Next::Exit(Err(ClientError::Refused(describe_server_error(&e)))),
                            };
                            let hello: HelloResult = match decode("hello", &result) {
                                Ok(h) => h,
                                Err(e) => break Next::Exit(Err(e)),
                            };
                            region.clone_from(&hello.region);
                            for entry in &hello.resumed {
                                if let ResumedRoom::Error { code, message, .. } = entry {
                                    let why = if message.is_empty() {
                                        code.as_str().to_owned()
                                    } else {
                                        format!("{}: {message}", code.as_str())
                                    };
                                    return Err(ClientError::Refused(format!("rejoining {room_name}: {why}")));
                                }
                                if let Some(p) = position.as_mut().filter(|p| p.room() == entry.room()) {
                                    p.resumed(&region, entry);
                                }
                            }
                            ready = joined_by_resume;
                            note(format!(
                                "connected to {} as {}{}; type a line to publish, /help for commands",
                                hello.region,
                                hello.user,
                                if joined_by_resume { " (resumed)" } else { "" }
                            ));
                        }
                        Frame::Reply(reply) if reply.id == Some(join_id()) => {
                            let result = match reply.outcome {
                                Ok(result) => result,
                                Err(e) => break Next::Exit(Err(ClientError::Refused(describe_server_error(&e)))),
                            };
                            match decode::<JoinResult>("join", &result) {
                                Ok(join) => position = Some(RoomPosition::joined(&region, &join)),
                                Err(e) => break Next::Exit(Err(e)),
                            }
                            ready = true;
                        }
                        Frame::Reply(reply) => {
                            let answered = match reply.id {
                                Some(RequestId::Num(id)) => pending.remove(&id),
                                _ => None,
                            };
                            if let (Some(request), Err(e)) = (answered, &reply.outcome) {
                                note(format!("{} refused: {}", request.op(), describe_server_error(e)));
                            }
                        }
                        Frame::Event(Event::Reconnect(r)) => {
                            if !options.reconnect {
                                break Next::Exit(Err(failed(format!(
                                    "the server asked to reconnect ({}); not following it (--no-reconnect)",
                                    r.reason
                                ))));
                            }
                            let after = r.after_ms.min(30_000);
                            note(format!("the server asks to reconnect ({}); reconnecting in {after} ms", r.reason));
                            if let Some(next) = r.url.filter(|u| *u != url) {
                                // Another region numbers the room's events itself: join afresh.
                                note(format!("moving to {next}; events published meanwhile are not replayed"));
                                url = next;
                                position = None;
                            }
                            let _ = conn.close().await;
                            tokio::time::sleep(Duration::from_millis(after)).await;
                            attempt = 1;
                            continue 'connection;
                        }
                        Frame::Event(Event::Room(event)) => {
                            if let Some(p) = position.as_mut().filter(|p| *p.room() == event.room) {
                                p.event(&event);
                            }
                        }
                        Frame::Event(_) => {}
                    }
                    if !stdin_open && ready && pending.is_empty() {
                        break Next::Exit(Ok(()));
                    }
                }
                line = input.recv(), if stdin_open => {
                    let line = match line {
                        Some(Input::Line(l)) => l,
                        Some(Input::Eof) | None => {
                            stdin_open = false;
                            if ready && pending.is_empty() {
                                break Next::Exit(Ok(()));
                            }
                            eof_deadline = Some(tokio::time::Instant::now() + REPLY_TIMEOUT);
                            continue;
                        }
                    };
                    if line.trim().is_empty() {
                        continue;
                    }
                    match parse_chat_line(&room, &line) {
                        ChatLine::Request(mut request) => {
                            let id = next_id;
                            next_id += 1;
                            if let Request::Publish { idempotency_key, .. } = &mut request {
                                *idempotency_key = Some(format!("{run_key}-{id}"));
                            }
                            conn.send_text(request.encode(&RequestId::Num(id))).await.map_err(sending)?;
                            pending.insert(id, request);
                        }
                        ChatLine::Help => eprintln!("{CHAT_HELP}"),
                        ChatLine::Bad(why) => note(why),
                        ChatLine::Quit => {
                            stdin_open = false;
                            if ready && pending.is_empty() {
                                break Next::Exit(Ok(()));
                            }
                            eof_deadline = Some(tokio::time::Instant::now() + REPLY_TIMEOUT);
                        }
                    }
                }
                () = eof_wait => {
                    break Next::Exit(Err(failed(format!(
                        "{} request(s) still unanswered {REPLY_TIMEOUT:?} after the end of input",
                        pending.len()
                    ))));
                }
            }
        };
        match next {
            Next::Reconnect => continue 'connection,
            Next::Exit(result) => {
                if !conn.is_closed() {
                    let _ = conn.close().await;
                }
                return result;
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
    use serde_json::json;

    /// The request a line asks for, as its frame (without id), or the line's other outcome.
    fn frame(line: &str) -> Value {
        let room = RoomId::new("lobby").unwrap();
        match parse_chat_line(&room, line) {
            ChatLine::Request(r) => {
                let mut v: Value = serde_json::from_str(&r.encode(&RequestId::Num(1))).unwrap();
                v.as_object_mut().unwrap().remove("id");
                v
            }
            ChatLine::Help => json!("help"),
            ChatLine::Quit => json!("quit"),
            ChatLine::Bad(_) => json!("bad"),
        }
    }

    #[test]
    fn chat_lines_become_requests() {
        assert_eq!(
            frame("hi there"),
            json!({"op": "publish", "room": "lobby", "data": {"text": "hi there"}})
        );
        assert_eq!(
            frame("//members"),
            json!({"op": "publish", "room": "lobby", "data": {"text": "/members"}})
        );
        assert_eq!(frame("/members"), json!({"op": "members", "room": "lobby"}));
        assert_eq!(
            frame("/send bob hello you"),
            json!({"op": "send", "to": "bob", "data": {"text": "hello you"}})
        );
        assert_eq!(
            frame(r#"/send bob {"kind":"offer"}"#),
            json!({"op": "send", "to": "bob", "data": {"kind": "offer"}})
        );
        assert_eq!(
            frame("/presence bob carol"),
            json!({"op": "presence", "users": ["bob", "carol"]})
        );
        assert_eq!(
            frame("/set topic {\"a\":1}"),
            json!({"op": "state_set", "room": "lobby", "key": "topic", "value": {"a": 1}})
        );
        assert_eq!(
            frame("/set topic launch day"),
            json!({"op": "state_set", "room": "lobby", "key": "topic", "value": "launch day"})
        );
        assert_eq!(frame("/state"), json!({"op": "state_get", "room": "lobby"}));
        assert_eq!(
            frame("/del topic"),
            json!({"op": "state_delete", "room": "lobby", "key": "topic"})
        );
        assert_eq!(frame("/quit"), json!("quit"));
        assert_eq!(frame("/send bob"), json!("bad"));
        assert_eq!(frame("/bogus"), json!("bad"));
    }
}
