//! The server API: HTTP+JSON for application backends on its own listener (`api.listen`),
//! never on the client port. `POST /api/v1/<method>` with a JSON body, authenticated by
//! `Authorization: Bearer <key>` against the configured keys ([`keys`]); errors are
//! `{"error":{"code","message"}}` with the matching HTTP status. The methods ([`methods`]) go
//! through the same store calls as a client's requests, so a publish is sequenced, kept in
//! history, fanned out and replicated to other regions like any other. The contract is
//! `docs/server-api.openapi.json`, served at `/api/v1/openapi.json`.

pub mod keys;
mod methods;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use meridian_protocol::server_api::{ApiErrorBody, ApiErrorDetail};

use crate::config::ApiKey;
use crate::context::Node;
pub use keys::KeySet;
pub use methods::ApiMethod;

/// The committed OpenAPI 3 document of this API, served as is.
pub const OPENAPI: &str = include_str!("../../../../docs/server-api.openapi.json");

/// The start of the control frame `disconnect` sends on the direct-message path.
const DISCONNECT_HEAD: &str = r#"{"type":"server_disconnect","reason":"#;

/// The frame that tells the nodes holding a user's connections to close them with `reason`.
pub(crate) fn disconnect_frame(reason: &str) -> String {
    let reason = serde_json::to_string(reason).unwrap_or_else(|_| "\"\"".into());
    format!("{DISCONNECT_HEAD}{reason}}}")
}

/// The reason of a [`disconnect_frame`], or `None` for any other frame (a client's direct
/// message is an encoded `direct` event).
pub(crate) fn disconnect_reason(frame: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Disconnect {
        reason: String,
    }
    if !frame.starts_with(DISCONNECT_HEAD.as_bytes()) {
        return None;
    }
    serde_json::from_slice::<Disconnect>(frame)
        .ok()
        .map(|d| d.reason)
}

/// A failed call: the HTTP status follows from the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The machine-readable reason.
    pub code: ApiErrorCode,
    /// For people.
    pub message: String,
}

/// The reasons a call fails, each with one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiErrorCode {
    /// 400: the body is not JSON, a field is missing or unknown, or a value is invalid.
    BadRequest,
    /// 401: no `Authorization: Bearer` header, or no key has that secret.
    Unauthorized,
    /// 403: the key lacks the scope the method needs.
    Forbidden,
    /// 404: no such method or path.
    NotFound,
    /// 405: methods are called with POST.
    MethodNotAllowed,
    /// 409: a compare-and-set found another version.
    VersionConflict,
    /// 413: the body (or a list in it) is larger than allowed.
    TooLarge,
    /// 429: a budget is spent.
    RateLimited,
    /// 500: a bug.
    Internal,
    /// 503: the regional store is unreachable; retrying later can help.
    Unavailable,
}

impl ApiErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::VersionConflict => "version_conflict",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
        }
    }

    /// The HTTP status and its label for metrics.
    pub fn status(self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest => (StatusCode::BAD_REQUEST, "400"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "401"),
            Self::Forbidden => (StatusCode::FORBIDDEN, "403"),
            Self::NotFound => (StatusCode::NOT_FOUND, "404"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "405"),
            Self::VersionConflict => (StatusCode::CONFLICT, "409"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "413"),
            Self::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "429"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "500"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "503"),
        }
    }
}

impl ApiError {
    /// An error of `code`.
    pub fn new(code: ApiErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `{"error":{"code":..,"message":..}}`.
    pub fn body(&self) -> ApiErrorBody {
        ApiErrorBody {
            error: ApiErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message.clone(),
            },
        }
    }
}

impl From<region_state::StoreError> for ApiError {
    fn from(e: region_state::StoreError) -> Self {
        use region_state::StoreError;
        match e {
            StoreError::VersionConflict { current } => Self::new(
                ApiErrorCode::VersionConflict,
                format!("the key is at version {current}"),
            ),
            StoreError::RoomFull { max } => Self::new(
                ApiErrorCode::Forbidden,
                format!("room is full ({max} members)"),
            ),
            StoreError::BudgetSpent { limit } => Self::new(
                ApiErrorCode::RateLimited,
                format!("over the budget of {limit} per second; retry later"),
            ),
            e if e.is_retryable() => Self::new(
                ApiErrorCode::Unavailable,
                format!("regional store unavailable: {e}"),
            ),
            e => Self::new(ApiErrorCode::Internal, e.to_string()),
        }
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error_response(node: &Node, method: &'static str, e: &ApiError) -> Response {
    let (status, label) = e.code.status();
    node.metrics.api_call(method, label);
    json_response(status, serde_json::to_string(&e.body()).unwrap_or_default())
}

/// Shared by the API's handlers.
#[derive(Clone)]
struct ApiState {
    node: Arc<Node>,
    keys: Arc<KeySet>,
}

/// The API's routes.
pub(crate) fn router(node: Arc<Node>, keys: Arc<KeySet>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/{method}", any(call))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(ApiState { node, keys })
}

async fn openapi() -> Response {
    json_response(StatusCode::OK, OPENAPI.to_owned())
}

async fn not_found(State(api): State<ApiState>) -> Response {
    let e = ApiError::new(
        ApiErrorCode::NotFound,
        "no such path; methods are POST /api/v1/<method>",
    );
    error_response(&api.node, "unknown", &e)
}

/// The key named by `Authorization: Bearer <secret>`.
fn authenticate(keys: &KeySet, headers: &HeaderMap) -> Result<ApiKey, ApiError> {
    let unauthorized = |m: &str| ApiError::new(ApiErrorCode::Unauthorized, m);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing `Authorization: Bearer <key>` header"))?;
    let secret = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <key>`"))?;
    keys.find(secret.trim())
        .ok_or_else(|| unauthorized("unknown API key"))
}

async fn call(
    State(api): State<ApiState>,
    Path(name): Path<String>,
    http_method: Method,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let node = &api.node;
    let method = ApiMethod::from_name(&name);
    let label = method.map_or("unknown", ApiMethod::name);
    let outcome = async {
        let key = authenticate(&api.keys, &headers)?;
        let method = method.ok_or_else(|| {
            ApiError::new(ApiErrorCode::NotFound, format!("no API method {name:?}"))
        })?;
        if http_method != Method::POST {
            return Err(ApiError::new(
                ApiErrorCode::MethodNotAllowed,
                "API methods are called with POST",
            ));
        }
        let body = body.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ApiErrorCode::TooLarge,
                    format!(
                        "the body is larger than api.max_body_bytes ({})",
                        node.config.api.as_ref().map_or(0, |a| a.max_body_bytes)
                    ),
                )
            } else {
                ApiError::new(ApiErrorCode::BadRequest, rejection.body_text())
            }
        })?;
        methods::run(node, &key, method, &body).await
    }
    .await;
    match outcome {
        Ok(result) => {
            node.metrics.api_call(label, "200");
            json_response(StatusCode::OK, result.get().to_owned())
        }
        Err(e) => {
            if e.code == ApiErrorCode::Internal {
                tracing::warn!(method = label, error = %e.message, "API call failed");
            }
            error_response(node, label, &e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnect_frames_round_trip_and_nothing_else_is_one() {
        let f = disconnect_frame("bye \"now\"");
        assert_eq!(
            disconnect_reason(f.as_bytes()).as_deref(),
            Some("bye \"now\"")
        );
        assert_eq!(
            disconnect_reason(
                br#"{"type":"direct","from":"a","data":{"type":"server_disconnect","reason":"x"}}"#
            ),
            None
        );
        assert_eq!(
            disconnect_reason(br#"{"type":"server_disconnect","reason":"#),
            None
        );
        assert_eq!(disconnect_reason(b""), None);
    }

    #[test]
    fn the_openapi_document_lists_exactly_the_methods() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for m in ApiMethod::ALL {
            let path = format!("/api/v1/{}", m.name());
            assert!(paths[&path]["post"].is_object(), "{path} is documented");
            let scope = paths[&path]["post"]["description"].as_str().unwrap();
            assert!(
                scope.contains(&format!("`{}`", m.scope())),
                "{path}: {scope}"
            );
        }
        assert_eq!(
            paths.len(),
            ApiMethod::ALL.len() + 1,
            "the methods and openapi.json"
        );
    }

    #[test]
    fn every_error_code_has_a_documented_status() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let codes = [
            ApiErrorCode::BadRequest,
            ApiErrorCode::Unauthorized,
            ApiErrorCode::Forbidden,
            ApiErrorCode::NotFound,
            ApiErrorCode::MethodNotAllowed,
            ApiErrorCode::VersionConflict,
            ApiErrorCode::TooLarge,
            ApiErrorCode::RateLimited,
            ApiErrorCode::Internal,
            ApiErrorCode::Unavailable,
        ];
        for code in codes {
            let (status, label) = code.status();
            assert_eq!(status.as_str(), label);
            let name = format!("E{label}");
            assert!(
                doc["components"]["responses"][&name].is_object(),
                "{name} documented"
            );
        }
    }
}
