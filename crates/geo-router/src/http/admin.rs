//! Region status (`GET /v1/regions`, redacted without an admin token) and, on the admin
//! listener, the routing controls (`POST /v1/admin/regions/{region}/{action}`) and the audit log
//! (`GET /v1/admin/audit`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{count, error};
use crate::controls::{Action, ChangeRequest, ControlError};
use crate::metrics::Metrics;
use crate::router::RouterState;
/// `GET /v1/regions`. Operators' notes, who made a change, and health-check error texts (which
/// can name internal hosts and addresses) are shown only to a request with a valid admin token;
/// without one they are `null` and `"redacted": true`.
pub(super) async fn regions(State(state): State<Arc<RouterState>>, headers: HeaderMap) -> Response {
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

pub(super) async fn admin(
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

pub(super) async fn audit(
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
