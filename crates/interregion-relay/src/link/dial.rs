//! Dialing: of two regions, the one whose name sorts first dials the other, and redials with
//! jittered exponential backoff ([`crate::backoff`]) whenever the link is lost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::established::run_link;
use super::handshake::{read_hello, write_hello, Handshake, LinkError};
use super::Shared;
use crate::backoff::Backoff;
use crate::certs::region_dns_name;
use meridian_protocol::relay::FrameError;

async fn dial(shared: &Shared, peer: &str, addr: SocketAddr) -> Result<Handshake, LinkError> {
    let connecting =
        shared
            .endpoint
            .connect_with(shared.client_config.clone(), addr, &region_dns_name(peer))?;
    let conn = connecting.await.map_err(LinkError::from_connection)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(LinkError::from_connection)?;
    write_hello(shared, &mut send, peer).await?;
    // A refused client certificate shows up here: the server closes the connection.
    let hello = match read_hello(shared, &conn, &mut recv, peer).await {
        Err(LinkError::Frame(FrameError::Io(_))) if conn.close_reason().is_some() => {
            return Err(conn
                .close_reason()
                .map(LinkError::from_connection)
                .unwrap_or(LinkError::Timeout))
        }
        other => other?,
    };
    Ok((conn, peer.to_owned(), hello, send, recv))
}

pub(super) async fn dial_loop(shared: Arc<Shared>, peer: String) {
    let Some(addr) = shared.mesh.regions.get(&peer).copied() else {
        return;
    };
    let t = &shared.options.timing;
    let mut backoff = Backoff::new(
        Duration::from_millis(t.backoff_initial_ms),
        Duration::from_millis(t.backoff_max_ms),
    );
    let mut failures = 0u32;
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        let attempt = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = tokio::time::timeout(t.handshake_timeout(), dial(&shared, &peer, addr)) => r,
        };
        match attempt {
            Ok(Ok((conn, peer, hello, send, recv))) => {
                failures = 0;
                backoff.reset();
                run_link(shared.clone(), conn, peer, hello, send, recv).await;
            }
            Ok(Err(e)) => {
                failures += 1;
                // First failure (and every 30th) at warn, so a long outage does not flood logs.
                if failures == 1
                    || failures.is_multiple_of(30)
                    || matches!(e, LinkError::ProtocolVersion)
                {
                    tracing::warn!(%peer, %addr, failures, error = %e, "cannot link to peer");
                } else {
                    tracing::debug!(%peer, %addr, failures, error = %e, "cannot link to peer");
                }
            }
            Err(_) => {
                failures += 1;
                tracing::debug!(%peer, %addr, failures, "dial timed out");
            }
        }
        let delay = backoff.next_delay(&mut rand::thread_rng());
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
