//! The control stream: the dialer opens it and both sides send `Hello` first; afterwards it
//! carries `Ping`/`Pong` and the interest and presence frames. A bad frame here closes the
//! link ([`codes::PROTOCOL_ERROR`]): nothing works without it.

use std::sync::Arc;

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{codes, lock, Link, Shared};
use crate::metrics::{Metrics, IN, OUT};
use meridian_protocol::relay::{self as frame, Frame};

pub(super) async fn control_writer(
    mut send: SendStream,
    mut rx: mpsc::Receiver<Bytes>,
    peer: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        let bytes = tokio::select! {
            _ = stop.cancelled() => return,
            b = rx.recv() => match b {
                Some(b) => b,
                None => return,
            },
        };
        let n = bytes.len();
        if send.write_chunk(bytes).await.is_err() {
            return;
        }
        metrics.bytes(&peer, OUT, n);
    }
}

pub(super) async fn control_reader(
    shared: Arc<Shared>,
    link: Arc<Link>,
    mut recv: RecvStream,
    stop: CancellationToken,
) {
    let peer = link.peer.as_str();
    let max = shared.options.limits.max_frame_bytes;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            r = frame::read_frame(&mut recv, max) => r,
        };
        let frame = match next {
            Ok(Some((frame, n))) => {
                shared.metrics.bytes(peer, IN, n);
                frame
            }
            Ok(None) => {
                link.conn
                    .close(codes::PROTOCOL_ERROR, b"control stream finished");
                return;
            }
            Err(e) if e.is_protocol_violation() => {
                shared.metrics.malformed(peer);
                tracing::warn!(%peer, error = %e, "bad frame on the control stream: closing the link");
                link.conn
                    .close(codes::PROTOCOL_ERROR, b"bad frame on the control stream");
                return;
            }
            Err(_) => return,
        };
        match frame {
            Frame::Ping { nonce } => {
                if let Ok(bytes) = frame::encode(&Frame::Pong { nonce }, max) {
                    let _ = link.control.send(bytes).await;
                }
            }
            Frame::Pong { nonce } => {
                if let Some(tx) = lock(&shared.pings).remove(&nonce) {
                    let _ = tx.send(());
                }
            }
            f @ (Frame::Interest { .. } | Frame::InterestSnapshot { .. } | Frame::Presence(_)) => {
                shared.sink.control(peer, f).await;
            }
            other => {
                shared.metrics.malformed(peer);
                tracing::warn!(%peer, frame = other.name(), "unexpected frame on the control stream: closing the link");
                link.conn.close(
                    codes::PROTOCOL_ERROR,
                    b"unexpected frame on the control stream",
                );
                return;
            }
        }
    }
}
