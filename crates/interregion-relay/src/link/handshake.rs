//! The handshake: QUIC + TLS with the checks of [`crate::tls`], then the `Hello` exchange on
//! the control stream. The acceptor also checks the certificate's region and who dials.

use quinn::{Connection, ConnectionError, RecvStream, SendStream, VarInt};

use super::{codes, Shared};
use crate::metrics::{IN, OUT};
use crate::tls::{self, Refusal};
use meridian_protocol::relay::{self as frame, Frame, FrameError, Hello, PROTOCOL_VERSION};

/// Why a link could not be established (logged by the dial loop; retried with backoff).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The peer speaks another relay protocol version (TLS alert `no_application_protocol`).
    /// Not retryable until one side is upgraded (the dial loop keeps trying at the cap).
    #[error("peer refused our relay protocol version {ours} (TLS no_application_protocol): it speaks another version; upgrade one side", ours = String::from_utf8_lossy(frame::ALPN))]
    ProtocolVersion,
    /// QUIC or TLS failed (unreachable, refused certificate, timed out...). Retryable.
    #[error("connection: {0}")]
    Connection(#[from] ConnectionError),
    /// The connection could not be started (bad address...).
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// No Hello within `timing.handshake_timeout_ms`. Retryable.
    #[error("handshake timed out")]
    Timeout,
    /// The peer's Hello or certificate did not match. Retryable only after reconfiguration.
    #[error("peer rejected: {0}")]
    Hello(String),
    /// The control stream failed during the handshake.
    #[error("control stream: {0}")]
    Frame(#[from] FrameError),
    /// Writing to the control stream failed.
    #[error("control stream write: {0}")]
    Write(#[from] quinn::WriteError),
}

impl LinkError {
    pub(super) fn from_connection(e: ConnectionError) -> Self {
        if is_alpn_refusal(&e) {
            LinkError::ProtocolVersion
        } else {
            LinkError::Connection(e)
        }
    }
}

/// TLS alert 120 (`no_application_protocol`) as a QUIC crypto error (0x100 + 120).
fn is_alpn_refusal(e: &ConnectionError) -> bool {
    let alpn = quinn::TransportErrorCode::crypto(120);
    match e {
        ConnectionError::ConnectionClosed(c) => c.error_code == alpn,
        ConnectionError::TransportError(t) => t.code == alpn,
        _ => false,
    }
}

/// TLS alert 116 (`certificate_required`) as a QUIC crypto error: the peer presented no
/// client certificate. The verifier is never called then, so the refusal is counted here.
fn is_missing_client_certificate(e: &ConnectionError) -> bool {
    let required = quinn::TransportErrorCode::crypto(116);
    match e {
        ConnectionError::ConnectionClosed(c) => c.error_code == required,
        ConnectionError::TransportError(t) => t.code == required,
        _ => false,
    }
}

pub(super) type Handshake = (Connection, String, Hello, SendStream, RecvStream);

pub(super) fn refuse(shared: &Shared, conn: &Connection, code: VarInt, why: String) -> LinkError {
    shared
        .metrics
        .refused
        .get_or_create(&crate::metrics::ReasonLabels { reason: "hello" })
        .inc();
    tracing::warn!(remote = %conn.remote_address(), "refusing relay peer: {why}");
    conn.close(code, why.as_bytes());
    LinkError::Hello(why)
}

pub(super) async fn accept_handshake(
    shared: &Shared,
    incoming: quinn::Incoming,
) -> Result<Handshake, LinkError> {
    let from = incoming.remote_address();
    let conn = incoming
        .accept()
        .map_err(LinkError::from_connection)?
        .await
        .map_err(|e| {
            if is_missing_client_certificate(&e) {
                shared
                    .metrics
                    .refused
                    .get_or_create(&crate::metrics::ReasonLabels {
                        reason: Refusal::UntrustedCertificate.as_str(),
                    })
                    .inc();
                tracing::warn!(%from, reason = "certificate", "refusing relay peer: it presented no client certificate");
            }
            LinkError::from_connection(e)
        })?;
    // The verifier accepted the certificate, so it names exactly one catalogue region.
    let Some(peer) = tls::peer_region(&conn, &shared.names) else {
        return Err(refuse(
            shared,
            &conn,
            codes::HELLO_MISMATCH,
            "certificate names no catalogue region".into(),
        ));
    };
    if peer == shared.options.region {
        return Err(refuse(
            shared,
            &conn,
            codes::HELLO_MISMATCH,
            format!("peer presents our own region {peer}"),
        ));
    }
    if peer > shared.options.region {
        return Err(refuse(
            shared,
            &conn,
            codes::WRONG_DIALER,
            format!(
                "{peer} dialed {}, but the region whose name sorts first dials",
                shared.options.region
            ),
        ));
    }
    let (mut send, mut recv) = conn.accept_bi().await.map_err(LinkError::from_connection)?;
    let hello = read_hello(shared, &conn, &mut recv, &peer).await?;
    write_hello(shared, &mut send, &peer).await?;
    Ok((conn, peer, hello, send, recv))
}

pub(super) async fn read_hello(
    shared: &Shared,
    conn: &Connection,
    recv: &mut RecvStream,
    peer: &str,
) -> Result<Hello, LinkError> {
    let max = shared.options.limits.max_frame_bytes;
    match frame::read_frame(recv, max).await {
        Ok(Some((Frame::Hello(h), n))) => {
            shared.metrics.bytes(peer, IN, n);
            if h.region != peer {
                return Err(refuse(
                    shared,
                    conn,
                    codes::HELLO_MISMATCH,
                    format!(
                        "Hello says region {:?} but the certificate says {peer}",
                        h.region
                    ),
                ));
            }
            if h.protocol_version != PROTOCOL_VERSION {
                return Err(refuse(
                    shared,
                    conn,
                    codes::HELLO_MISMATCH,
                    format!(
                        "{peer} Hello carries protocol version {}, we speak {PROTOCOL_VERSION}",
                        h.protocol_version
                    ),
                ));
            }
            Ok(h)
        }
        Ok(Some((other, _))) => Err(refuse(
            shared,
            conn,
            codes::PROTOCOL_ERROR,
            format!("{peer} sent {} before Hello", other.name()),
        )),
        Ok(None) => Err(LinkError::Hello(format!(
            "{peer} closed the control stream"
        ))),
        Err(e) if e.is_protocol_violation() => {
            shared.metrics.malformed(peer);
            Err(refuse(
                shared,
                conn,
                codes::PROTOCOL_ERROR,
                format!("{peer} sent a bad Hello: {e}"),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn write_hello(
    shared: &Shared,
    send: &mut SendStream,
    peer: &str,
) -> Result<(), LinkError> {
    let bytes = frame::encode(
        &Frame::Hello(shared.hello.clone()),
        shared.options.limits.max_frame_bytes,
    )?;
    let n = bytes.len();
    send.write_chunk(bytes).await?;
    shared.metrics.bytes(peer, OUT, n);
    Ok(())
}
