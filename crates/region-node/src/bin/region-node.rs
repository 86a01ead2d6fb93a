//! `region-node`: parses flags, loads config, starts the runtime; everything else is the
//! library's `start`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use region_node::NodeConfig;
use tokio_util::sync::CancellationToken;

/// Meridian region node: WebSocket signaling over the region's Redis.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML config file; `MERIDIAN_*` environment variables override it (nested keys with `__`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    validate: bool,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = match NodeConfig::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("region-node: {e}");
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
            eprintln!("region-node: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("region-node: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: NodeConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let shutdown = CancellationToken::new();
    let running = region_node::start(config, listener, shutdown.clone()).await?;
    // Tests and scripts read this line to learn the bound port.
    println!("listening on {}", running.addr);
    if let Some(ops) = running.ops_addr {
        println!("ops listening on {ops}");
    }
    if let Some(api) = running.api_addr {
        println!("api listening on {api}");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: draining"),
    }
    shutdown.cancel();
    running.done.await??;
    Ok(())
}
