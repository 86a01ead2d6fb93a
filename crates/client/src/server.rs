//! The server API for an application backend (`docs/server-api.md`): typed calls over
//! HTTP+JSON to a region node's `api.listen`, authenticated with an API key.
//!
//! ```no_run
//! # async fn demo() -> Result<(), meridian_client::server::ServerApiError> {
//! use meridian_client::server::ServerApi;
//! use meridian_client::protocol::RoomId;
//! let api = ServerApi::new("http://127.0.0.1:7101", "a-long-random-secret")?;
//! let room = RoomId::new("lobby").map_err(|e| meridian_client::server::ServerApiError::Input(e.to_string()))?;
//! let published = api.publish(&room, &serde_json::json!({"text": "hi"}), Some("notice-1")).await?;
//! println!("seq {}", published.seq);
//! # Ok(()) }
//! ```

use meridian_protocol::{
    MembersResult, PresenceResult, PublishResult, RoomId, StateDeleteResult, StateGetResult,
    StateSetResult, UserId,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What can go wrong calling the server API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerApiError {
    /// The request could not be sent or its answer read (connection refused, timeout).
    /// Retrying may help.
    #[error("server API transport: {0}")]
    Transport(#[from] reqwest::Error),
    /// The node answered with an error (`{"error": {"code", "message"}}`).
    #[error("server API {status} {code}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error code (`unauthorized`, `forbidden`, `version_conflict`, …).
        code: String,
        /// For people.
        message: String,
    },
    /// The answer was not what the method returns.
    #[error("server API answer: {0}")]
    Decode(#[from] serde_json::Error),
    /// An argument was refused before sending (a bad base URL).
    #[error("server API input: {0}")]
    Input(String),
}

impl ServerApiError {
    /// Whether the same call may succeed if made again later (transport failures, 429, 503).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Api { status, .. } => matches!(status, 429 | 503),
            _ => false,
        }
    }
}

/// The result of `broadcast`: one publish result per room, in order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BroadcastResult {
    /// Per room.
    pub results: Vec<PublishResult>,
}

/// The result of `send`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SendOutcome {
    /// The user.
    pub to: UserId,
    /// Whether a node of the region held a connection of the user.
    pub delivered: bool,
}

/// The result of `disconnect`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DisconnectOutcome {
    /// The user.
    pub user: UserId,
    /// Whether a node of the region held a connection of the user.
    pub disconnected: bool,
}

/// The result of `history`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct History {
    /// The room.
    pub room: RoomId,
    /// The room history's epoch.
    pub epoch: String,
    /// True when the history no longer reaches back to the position asked for.
    pub lost: bool,
    /// With `lost`: the room's current sequence number.
    #[serde(default)]
    pub seq: Option<u64>,
    /// The room events (as clients receive them), in order.
    pub events: Vec<Value>,
}

/// The result of `info`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NodeInfo {
    /// The node's region.
    pub region: String,
    /// The node's id.
    pub node: String,
    /// This node's connections.
    pub connections: u64,
    /// The region's connections.
    pub region_connections: u64,
    /// The region's live nodes.
    pub region_nodes: u64,
}

/// A handle on one node's server API. Cheap to clone (the HTTP connection pool is shared).
#[derive(Debug, Clone)]
pub struct ServerApi {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl ServerApi {
    /// A client of the API at `base` (`http://host:port`, the node's `api.listen`) with `key`.
    pub fn new(base: &str, key: &str) -> Result<Self, ServerApiError> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ServerApiError::Input(format!(
                "base URL {base:?} must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            auth: format!("Bearer {key}"),
        })
    }

    /// Calls `method` with `body`; the decoded result, or the node's error.
    pub async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: &str,
        body: &B,
    ) -> Result<T, ServerApiError> {
        let response = self
            .http
            .post(format!("{}/api/v1/{method}", self.base))
            .header(reqwest::header::AUTHORIZATION, &self.auth)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body)?)
            .send()
            .await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if status.is_success() {
            return Ok(serde_json::from_slice(&bytes)?);
        }
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        Err(ServerApiError::Api {
            status: status.as_u16(),
            code: v["error"]["code"].as_str().unwrap_or("unknown").to_owned(),
            message: v["error"]["message"].as_str().map_or_else(
                || String::from_utf8_lossy(&bytes).into_owned(),
                str::to_owned,
            ),
        })
    }

    /// Publishes `data` into `room`; repeats with the same `idempotency_key` publish once.
    pub async fn publish(
        &self,
        room: &RoomId,
        data: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<PublishResult, ServerApiError> {
        let mut body = json!({"room": room, "data": data});
        if let Some(k) = idempotency_key {
            body["idempotency_key"] = json!(k);
        }
        self.call("publish", &body).await
    }

    /// Publishes `data` into each of `rooms`.
    pub async fn broadcast(
        &self,
        rooms: &[RoomId],
        data: &Value,
    ) -> Result<BroadcastResult, ServerApiError> {
        self.call("broadcast", &json!({"rooms": rooms, "data": data}))
            .await
    }

    /// A direct message to every connection of `to` in the node's region.
    pub async fn send(&self, to: &UserId, data: &Value) -> Result<SendOutcome, ServerApiError> {
        self.call("send", &json!({"to": to, "data": data})).await
    }

    /// One page of `room`'s members after `after`.
    pub async fn members(
        &self,
        room: &RoomId,
        after: Option<&UserId>,
        limit: Option<u32>,
    ) -> Result<MembersResult, ServerApiError> {
        let mut body = json!({"room": room});
        if let Some(a) = after {
            body["after"] = json!(a);
        }
        if let Some(l) = limit {
            body["limit"] = json!(l);
        }
        self.call("members", &body).await
    }

    /// Online status of `users`.
    pub async fn presence(&self, users: &[UserId]) -> Result<PresenceResult, ServerApiError> {
        self.call("presence", &json!({"users": users})).await
    }

    /// One state key of `room`, or all of them.
    pub async fn state_get(
        &self,
        room: &RoomId,
        key: Option<&str>,
    ) -> Result<StateGetResult, ServerApiError> {
        let mut body = json!({"room": room});
        if let Some(k) = key {
            body["key"] = json!(k);
        }
        self.call("state_get", &body).await
    }

    /// Writes a state key; with `if_version`, only if the key is at that version (0: absent).
    pub async fn state_set(
        &self,
        room: &RoomId,
        key: &str,
        value: &Value,
        if_version: Option<u64>,
    ) -> Result<StateSetResult, ServerApiError> {
        let mut body = json!({"room": room, "key": key, "value": value});
        if let Some(v) = if_version {
            body["if_version"] = json!(v);
        }
        self.call("state_set", &body).await
    }

    /// Deletes a state key; with `if_version`, only if the key is at that version.
    pub async fn state_delete(
        &self,
        room: &RoomId,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<StateDeleteResult, ServerApiError> {
        let mut body = json!({"room": room, "key": key});
        if let Some(v) = if_version {
            body["if_version"] = json!(v);
        }
        self.call("state_delete", &body).await
    }

    /// The room's events after `(epoch, since)` (`None`: from the start of the epoch).
    pub async fn history(
        &self,
        room: &RoomId,
        after: Option<(&str, u64)>,
    ) -> Result<History, ServerApiError> {
        let mut body = json!({"room": room});
        if let Some((epoch, since)) = after {
            body["epoch"] = json!(epoch);
            body["since"] = json!(since);
        }
        self.call("history", &body).await
    }

    /// Closes every connection of `user` in the node's region, telling it `reason`.
    pub async fn disconnect(
        &self,
        user: &UserId,
        reason: &str,
    ) -> Result<DisconnectOutcome, ServerApiError> {
        self.call("disconnect", &json!({"user": user, "reason": reason}))
            .await
    }

    /// The node and its region.
    pub async fn info(&self) -> Result<NodeInfo, ServerApiError> {
        self.call("info", &json!({})).await
    }

    /// Several calls `(method, params)` in one request; one `Ok(result)` or `Err(error)` per
    /// call, in order.
    pub async fn batch(
        &self,
        calls: &[(&str, Value)],
    ) -> Result<Vec<Result<Value, ServerApiError>>, ServerApiError> {
        let calls: Vec<Value> = calls
            .iter()
            .map(|(m, p)| json!({"method": m, "params": p}))
            .collect();
        let answer: Value = self.call("batch", &json!({"calls": calls})).await?;
        let replies = answer["replies"].as_array().cloned().unwrap_or_default();
        Ok(replies
            .into_iter()
            .map(|r| match r.get("result") {
                Some(result) => Ok(result.clone()),
                None => Err(ServerApiError::Api {
                    status: 200,
                    code: r["error"]["code"].as_str().unwrap_or("unknown").to_owned(),
                    message: r["error"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                }),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_base_url_is_refused() {
        assert!(matches!(
            ServerApi::new("127.0.0.1:7101", "k"),
            Err(ServerApiError::Input(_))
        ));
        assert!(ServerApi::new("http://127.0.0.1:7101/", "k").is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_node_is_a_retryable_transport_error() {
        // A port nothing listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let api = ServerApi::new(&format!("http://127.0.0.1:{port}"), "k").unwrap();
        let e = api.info().await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
    }
}
