//! The client routes: `GET /v1/route` (the ranked answer as JSON), `GET /v1/connect` (a 307 to
//! the winner's `ws_url`) and `POST /v1/rtt` (measured RTTs, with a signed report token).

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{client_ip, count, error, App};
use crate::decision::Reason;
use crate::metrics::Metrics;
use crate::router::RouterState;
/// Who may report RTTs: the report-token key and the rate limiters of `/v1/rtt` (see
/// [`crate::report_token`] and "Threat model" in `docs/geo-router.md`).
pub(super) struct RttReports {
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
    pub(super) fn new(state: &RouterState) -> RttReports {
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

/// One client's routing answer, rendered for both routes: a clone is two reference counts.
#[derive(Debug, Clone)]
pub(super) struct HttpAnswer {
    /// `/v1/route`'s status: 200, or 503 when no region can take users.
    status: StatusCode,
    /// `/v1/route`'s JSON body.
    body: Bytes,
    /// `/v1/connect`'s `Location`: the winner's `ws_url`; `None` when there is no winner.
    location: Option<HeaderValue>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RouteQuery {
    pub(super) ip: Option<String>,
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
pub(super) async fn route(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<RouteQuery>,
    request: Request,
) -> Response {
    route_reply(&app, peer, request.headers(), query.ip.as_deref())
}

/// `/v1/route`'s answer.
#[allow(clippy::result_large_err)]
pub(super) fn route_reply(
    app: &App,
    peer: SocketAddr,
    headers: &HeaderMap,
    ip: Option<&str>,
) -> Response {
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

pub(super) async fn connect(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<RouteQuery>,
    request: Request,
) -> Response {
    connect_reply(&app, peer, request.headers(), query.ip.as_deref())
}

/// `/v1/connect`'s answer: a 307 to the winner's `ws_url`.
#[allow(clippy::result_large_err)]
pub(super) fn connect_reply(
    app: &App,
    peer: SocketAddr,
    headers: &HeaderMap,
    ip: Option<&str>,
) -> Response {
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
pub(super) async fn rtt(
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
