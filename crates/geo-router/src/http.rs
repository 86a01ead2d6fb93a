//! The HTTP API: routing for clients, RTT reports, region status and the process endpoints on
//! the public listener ([`Service::new`]); admin controls on their own listener
//! ([`Service::admin`]). Every route is documented in `docs/geo-router.md`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRef, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::controls::{Action, ChangeRequest, ControlError};
use crate::decision::Reason;
use crate::metrics::Metrics;
use crate::router::{AnswerCache, RouterState};

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

/// Who may report RTTs: the report-token key and the rate limiters of `/v1/rtt` (see
/// [`crate::report_token`] and "Threat model" in `docs/geo-router.md`).
struct RttReports {
    /// `None`: reports are off.
    key: Option<ring::hmac::Key>,
    ttl_s: u64,
    /// Tokens are issued per step of this many seconds (all alike within a step, so a rendered
    /// answer holding one can be reused for the step).
    step_s: u64,
    /// `"regions": [...]` of `rtt_report`, rendered once.
    regions: Box<serde_json::value::RawValue>,
    per_source: crate::limit::RateLimiter,
    per_network: crate::limit::RateLimiter,
}

impl std::fmt::Debug for RttReports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RttReports")
            .field("enabled", &self.key.is_some())
            .field("ttl_s", &self.ttl_s)
            .finish_non_exhaustive()
    }
}

/// Sources and networks whose report buckets are remembered.
const RTT_LIMITED_KEYS: usize = 65_536;

/// The URL a client times to measure its RTT to a region: `/healthz` at the host of its
/// `ws_url` (`ws` → `http`, `wss` → `https`), which every region's balancer passes to a node.
pub fn probe_url(ws_url: &str) -> String {
    let (scheme, rest) = match ws_url.split_once("://") {
        Some(("wss", rest)) => ("https", rest),
        Some((_, rest)) => ("http", rest),
        None => ("http", ws_url),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    format!("{scheme}://{authority}/healthz")
}

impl RttReports {
    fn new(state: &RouterState) -> RttReports {
        let settings = &state.config.rtt;
        let regions: Vec<_> = state
            .regions
            .iter()
            .map(|r| json!({"name": r.name, "probe_url": probe_url(&r.ingress.ws_url)}))
            .collect();
        let regions = serde_json::value::to_raw_value(&regions).unwrap_or_default();
        let per_min = |n: u32| (f64::from(n) / 60.0, f64::from(n));
        let (source_rate, source_burst) = per_min(settings.source_reports_per_min);
        let (network_rate, network_burst) = per_min(settings.network_reports_per_min);
        RttReports {
            key: settings
                .report_key
                .as_ref()
                .map(|k| crate::report_token::key(&k.0)),
            ttl_s: settings.token_ttl_s,
            step_s: (settings.token_ttl_s / 10).clamp(1, 60),
            regions,
            per_source: crate::limit::RateLimiter::new(source_rate, source_burst, RTT_LIMITED_KEYS),
            per_network: crate::limit::RateLimiter::new(
                network_rate,
                network_burst,
                RTT_LIMITED_KEYS,
            ),
        }
    }

    /// The current token step (`None` when reports are off).
    fn step(&self) -> Option<u64> {
        self.key.as_ref()?;
        Some(unix_now() / self.step_s)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl FromRef<App> for Arc<RouterState> {
    fn from_ref(app: &App) -> Arc<RouterState> {
        Arc::clone(&app.router)
    }
}

/// One client's routing answer, rendered for both routes: a clone is two reference counts.
#[derive(Debug, Clone)]
struct HttpAnswer {
    /// `/v1/route`'s status: 200, or 503 when no region can take users.
    status: StatusCode,
    /// `/v1/route`'s JSON body.
    body: Bytes,
    /// `/v1/connect`'s `Location`: the winner's `ws_url`; `None` when there is no winner.
    location: Option<HeaderValue>,
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

#[derive(Debug, Deserialize)]
struct RouteQuery {
    ip: Option<String>,
}

/// The `/v1/route` body, serialized straight from borrowed parts of the decision (keys in the
/// order the earlier `serde_json::Value` rendering gave them: sorted).
#[derive(Debug, Serialize)]
struct RouteOut<'a> {
    all_down: bool,
    client: ClientOut<'a>,
    regions: Vec<RankedOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rtt_report: Option<RttReportOut<'a>>,
    scope: u8,
}

/// The credential and targets for RTT reports (see [`crate::report_token`]).
#[derive(Debug, Serialize)]
struct RttReportOut<'a> {
    expires_in_s: u64,
    regions: &'a serde_json::value::RawValue,
    token: String,
}

#[derive(Debug, Serialize)]
struct ClientOut<'a> {
    ip: IpAddr,
    location: Option<LocationOut<'a>>,
    #[serde(serialize_with = "serialize_network")]
    network: crate::rtt::Prefix,
}

#[derive(Debug, Serialize)]
struct LocationOut<'a> {
    continent: Option<&'a str>,
    country: Option<&'a str>,
    latitude: f64,
    longitude: f64,
}

#[derive(Debug, Serialize)]
struct RankedOut<'a> {
    estimated_rtt_ms: Option<f64>,
    name: &'a str,
    reason: Reason,
    ws_url: &'a str,
}

fn serialize_network<S: serde::Serializer>(
    prefix: &crate::rtt::Prefix,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("{}/{}", network_address(*prefix), prefix.len))
}

/// A routing answer: never cached by anyone on the way (it depends on the client and on live
/// health).
fn routing_answer(status: StatusCode, json: Option<Bytes>) -> Response {
    let mut response = match json {
        Some(body) => {
            let mut response = Response::new(axum::body::Body::from(body));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        None => Response::new(axum::body::Body::empty()),
    };
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The client's answer: kept, or decided and rendered now (and kept when it may be reused).
// The error is the finished HTTP response, built on a cold path (as in `client_ip`).
#[allow(clippy::result_large_err)]
fn http_answer(app: &App, ip: IpAddr) -> Result<HttpAnswer, Response> {
    let state = &app.router;
    let ip = ip.to_canonical();
    // Read before deciding: a change while deciding leaves the entry stale, never wrong. With
    // RTT reports on, the answer holds a token of the current step: a new step is a new
    // generation (the odd multiplier keeps steps apart from the change counters' sums).
    let step = app.reports.step();
    let generation = state
        .generation()
        .wrapping_add(step.unwrap_or(0).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    if let Some(answer) = app.answers.get(state, ip, generation) {
        return Ok(answer);
    }
    let route = state.route(ip, None);
    let regions: Vec<RankedOut<'_>> = route
        .decision
        .ranked
        .iter()
        .filter_map(|r| {
            state.region(&r.name).map(|region| RankedOut {
                name: &r.name,
                ws_url: &region.ingress.ws_url,
                estimated_rtt_ms: r.estimated_rtt_ms.map(|ms| (ms * 100.0).round() / 100.0),
                reason: r.reason,
            })
        })
        .collect();
    let status = if regions.is_empty() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    // The catalogue admits only visible ASCII in `ws_url`, which a header can always carry.
    let location = regions
        .first()
        .and_then(|winner| HeaderValue::from_str(winner.ws_url).ok());
    let out = RouteOut {
        client: ClientOut {
            ip,
            network: route.network,
            location: route.hit.as_ref().map(|h| LocationOut {
                latitude: h.latitude,
                longitude: h.longitude,
                country: h.country.as_deref(),
                continent: h.continent.as_deref(),
            }),
        },
        regions,
        rtt_report: rtt_report(&app.reports, step, route.network),
        all_down: route.decision.all_down,
        scope: route.scope,
    };
    let mut body = Vec::with_capacity(512);
    if let Err(e) = serde_json::to_writer(&mut body, &out) {
        tracing::error!(error = %e, "cannot render a route answer");
        return Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the route answer could not be rendered",
        ));
    }
    let answer = HttpAnswer {
        status,
        body: Bytes::from(body),
        location,
    };
    app.answers
        .keep(state, ip, generation, &route, answer.clone());
    Ok(answer)
}

/// The `rtt_report` of a route answer for a client in `network`, when reports are on: a token
/// issued at the start of `step`, valid `ttl_s` from then; `expires_in_s` is what is left of it
/// at the end of the step, so it holds however long within the step the answer is reused.
fn rtt_report(
    reports: &RttReports,
    step: Option<u64>,
    network: crate::rtt::Prefix,
) -> Option<RttReportOut<'_>> {
    let key = reports.key.as_ref()?;
    let issued = step? * reports.step_s;
    let grant = crate::report_token::Grant {
        network,
        expires_unix: issued + reports.ttl_s,
    };
    Some(RttReportOut {
        expires_in_s: reports.ttl_s.saturating_sub(reports.step_s),
        regions: &reports.regions,
        token: crate::report_token::sign(key, &grant),
    })
}

// Extractors: the request itself comes last and is only borrowed from (the `HeaderMap`
// extractor would clone every header of every request). [`Service`] answers these two routes
// without the router; these handlers serve requests it hands on (an odd query string, say).
async fn route(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<RouteQuery>,
    request: Request,
) -> Response {
    route_reply(&app, peer, request.headers(), query.ip.as_deref())
}

/// `/v1/route`'s answer.
#[allow(clippy::result_large_err)]
fn route_reply(app: &App, peer: SocketAddr, headers: &HeaderMap, ip: Option<&str>) -> Response {
    match client_ip(&app.router, peer, headers, ip).and_then(|ip| http_answer(app, ip)) {
        Ok(answer) => {
            count(&app.router, "route", answer.status);
            routing_answer(answer.status, Some(answer.body))
        }
        Err(response) => {
            count(&app.router, "route", response.status());
            response
        }
    }
}

fn network_address(prefix: crate::rtt::Prefix) -> IpAddr {
    if prefix.v6 {
        IpAddr::V6(std::net::Ipv6Addr::from(prefix.start))
    } else {
        IpAddr::V4(std::net::Ipv4Addr::from(
            u32::try_from(prefix.start).unwrap_or(0),
        ))
    }
}

async fn connect(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<RouteQuery>,
    request: Request,
) -> Response {
    connect_reply(&app, peer, request.headers(), query.ip.as_deref())
}

/// `/v1/connect`'s answer: a 307 to the winner's `ws_url`.
#[allow(clippy::result_large_err)]
fn connect_reply(app: &App, peer: SocketAddr, headers: &HeaderMap, ip: Option<&str>) -> Response {
    let answer = client_ip(&app.router, peer, headers, ip).and_then(|ip| http_answer(app, ip));
    let response = match answer {
        Ok(HttpAnswer {
            location: Some(location),
            ..
        }) => {
            let mut response = routing_answer(StatusCode::TEMPORARY_REDIRECT, None);
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        Ok(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_region",
            "no region can take users right now",
        ),
        Err(response) => response,
    };
    count(&app.router, "connect", response.status());
    response
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RttReport {
    #[serde(default)]
    token: Option<String>,
    rtts: Vec<RttMeasurement>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RttMeasurement {
    region: String,
    rtt_ms: f64,
}

/// Largest RTT believed, ms (anything slower is a broken measurement).
const MAX_RTT_MS: f64 = 10_000.0;

/// `POST /v1/rtt`: in order, the source's rate limit (429), the body's shape (400), the token
/// and that the source is inside its network (401), the network's rate limit (429), the
/// measurements (400); then each is recorded for the source's network.
async fn rtt(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let state = &app.router;
    let response = rtt_inner(&app, peer, &headers, &body);
    count(state, "rtt", response.status());
    response
}

fn rtt_inner(app: &App, peer: SocketAddr, headers: &HeaderMap, body: &[u8]) -> Response {
    let state = &app.router;
    let reports = &app.reports;
    let outcome = |result: &str| {
        state
            .metrics
            .rtt_reports
            .get_or_create(&Metrics::labels(&[("result", result)]))
            .inc();
    };
    let bad_report = |message: String| {
        outcome("bad_request");
        error(StatusCode::BAD_REQUEST, "bad_rtt_report", message)
    };
    let bad_token = |message: String| {
        outcome("bad_token");
        error(StatusCode::UNAUTHORIZED, "bad_rtt_token", message)
    };
    let limited = |message: &str| {
        outcome("rate_limited");
        error(
            StatusCode::TOO_MANY_REQUESTS,
            "rtt_rate_limited",
            message.to_owned(),
        )
    };
    let ip = match client_ip(state, peer, headers, None) {
        Ok(ip) => ip,
        Err(response) => return response,
    };
    let now = std::time::Instant::now();
    // One source: an IPv4 address, an IPv6 /64 (what one host usually holds).
    if !reports
        .per_source
        .check(crate::rtt::Prefix::of(ip, 32, 64), now)
    {
        return limited("too many RTT reports from this address; try again in a minute");
    }
    let report: RttReport = match serde_json::from_slice(body) {
        Ok(report) => report,
        Err(e) => {
            return bad_report(format!(
                "expected {{\"token\": TOKEN, \"rtts\": [{{\"region\": NAME, \"rtt_ms\": NUMBER}}, ...]}}: {e}"
            ))
        }
    };
    let Some(key) = &reports.key else {
        return bad_token("RTT reports are off on this router (no rtt.report_key)".into());
    };
    let Some(token) = report.token.as_deref() else {
        return bad_token("a report needs the token of /v1/route's rtt_report".into());
    };
    let grant = match crate::report_token::verify(key, token, unix_now()) {
        Ok(grant) => grant,
        Err(e) => return bad_token(e.to_string()),
    };
    let network = state.rtt.prefix_of(ip);
    if network != grant.network {
        return bad_token(
            "the token was issued to another network than this report's source address".into(),
        );
    }
    if !reports.per_network.check(network, now) {
        return limited("too many RTT reports from this network; try again in a minute");
    }
    let max = state.config.rtt.max_per_report;
    if report.rtts.is_empty() || report.rtts.len() > max {
        return bad_report(format!("a report carries 1 to {max} measurements"));
    }
    for (i, m) in report.rtts.iter().enumerate() {
        if state.region(&m.region).is_none() {
            return bad_report(format!("no region {:?} in the catalogue", m.region));
        }
        if !(m.rtt_ms.is_finite() && m.rtt_ms > 0.0 && m.rtt_ms <= MAX_RTT_MS) {
            return bad_report(format!(
                "rtt_ms {} for {:?} is outside (0, {MAX_RTT_MS}]",
                m.rtt_ms, m.region
            ));
        }
        if report.rtts[..i]
            .iter()
            .any(|other| other.region == m.region)
        {
            return bad_report(format!(
                "{:?} is measured twice: one measurement per region per report",
                m.region
            ));
        }
    }
    for m in &report.rtts {
        let recorded = state.rtt.record(ip, &m.region, m.rtt_ms, now);
        outcome("recorded");
        if recorded.evicted.is_some() {
            outcome("evicted_network");
        }
    }
    state
        .metrics
        .rtt_networks
        .set(i64::try_from(state.rtt.len()).unwrap_or(i64::MAX));
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /v1/regions`. Operators' notes, who made a change, and health-check error texts (which
/// can name internal hosts and addresses) are shown only to a request with a valid admin token;
/// without one they are `null` and `"redacted": true`.
async fn regions(State(state): State<Arc<RouterState>>, headers: HeaderMap) -> Response {
    let full = actor(&state, &headers).is_ok();
    let live = state.live();
    let controls = state.controls();
    let regions: Vec<_> = state
        .regions
        .iter()
        .zip(live.iter())
        .map(|(region, live)| {
            let entry = controls.entries.get(&region.name);
            json!({
                "name": region.name,
                "ws_url": region.ingress.ws_url,
                "addresses": region.ingress.addresses,
                "health": live.hysteresis.health,
                "load": live.load,
                "capacity": region.capacity,
                "last_check_ms": live.last_check_ms,
                "last_error": if full { live.last_error.clone() } else { None },
                "last_latency_ms": live.last_latency_ms,
                "control": {
                    "state": controls.control(&region.name).state,
                    "weight": controls.control(&region.name).weight,
                    "actor": entry.filter(|_| full).map(|e| e.actor.clone()),
                    "at_ms": entry.map(|e| e.at_ms),
                    "note": entry.filter(|_| full).and_then(|e| e.note.clone()),
                    "drill": entry.is_some_and(|e| e.drill),
                },
            })
        })
        .collect();
    count(&state, "regions", StatusCode::OK);
    Json(json!({
        "instance": state.config.instance,
        "control_version": controls.version,
        "redacted": !full,
        "regions": regions,
    }))
    .into_response()
}

/// The actor of a valid bearer token, compared in constant time.
#[allow(clippy::result_large_err)]
fn actor(state: &RouterState, headers: &HeaderMap) -> Result<String, Response> {
    let tokens = &state.config.controls.admin_tokens;
    if tokens.is_empty() {
        return Err(error(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "no admin tokens are configured on this router",
        ));
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <admin token>",
            )
        })?;
    tokens
        .iter()
        .find(|t| constant_time_eq(t.token.as_bytes(), presented.as_bytes()))
        .map(|t| t.actor.clone())
        .ok_or_else(|| {
            error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown admin token",
            )
        })
}

/// `subtle`'s constant-time compare (a length mismatch returns at once: lengths are not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminBody {
    #[serde(default)]
    weight: Option<f64>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    drill: bool,
}

async fn admin(
    State(state): State<Arc<RouterState>>,
    Path((region, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = admin_inner(&state, &region, &action, &headers, &body).await;
    count(&state, "admin", response.status());
    response
}

async fn admin_inner(
    state: &RouterState,
    region: &str,
    action: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let actor = match actor(state, headers) {
        Ok(actor) => actor,
        Err(response) => return response,
    };
    let body: AdminBody = if body.iter().all(u8::is_ascii_whitespace) {
        AdminBody::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(body) => body,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("expected {{\"note\"?, \"drill\"?, \"weight\"?}}: {e}"),
                )
            }
        }
    };
    if body.note.as_ref().is_some_and(|n| n.len() > 500) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "note is longer than 500 bytes",
        );
    }
    let action = match (action, body.weight) {
        ("drain", None) => Action::Drain,
        ("undrain", None) => Action::Undrain,
        ("disable", None) => Action::Disable,
        ("weight", Some(weight)) => Action::Weight(weight),
        ("weight", None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "weight needs {\"weight\": NUMBER in (0, 1]}",
            )
        }
        (other, _) => {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_action",
                format!("{other:?}: actions are drain, undrain, disable, weight"),
            )
        }
    };
    let change = ChangeRequest {
        actor,
        instance: state.config.instance.clone(),
        region: region.to_owned(),
        action,
        note: body.note,
        drill: body.drill,
    };
    let names = state.region_names();
    let down = state.down_regions();
    match state.store.apply(&change, &names, &down).await {
        Ok(record) => {
            tracing::info!(
                actor = %record.actor,
                region = %record.region,
                action = %record.action,
                from = ?record.from,
                to = ?record.to,
                note = record.note.as_deref().unwrap_or(""),
                drill = record.drill,
                "routing control changed"
            );
            state
                .metrics
                .control_changes
                .get_or_create(&Metrics::labels(&[("action", &record.action)]))
                .inc();
            if let Some(path) = &state.config.controls.audit_file {
                if let Err(e) = append_audit(path, &record) {
                    tracing::error!(path = %path.display(), error = %e, "cannot append to the audit file");
                }
            }
            // Apply here at once; the other instances pick it up on their next poll.
            if let Err(e) = state.refresh_controls().await {
                tracing::warn!(error = %e, "change applied but could not re-read controls");
            }
            (StatusCode::OK, Json(json!({"applied": record}))).into_response()
        }
        Err(ControlError::Unsafe) => error(
            StatusCode::CONFLICT,
            "unsafe",
            ControlError::Unsafe.to_string(),
        ),
        Err(e @ ControlError::UnknownRegion(_)) => {
            error(StatusCode::NOT_FOUND, "unknown_region", e.to_string())
        }
        Err(e @ ControlError::BadWeight(_)) => {
            error(StatusCode::BAD_REQUEST, "bad_weight", e.to_string())
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        ),
    }
}

fn append_audit(
    path: &std::path::Path,
    record: &crate::controls::AuditRecord,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(&line)
}

async fn audit(
    State(state): State<Arc<RouterState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(response) = actor(&state, &headers) {
        count(&state, "audit", response.status());
        return response;
    }
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(100)
        .clamp(1, 10_000);
    let response = match state.store.audit(limit).await {
        Ok(records) => Json(json!({"audit": records})).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        ),
    };
    count(&state, "audit", response.status());
    response
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
