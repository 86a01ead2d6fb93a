//! A test receiver (feature `test-support`): an axum server on `127.0.0.1` that verifies every
//! batch with the reference [`Verifier`], records what it accepted and refused, and can be
//! told to answer 500 or be down (its port closed) and come back on the same port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio_util::sync::CancellationToken;

use crate::event::{Batch, WebhookEvent};
use crate::signature::{Verifier, VerifyError, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};

/// One request as received.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// `Meridian-Webhook-Id`.
    pub id: String,
    /// `Meridian-Webhook-Timestamp`.
    pub timestamp: String,
    /// `Meridian-Webhook-Signature`.
    pub signature: String,
    /// The body.
    pub body: Vec<u8>,
}

#[derive(Debug)]
struct Inner {
    verifier: Verifier,
    failing: bool,
    failing_until: Option<Instant>,
    attempts: usize,
    accepted: Vec<(RawRequest, Batch)>,
    refused: Vec<VerifyError>,
}

type Shared = Arc<Mutex<Inner>>;

/// The receiver.
#[derive(Debug)]
pub struct TestReceiver {
    addr: SocketAddr,
    inner: Shared,
    stop: Option<CancellationToken>,
}

fn lock(inner: &Shared) -> std::sync::MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TestReceiver {
    /// Starts on a free loopback port, verifying with `secret` (tolerance 300 s).
    pub async fn start(secret: &str) -> std::io::Result<Self> {
        let inner = Arc::new(Mutex::new(Inner {
            verifier: Verifier::new(secret, 300),
            failing: false,
            failing_until: None,
            attempts: 0,
            accepted: Vec::new(),
            refused: Vec::new(),
        }));
        let mut r = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            inner,
            stop: None,
        };
        r.up().await?;
        Ok(r)
    }

    /// `http://127.0.0.1:<port>/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers 500 to everything while `failing`.
    pub fn set_failing(&self, failing: bool) {
        lock(&self.inner).failing = failing;
    }

    /// Answers 500 to everything for `period` from now.
    pub fn fail_for(&self, period: Duration) {
        lock(&self.inner).failing_until = Some(Instant::now() + period);
    }

    /// Closes the port: senders get connection refused.
    pub fn down(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
    }

    /// Listens again on the same port.
    pub async fn up(&mut self) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        self.addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(self.inner.clone());
        let done = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(done.cancelled_owned())
                .await;
        });
        self.stop = Some(stop);
        Ok(())
    }

    /// Requests received (any answer).
    pub fn attempts(&self) -> usize {
        lock(&self.inner).attempts
    }

    /// Every accepted event, in arrival order.
    pub fn events(&self) -> Vec<WebhookEvent> {
        lock(&self.inner)
            .accepted
            .iter()
            .flat_map(|(_, b)| b.events.clone())
            .collect()
    }

    /// Accepted requests and their batches.
    pub fn accepted(&self) -> Vec<(RawRequest, Batch)> {
        lock(&self.inner).accepted.clone()
    }

    /// Verification failures, in order.
    pub fn refused(&self) -> Vec<VerifyError> {
        lock(&self.inner).refused.clone()
    }

    /// Sends a recorded request again (a replay attack); returns the status.
    pub async fn replay(&self, raw: &RawRequest) -> Result<u16, reqwest::Error> {
        let r = reqwest::Client::new()
            .post(self.url())
            .header(HEADER_ID, &raw.id)
            .header(HEADER_TIMESTAMP, &raw.timestamp)
            .header(HEADER_SIGNATURE, &raw.signature)
            .body(raw.body.clone())
            .send()
            .await?;
        Ok(r.status().as_u16())
    }
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        self.down();
    }
}

async fn receive(State(inner): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let raw = RawRequest {
        id: h(HEADER_ID),
        timestamp: h(HEADER_TIMESTAMP),
        signature: h(HEADER_SIGNATURE),
        body: body.to_vec(),
    };
    let mut g = lock(&inner);
    g.attempts += 1;
    if g.failing || g.failing_until.is_some_and(|t| Instant::now() < t) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match g
        .verifier
        .verify(&raw.id, &raw.timestamp, &raw.signature, &raw.body, now)
    {
        Ok(()) => match serde_json::from_slice::<Batch>(&raw.body) {
            Ok(batch) => {
                g.accepted.push((raw, batch));
                StatusCode::OK
            }
            Err(_) => StatusCode::BAD_REQUEST,
        },
        Err(e) => {
            g.refused.push(e.clone());
            // A replay is answered 200 (nothing is processed): a sender that lost our first
            // answer stops retrying.
            if e == VerifyError::Replayed {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            }
        }
    }
}
