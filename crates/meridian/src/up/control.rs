//! `up`'s control API on loopback (axum), for drills: `POST /regions/<name>/kill` (SIGKILL every
//! process of the region: nodes and balancer first, relays and Redis ~500 ms later),
//! `POST /regions/<name>/drain` (SIGTERM the region's nodes: clients get `reconnect`),
//! `POST /regions/<name>/start-nodes` (the nodes again, after a drain) and
//! `POST /regions/<name>/restart` (every process again on the same ports). Only the parent can
//! restart its children, hence this API. Anything else: 404 with the list.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Result;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;

use super::start::{refresh_pids, start_nodes, start_region, wait_front_ready, Mesh};

const USAGE: &str = "POST /regions/<name>/kill | /regions/<name>/drain | /regions/<name>/start-nodes | /regions/<name>/restart";

#[derive(Clone)]
struct Control {
    mesh: Arc<Mutex<Mesh>>,
    /// Set once `up` is stopping: no more actions.
    stopping: Arc<AtomicBool>,
}

/// Serves the control API on `listener` from `runtime`.
pub(super) fn serve(
    runtime: &tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    mesh: Arc<Mutex<Mesh>>,
    stopping: Arc<AtomicBool>,
) -> Result<()> {
    listener.set_nonblocking(true)?;
    let _entered = runtime.enter();
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = Router::new()
        .route("/regions/{region}/{action}", post(action).fallback(usage))
        .fallback(usage)
        .with_state(Control { mesh, stopping });
    runtime.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("meridian up: the control API stopped: {e}");
        }
    });
    Ok(())
}

async fn usage() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, USAGE)
}

async fn action(
    State(control): State<Control>,
    Path((region, action)): Path<(String, String)>,
) -> (StatusCode, String) {
    if control.stopping.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the mesh is stopping".to_owned(),
        );
    }
    // The actions signal, sleep and wait for processes: off the runtime's threads.
    let mesh = control.mesh;
    let done = tokio::task::spawn_blocking(move || act(&mesh, &region, &action)).await;
    done.unwrap_or_else(|e| {
        eprintln!("meridian up: control request failed: {e}");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the control action failed: {e}"),
        )
    })
}

fn mesh_lock(mesh: &Mutex<Mesh>) -> std::sync::MutexGuard<'_, Mesh> {
    mesh.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One action on one region.
fn act(mesh_ref: &Mutex<Mesh>, region: &str, action: &str) -> (StatusCode, String) {
    let mut mesh = mesh_lock(mesh_ref);
    match mesh.plans.iter().find(|p| p.region.name == region).cloned() {
        None => (StatusCode::NOT_FOUND, format!("no region {region}")),
        Some(plan) => {
            match action {
                "kill" => {
                    // Front first: the nodes and the balancer die at once, so nothing is
                    // acknowledged any more; the relays and Redis ~500 ms later, which
                    // leaves the relays the time to ship what was acknowledged in the
                    // last moments (replication is asynchronous; docs/drills.md).
                    let mut n = mesh.supervisor.signal(&format!("{region}/node-"), "KILL");
                    n += mesh.supervisor.signal(&format!("{region}/haproxy"), "KILL");
                    drop(mesh);
                    std::thread::sleep(Duration::from_millis(500));
                    let mut mesh = mesh_lock(mesh_ref);
                    n += mesh.supervisor.signal(&format!("{region}/relay"), "KILL");
                    n += mesh.supervisor.signal(&format!("{region}/redis"), "KILL");
                    (StatusCode::OK, format!("killed {n} processes of {region}"))
                }
                "drain" => {
                    // Planned drain: SIGTERM makes each node send `reconnect` (draining)
                    // to its clients and exit within its drain deadline.
                    let n = mesh.supervisor.signal(&format!("{region}/node-"), "TERM");
                    (StatusCode::OK, format!("draining {n} nodes of {region}"))
                }
                "start-nodes" => {
                    // After a drain: the nodes again, on the region's running Redis and
                    // relays (its state survives, as in a planned drain of a real region).
                    mesh.supervisor.signal(&format!("{region}/node-"), "KILL");
                    std::thread::sleep(Duration::from_millis(200));
                    match start_nodes(&mut mesh, &plan).and_then(|()| wait_front_ready(&plan)) {
                        Ok(()) => {
                            if let Err(e) = refresh_pids(&mut mesh) {
                                eprintln!("meridian up: could not update the pids in endpoints.json: {e:#}");
                            }
                            (StatusCode::OK, format!("{region}: nodes started"))
                        }
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
                    }
                }
                "restart" => {
                    mesh.supervisor.signal(&format!("{region}/"), "KILL");
                    std::thread::sleep(Duration::from_millis(200));
                    match start_region(&mut mesh, &plan) {
                        Ok(()) => {
                            if let Err(e) = refresh_pids(&mut mesh) {
                                eprintln!("meridian up: could not update the pids in endpoints.json: {e:#}");
                            }
                            (StatusCode::OK, format!("{region} restarted"))
                        }
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
                    }
                }
                other => (StatusCode::NOT_FOUND, format!("unknown action {other}")),
            }
        }
    }
}
