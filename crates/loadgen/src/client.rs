//! One load-generator connection: a TCP connect from a chosen loopback source address (so tens
//! of thousands of connections do not run out of ephemeral ports on one address pair), the
//! WebSocket upgrade, and the system's handshake (Meridian `hello`, Socket.IO `40` connect),
//! then requests that wait for their reply.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use meridian_protocol::token::{issue, Claims, RoomGrant};
use meridian_protocol::{RoomId, UserId};
use serde_json::value::RawValue;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::wire::{meridian, socketio, Incoming, System};
use crate::LoadgenError;

/// A WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

/// The servers of one system under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Which protocol.
    pub system: System,
    /// The servers (two nodes, or two Socket.IO processes); clients are spread over them.
    pub servers: Vec<SocketAddr>,
    /// The HS256 secret both systems verify tokens with.
    pub secret: String,
    /// Source addresses to connect from, round robin (empty: let the kernel choose).
    pub sources: Vec<IpAddr>,
    /// How long one connect, handshake or reply may take.
    pub timeout: Duration,
}

impl Target {
    /// A token for `user` that may join and publish in every room, valid for a day.
    pub fn token(&self, user: &str) -> Result<String, LoadgenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub: UserId::new(user).map_err(|e| LoadgenError::Config(format!("user id: {e}")))?,
            exp: now + 86_400,
            rooms: vec![RoomGrant {
                pattern: "*".into(),
                publish: true,
            }],
            nbf: None,
            iat: Some(now),
            // The bench's clients message each other without sharing a room.
            dm: true,
        };
        issue(self.secret.as_bytes(), &claims)
            .map_err(|e| LoadgenError::Config(format!("token: {e}")))
    }

    /// The server for client number `n` (alternating).
    pub fn server(&self, n: usize) -> SocketAddr {
        self.servers[n % self.servers.len()]
    }

    /// The source address for connection number `n`.
    pub fn source(&self, n: usize) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[n % self.sources.len()])
    }
}

/// Small WebSocket buffers: the defaults (128 KiB each way) would cost the load generator
/// gigabytes at 50,000 connections; frames here are a few hundred bytes.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Where a failure happened, for the error counts of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// TCP connect.
    Connect,
    /// WebSocket upgrade.
    Upgrade,
    /// `hello` / Socket.IO connect.
    Handshake,
    /// `join`.
    Join,
    /// A publish or send was refused or the connection broke while in use.
    Traffic,
}

impl Stage {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Upgrade => "upgrade",
            Self::Handshake => "handshake",
            Self::Join => "join",
            Self::Traffic => "traffic",
        }
    }
}

/// A failure of one client, with where it happened.
#[derive(Debug)]
pub struct ClientError {
    /// Where.
    pub stage: Stage,
    /// What.
    pub detail: String,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.stage.name(), self.detail)
    }
}

/// A room name as the protocol's id (validated once per frame: a byte scan).
fn room_id(room: &str) -> Result<RoomId, String> {
    RoomId::new(room).map_err(|e| format!("room {room:?}: {e}"))
}

fn fail(stage: Stage, detail: impl std::fmt::Display) -> ClientError {
    ClientError {
        stage,
        detail: detail.to_string(),
    }
}

/// An open, authenticated connection.
#[derive(Debug)]
pub struct Client {
    /// The socket.
    pub ws: Ws,
    /// Its protocol.
    pub system: System,
    next_id: u64,
    timeout: Duration,
}

/// Opens a TCP connection from `source` (port chosen by the kernel) with `TCP_NODELAY`.
pub async fn tcp_connect(to: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(to).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Handshakes that a server refused with `reconnect` (Meridian's admission control sheds a
/// storm with `reconnect` `overloaded` and a delay) and that were retried after that delay, as
/// a client does. Process-wide; a run reads it at its end.
pub static SHED_RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How long one client keeps retrying shed handshakes before it counts as failed.
const RETRY_BUDGET: Duration = Duration::from_secs(60);

impl Client {
    /// Connects client number `n` as `user`: TCP, upgrade, handshake. A handshake answered
    /// with `reconnect` is retried after its `after_ms` (a fresh connection), as a client
    /// following docs/protocol.md would, for up to a minute.
    pub async fn open(target: &Target, n: usize, user: &str) -> Result<Self, ClientError> {
        let token = target.token(user).map_err(|e| fail(Stage::Handshake, e))?;
        let give_up = tokio::time::Instant::now() + RETRY_BUDGET;
        loop {
            match Self::open_once(target, n, &token).await {
                Err(e) if e.stage == Stage::Handshake => {
                    let Some(after) = crate::wire::reconnect_after(&e.detail) else {
                        return Err(e);
                    };
                    let after = after.max(Duration::from_millis(10));
                    if tokio::time::Instant::now() + after > give_up {
                        return Err(e);
                    }
                    SHED_RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(after).await;
                }
                other => return other,
            }
        }
    }

    async fn open_once(target: &Target, n: usize, token: &str) -> Result<Self, ClientError> {
        let addr = target.server(n);
        let stream = tokio::time::timeout(target.timeout, tcp_connect(addr, target.source(n)))
            .await
            .map_err(|_| fail(Stage::Connect, "timed out"))?
            .map_err(|e| fail(Stage::Connect, e))?;
        let url = format!("ws://{addr}{}", target.system.ws_path());
        let (ws, _) = tokio::time::timeout(
            target.timeout,
            tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())),
        )
        .await
        .map_err(|_| fail(Stage::Upgrade, "timed out"))?
        .map_err(|e| fail(Stage::Upgrade, e))?;
        let mut client = Self {
            ws,
            system: target.system,
            next_id: 0,
            timeout: target.timeout,
        };
        match target.system {
            System::Meridian => {
                let id = client.id();
                client
                    .request(meridian::hello(id, token), id)
                    .await
                    .map_err(|e| fail(Stage::Handshake, e))?;
            }
            System::SocketIo => {
                client
                    .text(socketio::connect(token))
                    .await
                    .map_err(|e| fail(Stage::Handshake, e))?;
                client
                    .wait(|i| matches!(i, Incoming::Connected))
                    .await
                    .map_err(|e| fail(Stage::Handshake, e))?;
            }
        }
        Ok(client)
    }

    /// A fresh request id.
    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends one text frame.
    pub async fn text(&mut self, frame: String) -> Result<(), String> {
        self.ws
            .send(Message::Text(frame.into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Queues one text frame without flushing (flush with [`Client::flush`]).
    pub async fn feed(&mut self, frame: String) -> Result<(), String> {
        self.ws
            .feed(Message::Text(frame.into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Flushes queued frames.
    pub async fn flush(&mut self) -> Result<(), String> {
        self.ws.flush().await.map_err(|e| e.to_string())
    }

    /// Joins `room` and waits for the reply.
    pub async fn join(&mut self, room: &str) -> Result<(), ClientError> {
        let id = self.id();
        let frame = match self.system {
            System::Meridian => {
                meridian::join(id, room_id(room).map_err(|e| fail(Stage::Join, e))?)
            }
            System::SocketIo => socketio::join(id, room),
        };
        self.request(frame, id)
            .await
            .map_err(|e| fail(Stage::Join, e))
    }

    /// The frame that publishes `data` to `room` under a fresh id.
    pub fn publish_frame(
        &mut self,
        room: &str,
        data: Box<RawValue>,
    ) -> Result<String, ClientError> {
        let id = self.id();
        Ok(match self.system {
            System::Meridian => meridian::publish(
                id,
                room_id(room).map_err(|e| fail(Stage::Traffic, e))?,
                data,
            ),
            System::SocketIo => socketio::publish(id, room, data.get()),
        })
    }

    /// The frame that sends `data` to user `to` under a fresh id.
    pub fn send_frame(&mut self, to: &str, data: Box<RawValue>) -> Result<String, ClientError> {
        let id = self.id();
        Ok(match self.system {
            System::Meridian => {
                let to = UserId::new(to)
                    .map_err(|e| fail(Stage::Traffic, format!("user {to:?}: {e}")))?;
                meridian::send(id, to, data)
            }
            System::SocketIo => socketio::send(id, to, data.get()),
        })
    }

    /// Classifies a frame with this connection's protocol.
    pub fn classify<'a>(&self, text: &'a str) -> Incoming<'a> {
        match self.system {
            System::Meridian => meridian::classify(text),
            System::SocketIo => socketio::classify(text),
        }
    }

    /// The next text frame (answering Engine.IO pings on the way; WebSocket pings are
    /// answered by tungstenite). `Ok(None)` when the connection closed.
    pub async fn next_text(&mut self) -> Result<Option<Utf8Bytes>, String> {
        loop {
            match self.ws.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(Message::Text(t))) => {
                    if self.system == System::SocketIo && t.as_str() == "2" {
                        self.text(socketio::PONG.to_owned()).await?;
                        continue;
                    }
                    return Ok(Some(t));
                }
                Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(_)) => {}
            }
        }
    }

    async fn wait(&mut self, want: impl Fn(&Incoming<'_>) -> bool) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let t = tokio::time::timeout_at(deadline, self.next_text())
                .await
                .map_err(|_| "timed out".to_owned())??
                .ok_or_else(|| "connection closed".to_owned())?;
            let incoming = self.classify(&t);
            if want(&incoming) {
                return Ok(());
            }
            if let Incoming::Refused(why) = incoming {
                return Err(why);
            }
        }
    }

    /// Sends `frame` (request `id`) and waits for its reply; other frames are dropped.
    pub async fn request(&mut self, frame: String, id: u64) -> Result<(), String> {
        self.text(frame).await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let t = tokio::time::timeout_at(deadline, self.next_text())
                .await
                .map_err(|_| "no reply in time".to_owned())??
                .ok_or_else(|| "connection closed".to_owned())?;
            match self.classify(&t) {
                Incoming::Reply { id: got, ok, error } if got == id => {
                    return if ok {
                        Ok(())
                    } else {
                        Err(error.unwrap_or_else(|| "error".into()))
                    };
                }
                Incoming::Refused(why) => return Err(why),
                _ => {}
            }
        }
    }

    /// Closes the WebSocket (close frame), ignoring errors.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}
