//! `interregion-relay`: parses flags, loads config, binds the sockets, handles signals;
//! everything else is the library's `interregion_relay::run`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use interregion_relay::{certs, relay, Announcement, Listeners, QuicSocket, RelayConfig};
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

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match start(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err((e, code)) => {
            eprintln!("interregion-relay: {e:#}");
            ExitCode::from(code)
        }
    }
}

/// Exit code 2: bad config, catalogue or certificates (one line); 1: the relay failed.
fn start(args: Args) -> Result<(), (anyhow::Error, u8)> {
    let bad = |e: &dyn std::fmt::Display| (anyhow::anyhow!("{e}"), 2);
    if let Some(Command::GenCerts {
        regions,
        out,
        force,
    }) = args.command
    {
        let catalogue = meridian_catalogue::load_dir(&regions).map_err(|e| bad(&e))?;
        let names = catalogue.keys().map(String::as_str);
        let files = certs::generate_dev_mesh(names, &out, force).map_err(|e| bad(&e))?;
        print!("{files}");
        return Ok(());
    }
    let config = RelayConfig::load(args.config.as_deref()).map_err(|e| bad(&e))?;
    let prepared = relay::prepare(&config).map_err(|e| bad(&e))?;
    if args.validate {
        println!("config ok");
        return Ok(());
    }
    let served = tokio::runtime::Runtime::new()
        .context("cannot start the runtime")
        .and_then(|rt| rt.block_on(serve(config, prepared.listen)));
    served.map_err(|e| (e, 1))
}

async fn serve(config: RelayConfig, quic: std::net::SocketAddr) -> anyhow::Result<()> {
    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http_listen))?;
    // A standby binds the region's QUIC port only once it holds the lease.
    let quic = QuicSocket::OnActive(quic);
    let shutdown = CancellationToken::new();
    let mut relay =
        interregion_relay::run(config, Listeners { quic, http }, shutdown.clone()).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            r = &mut relay.done => return Ok(r??),
            _ = term.recv() => break tracing::info!("SIGTERM: closing links"),
            _ = tokio::signal::ctrl_c() => break tracing::info!("interrupt: closing links"),
            // Tests and scripts read these lines to learn the role and the bound ports.
            Some(said) = relay.announcements.recv() => match said {
                Announcement::StandingBy => println!("standby on http {}", relay.http_addr),
                Announcement::Active { quic_addr, .. } => {
                    println!("quic on {quic_addr}\nhttp on {}", relay.http_addr);
                }
            },
        }
    }
    shutdown.cancel();
    Ok(relay.done.await??)
}
