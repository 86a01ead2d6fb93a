//! The WebRTC demo page server (axum): the files of `examples/webrtc/` (no subdirectories) on a
//! loopback port, plus `/config.json` with the router's URL and the ready-made dev tokens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

struct Demo {
    dir: PathBuf,
    config: String,
}

/// Serves the demo directory on `runtime`; returns the page's URL, or `None` when the
/// directory is missing (e.g. `up` run outside the repository).
pub(super) fn serve(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    router: SocketAddr,
    tokens: &BTreeMap<String, String>,
) -> Result<Option<String>> {
    if !dir.join("index.html").is_file() {
        return Ok(None);
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let config = serde_json::to_string(&serde_json::json!({
        "router": format!("http://{router}"),
        "tokens": tokens,
    }))?;
    let demo = Arc::new(Demo {
        dir: dir.to_path_buf(),
        config,
    });
    let _entered = runtime.enter();
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = Router::new().fallback(file).with_state(demo);
    runtime.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("meridian up: the demo page server stopped: {e}");
        }
    });
    Ok(Some(format!("http://{addr}/")))
}

/// One request: a file of the directory, or `/config.json`.
async fn file(State(demo): State<Arc<Demo>>, uri: Uri) -> Response {
    let name = uri.path().trim_start_matches('/');
    let name = if name.is_empty() { "index.html" } else { name };
    let not_found = || (StatusCode::NOT_FOUND, "text/plain", b"not found".to_vec());
    let (status, kind, body) = if name == "config.json" {
        (
            StatusCode::OK,
            "application/json",
            demo.config.as_bytes().to_vec(),
        )
    } else if name.contains('/') || name.contains("..") || name.starts_with('.') {
        not_found()
    } else {
        match tokio::fs::read(demo.dir.join(name)).await {
            Ok(body) => {
                let kind = match name.rsplit('.').next() {
                    Some("html") => "text/html; charset=utf-8",
                    Some("js") => "text/javascript",
                    Some("css") => "text/css",
                    _ => "application/octet-stream",
                };
                (StatusCode::OK, kind, body)
            }
            Err(_) => not_found(),
        }
    };
    (
        status,
        [(CONTENT_TYPE, kind), (CACHE_CONTROL, "no-store")],
        body,
    )
        .into_response()
}
