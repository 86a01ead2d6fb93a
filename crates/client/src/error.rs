//! What can go wrong talking to a node, and whether trying again can help.

use meridian_protocol::ErrorCode;
use tokio_tungstenite::tungstenite;

/// How the server ended the connection: the WebSocket close code and reason
/// (`docs/protocol.md` §3 "Close codes").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code (1008 policy, 1012 shutting down, 1013 try later, …).
    pub code: u16,
    /// The close reason (for 1008 the error code, e.g. `token_expired`).
    pub reason: String,
}

impl std::fmt::Display for CloseInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.reason.is_empty() {
            write!(f, "close {}", self.code)
        } else {
            write!(f, "close {} ({})", self.code, self.reason)
        }
    }
}

/// An `error` from the node: the reply to one request, or a connection-level event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The stable code, when this client knows it (a newer node may send codes it does not:
    /// `name` has it then).
    pub code: Option<ErrorCode>,
    /// The code as sent.
    pub name: String,
    /// For humans; may change.
    pub message: String,
}

impl ServerError {
    /// Whether the same request may succeed if sent again later (`ErrorCode::is_retryable`).
    pub fn is_retryable(&self) -> bool {
        self.code.is_some_and(ErrorCode::is_retryable)
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not a `ws://` or `wss://` URL this client can open.
    #[error("bad URL {url}: {why}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// TCP, TLS or the WebSocket upgrade failed (is the node up? retrying may help).
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// The transport's error.
        #[source]
        source: tungstenite::Error,
    },
    /// The TLS client configuration could not be built.
    #[error("TLS: {0}")]
    Tls(String),
    /// Reading or writing the WebSocket failed.
    #[error("WebSocket: {0}")]
    WebSocket(#[source] tungstenite::Error),
    /// The connection is closed; the server's close code and reason when it sent them.
    #[error("the connection is closed{}", .0.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    Closed(Option<CloseInfo>),
    /// The node answered with an error (the reply to a request, or a connection-level error
    /// event such as `not_authenticated` or `token_expired`).
    #[error("{0}")]
    Server(ServerError),
    /// A request's data could not be encoded as JSON.
    #[error("cannot encode the request: {0}")]
    Encode(#[source] serde_json::Error),
    /// The node sent a frame this client cannot read as protocol v1.
    #[error("unexpected frame from the node: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The node's error code, when this is an error the node sent.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server(e) => e.code,
            _ => None,
        }
    }

    /// Whether trying again later can help: retryable server codes (`unavailable`,
    /// `rate_limited`, `draining`), and transport failures (a new connection may work).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Server(e) => e.is_retryable(),
            Self::Connect { .. } | Self::WebSocket(_) | Self::Closed(_) => true,
            Self::Url { .. } | Self::Tls(_) | Self::Encode(_) | Self::Protocol(_) => false,
        }
    }
}
