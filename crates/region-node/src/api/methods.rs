//! The API's methods: each body is parsed strictly (`deny_unknown_fields`, the protocol's id
//! and JSON rules) and executed with the same store calls as the client's requests.

use meridian_protocol::server_api::{
    BatchBody, BatchReply, BatchResult, BroadcastBody, BroadcastResult, DisconnectBody,
    DisconnectResult, HistoryBody, HistoryResult, InfoBody, InfoResult, MembersBody, PresenceBody,
    PublishBody, SendBody, SendOutcome, StateDeleteBody, StateGetBody, StateSetBody,
};
use meridian_protocol::{
    json_rules, Event, MembersResult, PresenceResult, PublishResult, RoomEventFrame, RoomId,
    StateDeleteResult, StateGetResult, StateSetResult, UserId,
};
use region_state::{PublishItem, Recovery};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use super::{ApiError, ApiErrorCode};
use crate::config::ApiKey;
use crate::context::Node;

/// Longest idempotency key, state key and epoch: the client protocol's limit (`wire.rs`).
const MAX_KEY_LEN: usize = 128;

/// Most rooms of one `broadcast`, users of one `presence`, calls of one `batch`.
pub const MAX_LIST: usize = 100;

macro_rules! api_methods {
    ($($variant:ident => $name:literal, $scope:literal;)*) => {
        /// Every API method, its name (the last path segment) and the scope it needs.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ApiMethod { $(
            #[doc = concat!("`", $name, "` (scope `", $scope, "`).")]
            $variant,
        )* }

        impl ApiMethod {
            /// Every method.
            pub const ALL: &'static [ApiMethod] = &[$(ApiMethod::$variant),*];
            /// The path segment.
            pub fn name(self) -> &'static str {
                match self { $(ApiMethod::$variant => $name,)* }
            }
            /// The scope a key needs (`admin` grants every scope).
            pub fn scope(self) -> &'static str {
                match self { $(ApiMethod::$variant => $scope,)* }
            }
            /// The method named `name`.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($name => Some(ApiMethod::$variant),)* _ => None }
            }
        }
    };
}

api_methods! {
    Publish => "publish", "publish";
    Broadcast => "broadcast", "publish";
    Send => "send", "publish";
    Members => "members", "read";
    Presence => "presence", "read";
    StateGet => "state_get", "read";
    StateSet => "state_set", "state";
    StateDelete => "state_delete", "state";
    History => "history", "read";
    Info => "info", "read";
    Disconnect => "disconnect", "admin";
    Batch => "batch", "read";
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ApiErrorCode::BadRequest, message)
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(bad("the body must be a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("malformed body: {e}")))
}

/// Client JSON (`data`, `value`): the protocol's one rule for JSON that is stored or relayed.
fn client_json(v: &RawValue, field: &str) -> Result<(), ApiError> {
    json_rules::check(v.get())
        .map_err(|rule| bad(format!("`{field}` breaks the JSON rules: {rule}")))
}

fn short_key(k: &str, field: &str) -> Result<(), ApiError> {
    if k.is_empty() || k.len() > MAX_KEY_LEN {
        return Err(bad(format!("`{field}` must be 1 to {MAX_KEY_LEN} bytes")));
    }
    Ok(())
}

fn version(v: Option<u64>) -> Result<Option<u64>, ApiError> {
    if v.is_some_and(|v| v > i64::MAX as u64) {
        return Err(bad("`if_version` is out of range"));
    }
    Ok(v)
}

fn encode<T: Serialize>(result: &T) -> Result<Box<RawValue>, ApiError> {
    serde_json::value::to_raw_value(result)
        .map_err(|e| ApiError::new(ApiErrorCode::Internal, format!("cannot encode: {e}")))
}

fn sender(key: &ApiKey) -> Result<UserId, ApiError> {
    UserId::new(key.from.as_str())
        .map_err(|e| ApiError::new(ApiErrorCode::Internal, format!("api key `from`: {e}")))
}

/// Longest `disconnect` reason, in bytes (it goes into an `error` event).
const MAX_REASON_LEN: usize = 256;

/// Runs one call for `key` (its scopes are checked here, so a batch checks each call).
pub(super) async fn run(
    node: &Node,
    key: &ApiKey,
    method: ApiMethod,
    body: &[u8],
) -> Result<Box<RawValue>, ApiError> {
    if method != ApiMethod::Batch {
        return run_one(node, key, method, body).await;
    }
    allowed(key, method)?;
    let batch: BatchBody = parse(body)?;
    if batch.calls.len() > MAX_LIST {
        return Err(ApiError::new(
            ApiErrorCode::TooLarge,
            format!("a batch takes at most {MAX_LIST} calls"),
        ));
    }
    let mut replies = Vec::with_capacity(batch.calls.len());
    for c in batch.calls {
        let params = c.params.as_ref().map_or("{}", |p| p.get());
        let method = ApiMethod::from_name(&c.method);
        let outcome = match method {
            Some(ApiMethod::Batch) => Err(bad("a batch cannot contain a batch")),
            Some(m) => run_one(node, key, m, params.as_bytes()).await,
            None => Err(ApiError::new(
                ApiErrorCode::NotFound,
                format!("no API method {:?}", c.method),
            )),
        };
        if let Some(m) = method {
            let label = match &outcome {
                Ok(_) => "200",
                Err(e) => e.code.status().1,
            };
            node.metrics.api_call(m.name(), label);
        }
        replies.push(match outcome {
            Ok(result) => BatchReply {
                result: Some(result),
                error: None,
            },
            Err(e) => BatchReply {
                result: None,
                error: Some(e.body().error),
            },
        });
    }
    encode(&BatchResult { replies })
}

fn allowed(key: &ApiKey, method: ApiMethod) -> Result<(), ApiError> {
    let has = |s: &str| key.scopes.iter().any(|k| k == s);
    if has("admin") || has(method.scope()) {
        Ok(())
    } else {
        Err(ApiError::new(
            ApiErrorCode::Forbidden,
            format!(
                "key {:?} lacks scope `{}` for `{}`",
                key.name,
                method.scope(),
                method.name()
            ),
        ))
    }
}

async fn publish(
    node: &Node,
    from: &UserId,
    room: &RoomId,
    data: &RawValue,
    idempotency_key: Option<&str>,
) -> Result<PublishResult, ApiError> {
    let frame = RoomEventFrame::message(room, from, data);
    let item = PublishItem {
        frame: &frame,
        idempotency: idempotency_key.map(|k| (from, k)),
    };
    let done = node
        .timed(
            "publish",
            node.store.publish_many(room, std::slice::from_ref(&item)),
        )
        .await?
        .pop()
        .ok_or_else(|| ApiError::new(ApiErrorCode::Internal, "a publish without a result"))?;
    Ok(PublishResult {
        room: room.clone(),
        seq: done.seq,
        epoch: done.epoch,
        duplicate: done.duplicate,
    })
}

async fn run_one(
    node: &Node,
    key: &ApiKey,
    method: ApiMethod,
    body: &[u8],
) -> Result<Box<RawValue>, ApiError> {
    allowed(key, method)?;
    let store = &node.store;
    match method {
        ApiMethod::Publish => {
            let b: PublishBody = parse(body)?;
            client_json(&b.data, "data")?;
            if let Some(k) = &b.idempotency_key {
                short_key(k, "idempotency_key")?;
            }
            let from = sender(key)?;
            encode(&publish(node, &from, &b.room, &b.data, b.idempotency_key.as_deref()).await?)
        }
        ApiMethod::Broadcast => {
            let b: BroadcastBody = parse(body)?;
            client_json(&b.data, "data")?;
            if let Some(k) = &b.idempotency_key {
                short_key(k, "idempotency_key")?;
            }
            if b.rooms.is_empty() || b.rooms.len() > MAX_LIST {
                return Err(ApiError::new(
                    ApiErrorCode::TooLarge,
                    format!("`rooms` must list 1 to {MAX_LIST} rooms"),
                ));
            }
            let from = sender(key)?;
            let mut results = Vec::with_capacity(b.rooms.len());
            for room in &b.rooms {
                results
                    .push(publish(node, &from, room, &b.data, b.idempotency_key.as_deref()).await?);
            }
            encode(&BroadcastResult { results })
        }
        ApiMethod::Send => {
            let b: SendBody = parse(body)?;
            client_json(&b.data, "data")?;
            let from = sender(key)?;
            let frame = Event::Direct {
                from: &from,
                data: &b.data,
            }
            .encode();
            let delivered = node
                .timed("send_direct", store.send_direct(&b.to, &frame))
                .await?;
            encode(&SendOutcome {
                to: b.to,
                delivered,
            })
        }
        ApiMethod::Members => {
            let b: MembersBody = parse(body)?;
            let max = node.config.limits.members_page_max;
            let limit = b.limit.unwrap_or(max).clamp(1, max);
            let page = node
                .timed("members", store.members(&b.room, b.after.as_ref(), limit))
                .await?;
            encode(&MembersResult {
                members: page.members,
                next: page.next,
                room: b.room,
            })
        }
        ApiMethod::Presence => {
            let b: PresenceBody = parse(body)?;
            if b.users.len() > MAX_LIST {
                return Err(ApiError::new(
                    ApiErrorCode::TooLarge,
                    format!("`users` lists at most {MAX_LIST} users"),
                ));
            }
            // The Redis store cannot take an empty list (an empty command): nothing to ask.
            let users = if b.users.is_empty() {
                Vec::new()
            } else {
                node.timed("presence", store.presence(&b.users)).await?
            };
            encode(&PresenceResult { users })
        }
        ApiMethod::StateGet => {
            let b: StateGetBody = parse(body)?;
            if let Some(k) = &b.key {
                short_key(k, "key")?;
            }
            let entries = node
                .timed("state_get", store.state_get(&b.room, b.key.as_deref()))
                .await?;
            encode(&StateGetResult {
                room: b.room,
                entries,
            })
        }
        ApiMethod::StateSet => {
            let b: StateSetBody = parse(body)?;
            short_key(&b.key, "key")?;
            client_json(&b.value, "value")?;
            let if_version = version(b.if_version)?;
            let from = sender(key)?;
            let version = node
                .timed(
                    "state_set",
                    store.state_set(&b.room, &b.key, &b.value, if_version, &from),
                )
                .await?;
            encode(&StateSetResult {
                key: b.key,
                room: b.room,
                version,
            })
        }
        ApiMethod::StateDelete => {
            let b: StateDeleteBody = parse(body)?;
            short_key(&b.key, "key")?;
            let if_version = version(b.if_version)?;
            let from = sender(key)?;
            let deleted = node
                .timed(
                    "state_delete",
                    store.state_delete(&b.room, &b.key, if_version, &from),
                )
                .await?;
            encode(&StateDeleteResult {
                deleted,
                key: b.key,
                room: b.room,
            })
        }
        ApiMethod::History => {
            let b: HistoryBody = parse(body)?;
            let epoch = b.epoch.unwrap_or_default();
            if epoch.len() > MAX_KEY_LEN {
                return Err(bad(format!("`epoch` is at most {MAX_KEY_LEN} bytes")));
            }
            let since = b.since.unwrap_or(0);
            let recovery = node
                .timed("history", store.history(&b.room, &epoch, since))
                .await?;
            let result = match recovery {
                Recovery::Replay { epoch, events } => {
                    let mut frames = Vec::with_capacity(events.len());
                    for (_, frame) in events {
                        let text = String::from_utf8(frame.to_vec()).map_err(|_| {
                            ApiError::new(ApiErrorCode::Internal, "a stored event is not UTF-8")
                        })?;
                        frames.push(RawValue::from_string(text).map_err(|e| {
                            ApiError::new(ApiErrorCode::Internal, format!("stored event: {e}"))
                        })?);
                    }
                    HistoryResult {
                        room: b.room,
                        epoch,
                        lost: false,
                        seq: None,
                        events: frames,
                    }
                }
                Recovery::Lost { epoch, seq } => HistoryResult {
                    room: b.room,
                    epoch,
                    lost: true,
                    seq: Some(seq),
                    events: Vec::new(),
                },
            };
            encode(&result)
        }
        ApiMethod::Info => {
            let _: InfoBody = parse(body)?;
            let mine = u64::try_from(node.metrics.connections.get()).unwrap_or(0);
            let load = node.timed("region_load", store.region_load(mine)).await?;
            encode(&InfoResult {
                region: node.config.region.clone(),
                node: store.node().as_str().to_owned(),
                connections: mine,
                region_connections: load.connections,
                region_nodes: load.nodes,
            })
        }
        ApiMethod::Disconnect => {
            let b: DisconnectBody = parse(body)?;
            let reason = b.reason.unwrap_or_default();
            if reason.len() > MAX_REASON_LEN {
                return Err(bad(format!("`reason` is at most {MAX_REASON_LEN} bytes")));
            }
            let frame = super::disconnect_frame(&reason);
            let disconnected = node
                .timed("send_direct", store.send_direct(&b.user, &frame))
                .await?;
            encode(&DisconnectResult {
                user: b.user,
                disconnected,
            })
        }
        ApiMethod::Batch => Err(bad("a batch cannot contain a batch")),
    }
}
