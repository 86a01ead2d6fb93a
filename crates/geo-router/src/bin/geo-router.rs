//! `geo-router`: parses flags, loads config, binds the listeners and runs the router
//! (`geo_router::service::run`); everything else is the library's. The `demo-geoip` subcommand
//! writes the synthetic demo database with the `mmdb-writer` crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use figment::providers::Serialized;
use figment::Figment;
use geo_router::config::RouterConfig;
use geo_router::service::Listeners;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Meridian geo-router: authoritative DNS and HTTP routing to the nearest healthy region.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML config file; `MERIDIAN_*` environment variables override it (nested keys with
    /// `__`), and the flags below override both.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The region catalogue directory.
    #[arg(long)]
    regions: Option<PathBuf>,
    /// MaxMind-format City database (.mmdb); reloaded when the file changes.
    #[arg(long)]
    geoip: Option<PathBuf>,
    /// The zone served, fully qualified (`mesh.example.net.`).
    #[arg(long)]
    zone: Option<String>,
    /// DNS listen address (UDP and TCP).
    #[arg(long)]
    dns_listen: Option<SocketAddr>,
    /// HTTP listen address.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Validate the configuration (and the catalogue) and exit.
    #[arg(long)]
    validate: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write the synthetic demo GeoIP database (made-up networks in real cities).
    DemoGeoip {
        /// Where to write the .mmdb file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print how well the database's networks merge into ECS scopes for the catalogue.
    Scopes,
}

/// The flags that override config keys; unset flags are skipped.
#[derive(Serialize)]
struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    regions: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    geoip: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Some(Command::DemoGeoip { out }) = &args.command {
        return match write_demo(out) {
            Ok(()) => {
                println!("wrote the synthetic demo database to {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("geo-router: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let overrides = Figment::from(Serialized::defaults(Overrides {
        regions: args.regions.clone(),
        geoip: args.geoip.clone(),
        zone: args.zone.clone(),
        dns_listen: args.dns_listen,
        http_listen: args.http_listen,
    }));
    let config = match RouterConfig::load(args.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("geo-router: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Scopes) = &args.command {
        return match print_scopes(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("geo-router: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.validate {
        return match check_catalogue(&config) {
            Ok(()) => {
                println!("config ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("geo-router: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("geo-router: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("geo-router: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn write_demo(out: &std::path::Path) -> anyhow::Result<()> {
    let bytes = mmdb_writer::demo::demo_database()?;
    // Write beside, then rename: a running router never sees a half-written file.
    let tmp = out.with_extension("mmdb.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

fn check_catalogue(config: &RouterConfig) -> anyhow::Result<()> {
    let catalogue = meridian_catalogue::load_dir(&config.regions)?;
    let names: Vec<&str> = catalogue.keys().map(String::as_str).collect();
    config.validate_against(&names)?;
    geo_router::service::check_admin_tls(config)?;
    if let Some(path) = &config.geoip {
        geo_router::GeoDb::open(path)?;
    }
    Ok(())
}

fn print_scopes(config: &RouterConfig) -> anyhow::Result<()> {
    let catalogue = meridian_catalogue::load_dir(&config.regions)?;
    let path = config
        .geoip
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("scopes needs --geoip"))?;
    let db = geo_router::GeoDb::open(path)?;
    let networks = db.networks()?;
    let positions: Vec<(&str, f64, f64)> = catalogue
        .values()
        .map(|r| (r.name.as_str(), r.latitude, r.longitude))
        .collect();
    let index = geo_router::ScopeIndex::build(&networks, &positions);
    let stats = index.stats(&networks);
    println!(
        "IPv4 networks with a location: {}\nmerged IPv4 runs: {}\nregion orders: {}\n\
         median IPv4 network prefix: /{}\nmedian IPv4 ECS scope answered: /{}",
        stats.v4_networks,
        stats.v4_runs,
        stats.orders,
        stats.median_v4_prefix.map_or("-".into(), |p| p.to_string()),
        stats.median_v4_scope.map_or("-".into(), |p| p.to_string()),
    );
    Ok(())
}

async fn serve(config: RouterConfig) -> anyhow::Result<()> {
    let shutdown_timeout = Duration::from_millis(config.shutdown_timeout_ms);
    let listeners = Listeners::bind(&config).await?;
    let shutdown = CancellationToken::new();
    let running = geo_router::service::run(config, listeners, shutdown.clone()).await?;
    // Tests and scripts read these lines to learn the bound ports.
    println!("dns listening on {}", running.dns_addr);
    println!("http listening on {}", running.http_addr);
    if let Some(admin) = running.admin_addr {
        println!("admin listening on {admin}");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
    shutdown.cancel();
    if tokio::time::timeout(shutdown_timeout, running.done)
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?shutdown_timeout, "shutdown timed out; exiting anyway");
    }
    Ok(())
}
