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

use meridian_protocol::server_api::{
    ApiErrorBody, BatchBody, BatchCall, BatchResult, BroadcastBody, DisconnectBody, HistoryBody,
    InfoBody, MembersBody, PresenceBody, PublishBody, SendBody, StateDeleteBody, StateGetBody,
    StateSetBody,
};
pub use meridian_protocol::server_api::{
    BroadcastResult, DisconnectResult, HistoryResult, InfoResult, SendOutcome,
};
use meridian_protocol::{
    MembersResult, PresenceResult, PublishResult, RoomId, StateDeleteResult, StateGetResult,
    StateSetResult, UserId,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::{to_raw_value, RawValue};
use serde_json::Value;

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
    /// A body could not be encoded, or the answer was not what the method returns.
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
        Err(match serde_json::from_slice::<ApiErrorBody>(&bytes) {
            Ok(ApiErrorBody { error }) => ServerApiError::Api {
                status: status.as_u16(),
                code: error.code,
                message: error.message,
            },
            // Not the API's error shape (a proxy in between, say): show what came back.
            Err(_) => ServerApiError::Api {
                status: status.as_u16(),
                code: "unknown".into(),
                message: String::from_utf8_lossy(&bytes).into_owned(),
            },
        })
    }

    /// Publishes `data` into `room`; repeats with the same `idempotency_key` publish once.
    pub async fn publish(
        &self,
        room: &RoomId,
        data: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<PublishResult, ServerApiError> {
        let body = PublishBody {
            room: room.clone(),
            data: to_raw_value(data)?,
            idempotency_key: idempotency_key.map(str::to_owned),
        };
        self.call("publish", &body).await
    }

    /// Publishes `data` into each of `rooms`.
    pub async fn broadcast(
        &self,
        rooms: &[RoomId],
        data: &Value,
    ) -> Result<BroadcastResult, ServerApiError> {
        let body = BroadcastBody {
            rooms: rooms.to_vec(),
            data: to_raw_value(data)?,
            idempotency_key: None,
        };
        self.call("broadcast", &body).await
    }

    /// A direct message to every connection of `to` in the node's region.
    pub async fn send(&self, to: &UserId, data: &Value) -> Result<SendOutcome, ServerApiError> {
        let body = SendBody {
            to: to.clone(),
            data: to_raw_value(data)?,
        };
        self.call("send", &body).await
    }

    /// One page of `room`'s members after `after`.
    pub async fn members(
        &self,
        room: &RoomId,
        after: Option<&UserId>,
        limit: Option<u32>,
    ) -> Result<MembersResult, ServerApiError> {
        let body = MembersBody {
            room: room.clone(),
            after: after.cloned(),
            limit,
        };
        self.call("members", &body).await
    }

    /// Online status of `users`.
    pub async fn presence(&self, users: &[UserId]) -> Result<PresenceResult, ServerApiError> {
        let body = PresenceBody {
            users: users.to_vec(),
        };
        self.call("presence", &body).await
    }

    /// One state key of `room`, or all of them.
    pub async fn state_get(
        &self,
        room: &RoomId,
        key: Option<&str>,
    ) -> Result<StateGetResult, ServerApiError> {
        let body = StateGetBody {
            room: room.clone(),
            key: key.map(str::to_owned),
        };
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
        let body = StateSetBody {
            room: room.clone(),
            key: key.to_owned(),
            value: to_raw_value(value)?,
            if_version,
        };
        self.call("state_set", &body).await
    }

    /// Deletes a state key; with `if_version`, only if the key is at that version.
    pub async fn state_delete(
        &self,
        room: &RoomId,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<StateDeleteResult, ServerApiError> {
        let body = StateDeleteBody {
            room: room.clone(),
            key: key.to_owned(),
            if_version,
        };
        self.call("state_delete", &body).await
    }

    /// The room's events after `(epoch, since)` (`None`: from the start of the epoch).
    pub async fn history(
        &self,
        room: &RoomId,
        after: Option<(&str, u64)>,
    ) -> Result<HistoryResult, ServerApiError> {
        let body = HistoryBody {
            room: room.clone(),
            epoch: after.map(|(epoch, _)| epoch.to_owned()),
            since: after.map(|(_, since)| since),
        };
        self.call("history", &body).await
    }

    /// Closes every connection of `user` in the node's region, telling it `reason`.
    pub async fn disconnect(
        &self,
        user: &UserId,
        reason: &str,
    ) -> Result<DisconnectResult, ServerApiError> {
        let body = DisconnectBody {
            user: user.clone(),
            reason: Some(reason.to_owned()),
        };
        self.call("disconnect", &body).await
    }

    /// The node and its region.
    pub async fn info(&self) -> Result<InfoResult, ServerApiError> {
        self.call("info", &InfoBody::default()).await
    }

    /// Several calls `(method, params)` in one request; one `Ok(result)` or `Err(error)` per
    /// call, in order.
    pub async fn batch(
        &self,
        calls: &[(&str, Value)],
    ) -> Result<Vec<Result<Box<RawValue>, ServerApiError>>, ServerApiError> {
        let body = BatchBody {
            calls: calls
                .iter()
                .map(|(method, params)| {
                    Ok(BatchCall {
                        method: (*method).to_owned(),
                        params: Some(to_raw_value(params)?),
                    })
                })
                .collect::<Result<_, serde_json::Error>>()?,
        };
        let answer: BatchResult = self.call("batch", &body).await?;
        Ok(answer
            .replies
            .into_iter()
            .map(|reply| match (reply.result, reply.error) {
                (Some(result), None) => Ok(result),
                (_, Some(error)) => Err(ServerApiError::Api {
                    status: 200,
                    code: error.code,
                    message: error.message,
                }),
                (None, None) => Err(ServerApiError::Api {
                    status: 200,
                    code: "unknown".into(),
                    message: "a batch reply with neither result nor error".into(),
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
