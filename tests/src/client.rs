//! The tests' WebSocket client: a thin layer over `meridian-client`'s [`Connection`] that
//! speaks in JSON values, because the tests assert on frames as the node wrote them (and send
//! malformed ones on purpose). The transport, request ids, reply matching, the event queue and
//! close handling are the typed client's; `hello` goes through its typed `hello`.

use std::time::Duration;

use anyhow::{bail, Result};
use meridian_client::protocol::{RequestId, ResumePoint};
use meridian_client::{ClientError, Connection, Frame, Received};
use serde_json::{json, Value};
use tokio::time::Instant;

/// How long a test waits for any one frame.
pub const WAIT: Duration = Duration::from_secs(5);

/// A protocol v1 client: requests wait for their reply while events queue up in order.
#[derive(Debug)]
pub struct Client {
    conn: Connection,
    /// Set when the server closed the connection (code, reason).
    pub closed: Option<(u16, String)>,
}

fn value(received: &Received) -> Result<Value> {
    Ok(serde_json::from_str(&received.text)?)
}

fn is_reply(frame: &Frame) -> bool {
    matches!(frame, Frame::Reply(_))
}

impl Client {
    /// Opens a WebSocket without saying hello.
    pub async fn connect(url: &str) -> Result<Self> {
        let conn = tokio::time::timeout(WAIT, Connection::connect(url)).await??;
        Ok(Self { conn, closed: None })
    }

    /// Connects and says hello with `token`; returns the client and the hello result.
    /// `resume` is the `resume` list (`null` or `[]` for none).
    pub async fn hello(url: &str, token: &str, resume: Value) -> Result<(Self, Value)> {
        let mut c = Self::connect(url).await?;
        let points: Option<Vec<ResumePoint>> = match &resume {
            Value::Null => Some(Vec::new()),
            other => serde_json::from_value(other.clone()).ok(),
        };
        let result = match points {
            Some(points) => {
                let hello = tokio::time::timeout(WAIT, c.conn.hello(token, points)).await?;
                c.sync();
                serde_json::to_value(hello?)?
            }
            // Not a valid resume list: the test wants to see the node's answer to it.
            None => {
                let r = c
                    .request(json!({"op": "hello", "token": token, "resume": resume}))
                    .await?;
                crate::ok(r)?
            }
        };
        Ok((c, result))
    }

    /// Notes the server's close frame once it came.
    fn sync(&mut self) {
        if self.closed.is_none() {
            self.closed = self.conn.close_info().map(|c| (c.code, c.reason.clone()));
        }
    }

    /// The first frame (held or new) that `wanted` picks within `wait`: `Ok(None)` when none
    /// came in time; an error when the connection ended.
    async fn frame(
        &mut self,
        wait: Duration,
        wanted: impl FnMut(&Frame) -> bool,
    ) -> Result<Option<Value>> {
        let got = tokio::time::timeout(wait, self.conn.wait_for(wanted)).await;
        self.sync();
        match got {
            Err(_) => Ok(None),
            Ok(Ok(r)) => Ok(Some(value(&r)?)),
            Ok(Err(ClientError::Closed(_))) => {
                bail!("connection closed (close: {:?})", self.closed)
            }
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// Sends a raw text frame.
    pub async fn send_raw(&mut self, text: impl Into<String>) -> Result<()> {
        self.conn.send_text(text.into()).await?;
        Ok(())
    }

    /// Sends several text frames with one write (a client pipelining requests).
    pub async fn send_pipelined(&mut self, frames: impl IntoIterator<Item = String>) -> Result<()> {
        self.conn.send_texts(frames).await?;
        Ok(())
    }

    /// The next `n` replies (`ok`/`error` frames, with or without an id) in the order they
    /// arrive; events received meanwhile are queued for [`Client::event`].
    pub async fn replies(&mut self, n: usize) -> Result<Vec<Value>> {
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = |f: &Frame| is_reply(f) || f.kind() == "error";
            let Some(frame) = self.frame(left, reply).await? else {
                bail!("{} of {n} replies arrived", out.len())
            };
            out.push(frame);
        }
        Ok(out)
    }

    /// Sends a request (an `id` is added) and waits for its reply; events received meanwhile
    /// are queued for [`Client::event`].
    pub async fn request(&mut self, mut req: Value) -> Result<Value> {
        let RequestId::Num(id) = self.conn.next_id() else {
            bail!("the client numbers its requests")
        };
        req["id"] = json!(id);
        self.send_raw(req.to_string()).await?;
        self.reply_for(Some(id)).await
    }

    /// Waits for the reply with this id (`None`: a reply with `id: null`).
    pub async fn reply_for(&mut self, id: Option<u64>) -> Result<Value> {
        let id = id.map(RequestId::Num);
        let ours = |f: &Frame| matches!(f, Frame::Reply(r) if r.id == id);
        match self.frame(WAIT, ours).await? {
            Some(frame) => Ok(frame),
            None => bail!("no reply to request {id:?}"),
        }
    }

    /// The next server event of type `kind` (others are kept), within `wait`.
    pub async fn event_within(&mut self, kind: &str, wait: Duration) -> Result<Value> {
        match self.frame(wait, |f| f.kind() == kind).await? {
            Some(frame) => Ok(frame),
            None => bail!("no {kind} event within {wait:?}"),
        }
    }

    /// The next event of type `kind` within [`WAIT`].
    pub async fn event(&mut self, kind: &str) -> Result<Value> {
        self.event_within(kind, WAIT).await
    }

    /// Every event of type `kind` that arrives within `wait` (plus those queued).
    pub async fn drain_events(&mut self, kind: &str, wait: Duration) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for r in self.conn.take_held(|f| f.kind() == kind) {
            out.push(value(&r)?);
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(out);
            }
            match self.frame(left, |f| f.kind() == kind).await {
                Ok(Some(f)) => out.push(f),
                Ok(None) | Err(_) => return Ok(out),
            }
        }
    }

    /// Waits until the server closes the connection; returns the close code (1006 when it
    /// ended without a close frame).
    pub async fn closed_within(&mut self, wait: Duration) -> Result<u16> {
        if let Some((code, _)) = &self.closed {
            return Ok(*code);
        }
        // Every frame that comes meanwhile is kept for later calls.
        match self.frame(wait, |_| false).await {
            Ok(_) if self.closed.is_none() => bail!("connection still open after {wait:?}"),
            _ => Ok(self.closed.as_ref().map_or(1006, |c| c.0)),
        }
    }
}
