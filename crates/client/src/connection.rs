//! One connection to a node: send requests, match replies by id, read events in order.

use std::collections::VecDeque;

use futures_util::{SinkExt, StreamExt};
use meridian_protocol::{Request, RequestId};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::error::{ClientError, CloseInfo};
use crate::frame::{decode, Event, Frame, Reply};
use crate::transport::{self, ConnectOptions, Ws};

/// How long [`Connection::close`] waits for the node to answer the close.
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One frame as received: decoded, with its text (for logs, or tests that look at the bytes).
#[derive(Debug, Clone)]
pub struct Received {
    /// The decoded frame.
    pub frame: Frame,
    /// The frame's text as the node sent it.
    pub text: Utf8Bytes,
}

/// A connection to a region node's `/v1/ws`.
///
/// One owner drives it; nothing runs in the background. Requests get increasing numeric ids;
/// [`Connection::request`] sends one and waits for its reply, keeping every frame that arrives
/// meanwhile (events, and replies to other pipelined requests) for later calls, in order.
/// WebSocket pings are answered while the connection is being read, so a connection that is
/// kept open must be read (e.g. [`Connection::next_event`] in a `select!` loop): a node closes a
/// connection it has not heard from within `ping_timeout_ms`. Every read is cancel-safe.
pub struct Connection {
    ws: Ws,
    next_id: u64,
    /// Frames read while waiting for another one, in arrival order.
    held: VecDeque<Received>,
    /// The server's close frame, once it came.
    close: Option<CloseInfo>,
    /// Whether the stream has ended.
    ended: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("next_id", &self.next_id)
            .field("held", &self.held.len())
            .field("close", &self.close)
            .finish()
    }
}

impl Connection {
    /// Opens a WebSocket to `url` (`ws://…/v1/ws` or `wss://…`) without saying `hello`.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, &ConnectOptions::default()).await
    }

    /// [`Connection::connect`] with options (TLS roots, WebSocket limits).
    pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Self, ClientError> {
        let ws = transport::open(url, options).await?;
        Ok(Self {
            ws,
            next_id: 0,
            held: VecDeque::new(),
            close: None,
            ended: false,
        })
    }

    /// A fresh request id.
    pub fn next_id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId::Num(self.next_id)
    }

    /// The server's close code and reason, once it closed the connection.
    pub fn close_info(&self) -> Option<&CloseInfo> {
        self.close.as_ref()
    }

    /// Whether the connection has ended (closed by either side, or lost).
    pub fn is_closed(&self) -> bool {
        self.ended
    }

    /// Sends one raw text frame (tests send malformed frames this way).
    pub async fn send_text(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), ClientError> {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| self.write_error(e))
    }

    /// Sends several text frames with one flush (a client pipelining requests).
    pub async fn send_texts(
        &mut self,
        texts: impl IntoIterator<Item = impl Into<Utf8Bytes>>,
    ) -> Result<(), ClientError> {
        for text in texts {
            if let Err(e) = self.ws.feed(Message::Text(text.into())).await {
                return Err(self.write_error(e));
            }
        }
        self.ws.flush().await.map_err(|e| self.write_error(e))
    }

    /// Sends a request under a fresh id without waiting; [`Connection::reply`] gets its reply.
    pub async fn send(&mut self, request: &Request) -> Result<RequestId, ClientError> {
        let id = self.next_id();
        self.send_text(request.encode(&id)).await?;
        Ok(id)
    }

    /// Sends several requests with one flush (pipelined: the node runs them in order and
    /// batches consecutive publishes to one room); returns their ids in order.
    pub async fn send_all(&mut self, requests: &[Request]) -> Result<Vec<RequestId>, ClientError> {
        let mut ids = Vec::with_capacity(requests.len());
        let mut texts = Vec::with_capacity(requests.len());
        for request in requests {
            let id = self.next_id();
            texts.push(request.encode(&id));
            ids.push(id);
        }
        self.send_texts(texts).await?;
        Ok(ids)
    }

    /// Waits for the reply to request `id`: its raw `result`, or the node's error.
    pub async fn reply(&mut self, id: &RequestId) -> Result<Box<RawValue>, ClientError> {
        let received = self
            .wait_for(|f| matches!(f, Frame::Reply(r) if r.id.as_ref() == Some(id)))
            .await?;
        match received.frame {
            Frame::Reply(Reply { outcome, .. }) => outcome.map_err(ClientError::Server),
            Frame::Event(_) => Err(ClientError::Protocol("not a reply".into())),
        }
    }

    /// Sends `request` and waits for its reply: the raw `result`, or the node's error.
    pub async fn request(&mut self, request: &Request) -> Result<Box<RawValue>, ClientError> {
        let id = self.send(request).await?;
        self.reply(&id).await
    }

    /// Sends `request` and decodes its `result` as `T` (the op's result type).
    pub async fn call<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, ClientError> {
        let result = self.request(request).await?;
        serde_json::from_str(result.get()).map_err(|e| {
            ClientError::Protocol(format!("`{}` result: {e}: {}", request.op(), result.get()))
        })
    }

    /// The next server event (frames held earlier first). Replies that arrive meanwhile are
    /// kept for [`Connection::reply`]. `Err(Closed)` once the connection has ended.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        let received = self.wait_for(|f| matches!(f, Frame::Event(_))).await?;
        match received.frame {
            Frame::Event(e) => Ok(e),
            Frame::Reply(_) => Err(ClientError::Protocol("not an event".into())),
        }
    }

    /// The next frame of any kind, in arrival order (frames held earlier first).
    pub async fn next_frame(&mut self) -> Result<Received, ClientError> {
        match self.held.pop_front() {
            Some(r) => Ok(r),
            None => self.read().await,
        }
    }

    /// The first frame, held or new, for which `wanted` is true; the others are held, in
    /// order, for later calls.
    pub async fn wait_for(
        &mut self,
        mut wanted: impl FnMut(&Frame) -> bool,
    ) -> Result<Received, ClientError> {
        if let Some(i) = self.held.iter().position(|r| wanted(&r.frame)) {
            if let Some(r) = self.held.remove(i) {
                return Ok(r);
            }
        }
        loop {
            let r = self.read().await?;
            if wanted(&r.frame) {
                return Ok(r);
            }
            self.held.push_back(r);
        }
    }

    /// Removes and returns every held frame for which `wanted` is true (what arrived while
    /// the caller waited for something else).
    pub fn take_held(&mut self, mut wanted: impl FnMut(&Frame) -> bool) -> Vec<Received> {
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.held.len());
        for r in self.held.drain(..) {
            if wanted(&r.frame) {
                taken.push(r);
            } else {
                kept.push_back(r);
            }
        }
        self.held = kept;
        taken
    }

    /// Sends a close frame and waits for the node's (at most [`CLOSE_WAIT`]).
    pub async fn close(mut self) -> Result<(), ClientError> {
        match self.ws.close(None).await {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {}
            Err(e) => return Err(ClientError::WebSocket(e)),
        }
        // Read to the end so the close handshake completes; a node that does not answer is
        // not waited for long.
        let end = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(CLOSE_WAIT, end).await;
        Ok(())
    }

    /// Reads one frame from the socket (skipping pings, pongs and binary frames).
    async fn read(&mut self) -> Result<Received, ClientError> {
        loop {
            if self.ended {
                return Err(ClientError::Closed(self.close.clone()));
            }
            // `next` is cancel-safe, and nothing below awaits: a read cancelled by a
            // `select!` or a timeout loses no frame.
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let frame = decode(&text)?;
                    return Ok(Received { frame, text });
                }
                Some(Ok(Message::Close(frame))) => {
                    self.close = frame.map(|f| CloseInfo {
                        code: u16::from(f.code),
                        reason: f.reason.to_string(),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    self.ended = true;
                    return Err(match e {
                        tungstenite::Error::ConnectionClosed
                        | tungstenite::Error::AlreadyClosed
                        | tungstenite::Error::Protocol(
                            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                        ) => ClientError::Closed(self.close.clone()),
                        // The pong to a ping read after the node closed finds the socket shut.
                        tungstenite::Error::Io(io) if is_gone(&io) => {
                            ClientError::Closed(self.close.clone())
                        }
                        e => ClientError::WebSocket(e),
                    });
                }
                None => self.ended = true,
            }
        }
    }

    fn write_error(&mut self, e: tungstenite::Error) -> ClientError {
        match e {
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                self.ended = true;
                ClientError::Closed(self.close.clone())
            }
            tungstenite::Error::Io(io) if is_gone(&io) => {
                self.ended = true;
                ClientError::Closed(self.close.clone())
            }
            e => ClientError::WebSocket(e),
        }
    }
}

/// Whether an I/O error means the peer has gone (the connection is over, not failing).
fn is_gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof
    )
}
