//! `up`'s own checks: the router sees every region, and `--smoke` (with or without `--tls`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::Endpoints;
use crate::procs::http_get;

/// Waits until the router sees every region up.
pub(super) fn wait_healthy(http: SocketAddr, regions: usize, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok((200, body)) = http_get(http, "/v1/regions") {
            let parsed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let up = parsed["regions"]
                .as_array()
                .map_or(0, |r| r.iter().filter(|r| r["health"] == "up").count());
            if up == regions {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the router does not see every region up after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `--smoke`: the router answers DNS and HTTP, and each region takes a WebSocket hello.
pub(super) fn smoke(e: &Endpoints) -> Result<()> {
    let (status, body) = http_get(e.router.http, "/v1/route?ip=81.20.1.1")?;
    if status != 200 {
        bail!("/v1/route answered {status}: {body}");
    }
    for region in &e.regions {
        let addr: SocketAddr = region
            .health_url
            .trim_start_matches("http://")
            .trim_end_matches("/readyz")
            .parse()?;
        let (status, _) = http_get(addr, "/readyz")?;
        if status != 200 {
            bail!("region {} is not ready through {addr}", region.name);
        }
    }
    Ok(())
}

/// `--smoke --tls`: the router answers, and each region's balancer answers `/readyz` over TLS
/// with the dev certificate.
pub(super) fn smoke_tls(e: &Endpoints) -> Result<()> {
    let (status, body) = http_get(e.router.http, "/v1/route?ip=81.20.1.1")?;
    if status != 200 {
        bail!("/v1/route answered {status}: {body}");
    }
    for region in &e.regions {
        let addr: SocketAddr = region
            .ws_url
            .trim_start_matches("wss://")
            .trim_end_matches("/v1/ws")
            .parse()?;
        let (status, _) = crate::tls::https_get(addr, "/readyz")?;
        if status != 200 {
            bail!("region {} is not ready through https://{addr}", region.name);
        }
    }
    Ok(())
}
