//! The operations HTTP server: `/healthz`, `/readyz` and `/metrics`, one for the relay's whole
//! life (standby and active alike).
//!
//! `/healthz` is 200 while the process serves HTTP. `/readyz` is 200 while the relay is
//! active and not shutting down: the balancers' health checks (terraform) send the region's
//! QUIC traffic to the relay whose `/readyz` is 200, so a standby answers 503. An active relay
//! with no live link is still ready, because links depend on the other regions (per-link
//! state is `meridian_relay_link_up` in `/metrics`). `/metrics` is the relay's registry
//! ([`crate::metrics`]); a standby's shows `meridian_relay_active 0` and zero series.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::role::Role;

/// What the handlers read.
#[derive(Clone)]
pub(crate) struct OpsState {
    /// The relay's metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// The relay's current role.
    pub(crate) role: watch::Receiver<Role>,
    /// Cancelled when shutdown starts.
    pub(crate) shutdown: CancellationToken,
}

/// Serves the operations endpoints on `listener` until `stop` is cancelled.
pub(crate) fn serve(
    listener: TcpListener,
    state: OpsState,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::warn!(error = %e, "relay HTTP server failed");
        }
    })
}

async fn readyz(State(s): State<OpsState>) -> Response {
    let role = *s.role.borrow();
    match role {
        _ if s.shutdown.is_cancelled() => {
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
        }
        Role::Active => (StatusCode::OK, "ready\n").into_response(),
        Role::Standby => (StatusCode::SERVICE_UNAVAILABLE, "standby\n").into_response(),
        Role::LostLease => (
            StatusCode::SERVICE_UNAVAILABLE,
            "lost the active-relay lease\n",
        )
            .into_response(),
    }
}

async fn metrics_text(State(s): State<OpsState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}
