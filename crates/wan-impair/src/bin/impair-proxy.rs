//! `impair-proxy`: a UDP proxy that adds delay, jitter, loss and partitions between two
//! relays on one machine, controlled over HTTP (`GET /state`, `POST /partition`,
//! `POST /heal`, `POST /impairment?delay_ms=&jitter_ms=&loss=`). See the `wan_impair` crate.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use wan_impair::{self as impair, Impairment};

/// UDP impairment proxy for emulating WAN links and partitions on loopback.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// UDP address to listen on (point the dialing relay's `peers.<region>` here).
    #[arg(long)]
    listen: SocketAddr,
    /// UDP address to forward to (the accepting relay's QUIC address).
    #[arg(long)]
    upstream: SocketAddr,
    /// HTTP control address.
    #[arg(long, default_value = "127.0.0.1:0")]
    control: SocketAddr,
    /// One-way delay, ms.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Uniform jitter around the delay, ms.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Drop probability per datagram, 0..1.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seed for loss and jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let impairment = Impairment {
        delay_ms: args.delay_ms,
        jitter_ms: args.jitter_ms,
        loss: args.loss,
    };
    impairment.validate().map_err(anyhow::Error::msg)?;
    let shutdown = CancellationToken::new();
    let (handle, task) = impair::start(
        args.listen,
        args.upstream,
        impairment,
        args.seed,
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("cannot listen on {}", args.listen))?;
    let control = tokio::net::TcpListener::bind(args.control)
        .await
        .with_context(|| format!("cannot listen on {}", args.control))?;
    println!("proxy on {} -> {}", handle.listen_addr, handle.upstream);
    println!("control on {}", control.local_addr()?);
    let stop = shutdown.clone();
    let router = impair::control_router(handle);
    let server = tokio::spawn(async move {
        axum::serve(control, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    shutdown.cancel();
    task.await?;
    server.await??;
    Ok(())
}
