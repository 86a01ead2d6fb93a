//! The HTTP API: routing for clients, RTT reports, region status and the process endpoints on
//! the public listener ([`Service::new`]); admin controls on their own listener
//! ([`Service::admin`]). Every route is documented in `docs/geo-router.md`.
//!
//! Files: this module holds the [`Service`] both listeners serve, its routing tables and what
//! the handlers share (the client address, errors, `/readyz`, `/metrics`); `client.rs` the
//! client routes (`/v1/route`, `/v1/connect`, `/v1/rtt`); `admin.rs` the region status, the
//! routing controls and the audit log; `serve.rs` the HTTP/1.1 accept loop ([`serve_http`]).

mod admin;
mod client;
mod serve;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRef, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::router::{AnswerCache, RouterState};
use admin::{admin, audit, regions};
pub use client::probe_url;
use client::{connect, connect_reply, route, route_reply, rtt, HttpAnswer, RouteQuery, RttReports};
pub use serve::serve_http;

/// Largest accepted request body (RTT reports, admin notes).
const MAX_BODY: usize = 8 * 1024;

/// What the handlers share: the router, and the finished `/v1/route` and `/v1/connect` answers
/// per client address (see [`AnswerCache`]).
#[derive(Debug, Clone)]
struct App {
    router: Arc<RouterState>,
    answers: Arc<AnswerCache<HttpAnswer>>,
    reports: Arc<RttReports>,
}

impl FromRef<App> for Arc<RouterState> {
    fn from_ref(app: &App) -> Arc<RouterState> {
        Arc::clone(&app.router)
    }
}

/// The router's HTTP application, every route through axum (tests; [`Service`] is what serves).
pub fn app(state: Arc<RouterState>) -> Router {
    Service::new(state).routes
}

/// What the HTTP listener serves. `GET /v1/route` and `GET /v1/connect`, the requests every
/// client makes, are answered straight from the request hyper parsed: no routing table, no
/// extractors, no boxed handler future. Everything else (and a routing request whose query
/// string does not parse, so that it gets the router's usual error) goes through the axum
/// router with the peer address as `ConnectInfo`.
#[derive(Debug, Clone)]
pub struct Service {
    app: App,
    routes: Router,
    /// The public listener's service (with the routing fast path), not the admin one.
    public: bool,
}

impl Service {
    /// The public listener's service over `state`: routing, RTT reports, region status, process
    /// endpoints; no admin API.
    pub fn new(state: Arc<RouterState>) -> Self {
        let app = App {
            answers: Arc::new(AnswerCache::new()),
            reports: Arc::new(RttReports::new(&state)),
            router: state,
        };
        Service {
            routes: routes(app.clone()),
            app,
            public: true,
        }
    }

    /// The admin listener's service over `state`: `/v1/admin/...`, `/v1/regions` and `/healthz`.
    pub fn admin(state: Arc<RouterState>) -> Self {
        let app = App {
            answers: Arc::new(AnswerCache::new()),
            reports: Arc::new(RttReports::new(&state)),
            router: state,
        };
        Service {
            routes: admin_routes(app.clone()),
            app,
            public: false,
        }
    }

    /// Answers one request from `peer`.
    pub async fn call<B>(
        &self,
        peer: SocketAddr,
        request: axum::http::Request<B>,
    ) -> Result<Response, std::convert::Infallible>
    where
        B: axum::body::HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let cors = self.cors_origin(&request);
        if let Some(origin) = &cors {
            if request.method() == axum::http::Method::OPTIONS {
                return Ok(preflight(origin.clone()));
            }
        }
        let mut response = match self.fast(peer, &request) {
            Some(response) => response,
            None => {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                let mut routes = self.routes.clone();
                tower_service::Service::call(&mut routes, request).await?
            }
        };
        if let Some(origin) = cors {
            allow_origin(response.headers_mut(), origin);
        }
        Ok(response)
    }

    /// The `Access-Control-Allow-Origin` value for a request to a public routing endpoint
    /// (`/v1/route`, `/v1/connect`, `/v1/rtt`) that carries an `Origin` allowed by
    /// `http.cors_origins`; `None` otherwise (no CORS headers: the browser refuses the read).
    fn cors_origin<B>(&self, request: &axum::http::Request<B>) -> Option<HeaderValue> {
        let origins = &self.app.router.config.http.cors_origins;
        if origins.is_empty()
            || !matches!(
                request.uri().path(),
                "/v1/route" | "/v1/connect" | "/v1/rtt"
            )
        {
            return None;
        }
        let origin = request.headers().get(header::ORIGIN)?;
        if origins.iter().any(|o| o == "*") {
            return Some(HeaderValue::from_static("*"));
        }
        origins
            .iter()
            .any(|o| o.as_bytes() == origin.as_bytes())
            .then(|| origin.clone())
    }

    fn fast<B>(&self, peer: SocketAddr, request: &axum::http::Request<B>) -> Option<Response> {
        if !self.public || request.method() != axum::http::Method::GET {
            return None;
        }
        let reply = match request.uri().path() {
            "/v1/route" => route_reply,
            "/v1/connect" => connect_reply,
            _ => return None,
        };
        let ip = match request.uri().query() {
            None => None,
            Some(query) => serde_urlencoded::from_str::<RouteQuery>(query).ok()?.ip,
        };
        Some(reply(&self.app, peer, request.headers(), ip.as_deref()))
    }
}

/// Answers a CORS preflight (`OPTIONS` with an allowed `Origin`) for a public routing endpoint.
fn preflight(origin: HeaderValue) -> Response {
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    allow_origin(headers, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}

/// Adds `Access-Control-Allow-Origin` (and `Vary: Origin` when it echoes a listed origin, so
/// caches keep one answer per origin).
fn allow_origin(headers: &mut HeaderMap, origin: HeaderValue) {
    if origin != "*" {
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
}

fn routes(app: App) -> Router {
    Router::new()
        .route("/v1/route", get(route))
        .route("/v1/connect", get(connect))
        .route("/v1/rtt", post(rtt))
        .route("/v1/regions", get(regions))
        .route("/v1/admin", any(admin_elsewhere))
        .route("/v1/admin/{*rest}", any(admin_elsewhere))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

fn admin_routes(app: App) -> Router {
    Router::new()
        .route("/v1/admin/regions/{region}/{action}", post(admin))
        .route("/v1/admin/audit", get(audit))
        .route("/v1/regions", get(regions))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

/// The admin API is not served on the public listener.
async fn admin_elsewhere() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "admin_not_here",
        "the admin API is served on the router's admin_listen only",
    )
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

fn count(state: &RouterState, route: &'static str, status: StatusCode) {
    state.metrics.http_request(route, status.as_u16());
}

// The error is the finished HTTP response, built once on a cold path.
#[allow(clippy::result_large_err)]
/// The client's address: the socket peer, or — only when the peer is a trusted proxy — the
/// right-most address in `X-Forwarded-For` that is not itself a trusted proxy; `?ip=` only when
/// `allow_debug_ip` is set.
fn client_ip(
    state: &RouterState,
    peer: SocketAddr,
    headers: &HeaderMap,
    debug_ip: Option<&str>,
) -> Result<IpAddr, Response> {
    if let Some(text) = debug_ip {
        if !state.config.allow_debug_ip {
            return Err(error(
                StatusCode::FORBIDDEN,
                "debug_ip_disabled",
                "?ip= is accepted only when allow_debug_ip is set in the router's config",
            ));
        }
        return text.trim().parse().map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                "bad_ip",
                format!("ip={text:?} is not an IP address"),
            )
        });
    }
    let peer_ip = peer.ip().to_canonical();
    let trusted = |ip: IpAddr| state.config.trusted_proxies.iter().any(|n| n.contains(ip));
    if !trusted(peer_ip) {
        return Ok(peer_ip);
    }
    let mut client = peer_ip;
    for value in headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "bad_forwarded_for",
                "X-Forwarded-For is not text",
            ));
        };
        for hop in value.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let Ok(ip) = hop.parse::<IpAddr>() else {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "bad_forwarded_for",
                    format!("X-Forwarded-For hop {hop:?} is not an IP address"),
                ));
            };
            client = ip.to_canonical();
        }
    }
    // `client` is the right-most hop; walk left past our own proxies.
    if client != peer_ip && trusted(client) {
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|h| h.trim().parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical())
            .collect();
        if let Some(ip) = hops.iter().rev().find(|ip| !trusted(**ip)) {
            client = *ip;
        }
    }
    Ok(client)
}

/// Ready once the controls have been read: before that a drained region could be answered.
/// Not tied to region health: with every region down the router still gives least-bad answers,
/// and taking every router out of a load balancer would only make things worse.
async fn readyz(State(state): State<Arc<RouterState>>) -> Response {
    if !state.controls_loaded() {
        return (StatusCode::SERVICE_UNAVAILABLE, "controls not loaded yet\n").into_response();
    }
    "ready\n".into_response()
}

async fn metrics(State(state): State<Arc<RouterState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
