//! `interregion-relay`: parses flags, loads config, starts the runtime; everything else is the
//! library's `relay::prepare` and `relay::start`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use interregion_relay::relay::{self, Prepared};
use interregion_relay::RelayConfig;
use tokio_util::sync::CancellationToken;

/// Meridian inter-region relay: the QUIC mesh between regions.
#[derive(Parser, Debug)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    /// TOML config file; `MERIDIAN_*` environment variables override it (nested keys with `__`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the configuration (with the catalogue and certificates) and exit.
    #[arg(long)]
    validate: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a dev mesh CA and a certificate for every region of the catalogue.
    GenCerts {
        /// The region catalogue directory.
        #[arg(long)]
        regions: PathBuf,
        /// Where to write ca.pem, ca.key.pem, <region>.cert.pem, <region>.key.pem.
        #[arg(long)]
        out: PathBuf,
        /// Replace existing files (a new CA: every old certificate stops being trusted).
        #[arg(long)]
        force: bool,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some(Command::GenCerts {
        regions,
        out,
        force,
    }) = args.command
    {
        return match gen_certs(&regions, &out, force) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("interregion-relay: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let prepared = match RelayConfig::load(args.config.as_deref())
        .map_err(anyhow::Error::from)
        .and_then(|c| relay::prepare(&c).map_err(anyhow::Error::from))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("interregion-relay: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.validate {
        println!("config ok");
        return std::process::ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("interregion-relay: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(prepared)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("interregion-relay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn gen_certs(regions: &std::path::Path, out: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let catalogue = meridian_catalogue::load_dir(regions)?;
    let files = interregion_relay::certs::generate_dev_mesh(
        catalogue.keys().map(String::as_str),
        out,
        force,
    )?;
    println!("mesh CA: {}", files.ca_cert.display());
    for (region, (cert, key)) in &files.regions {
        println!("{region}: cert {} key {}", cert.display(), key.display());
    }
    Ok(())
}

async fn serve(p: Prepared) -> anyhow::Result<()> {
    let socket = std::net::UdpSocket::bind(p.listen)
        .with_context(|| format!("cannot bind QUIC on {}", p.listen))?;
    let http = tokio::net::TcpListener::bind(p.http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", p.http_listen))?;
    let shutdown = CancellationToken::new();
    let running = relay::start(
        p.options,
        p.mesh,
        &p.identity,
        Arc::new(interregion_relay::LogSink),
        socket,
        Some(http),
        shutdown.clone(),
    )
    .await?;
    // Tests and scripts read these lines to learn the bound ports.
    println!("quic on {}", running.quic_addr);
    if let Some(addr) = running.http_addr {
        println!("http on {addr}");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: closing links"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: closing links"),
    }
    shutdown.cancel();
    running.done.await?;
    Ok(())
}
