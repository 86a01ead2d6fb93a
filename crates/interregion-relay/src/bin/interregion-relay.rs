//! `interregion-relay`: parses flags, loads config, starts the runtime; everything else is the
//! library's `relay::prepare` and `relay::start`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use interregion_relay::relay::{self, Prepared};
use interregion_relay::replicate::{Replicator, ReplicatorSink};
use interregion_relay::RelayConfig;
use region_state::replica::{ReplicaConfig, ReplicaStore};
use std::time::Duration;
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
    let loaded = RelayConfig::load(args.config.as_deref())
        .map_err(anyhow::Error::from)
        .and_then(|c| {
            let p = relay::prepare(&c).map_err(anyhow::Error::from)?;
            Ok((p, c))
        });
    let (prepared, config) = match loaded {
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
    match runtime.block_on(serve(prepared, config)) {
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

async fn serve(p: Prepared, config: RelayConfig) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let Some(redis) = config.redis.clone() else {
        tracing::warn!("no [redis] in the config: this relay keeps links but replicates nothing");
        let socket = std::net::UdpSocket::bind(p.listen)
            .with_context(|| format!("cannot bind QUIC on {}", p.listen))?;
        let http = tokio::net::TcpListener::bind(p.http_listen)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", p.http_listen))?;
        return run_active(
            p,
            socket,
            http,
            Arc::new(interregion_relay::LogSink),
            None,
            &mut term,
        )
        .await;
    };
    let endpoint = redis.endpoint();
    let store = ReplicaStore::connect(ReplicaConfig {
        endpoint: endpoint.clone(),
        region: config.region.clone(),
        history_len: redis.history_len,
        history_ttl: Duration::from_secs(redis.history_ttl_secs),
        idempotency_window: Duration::from_secs(redis.idempotency_window_secs),
    })
    .await
    .with_context(|| format!("cannot connect to Redis at {endpoint:?}"))?;
    let relay_id = region_state::random_token(12);
    let ttl = Duration::from_millis(config.lease.ttl_ms);
    let renew = Duration::from_millis(config.lease.renew_ms);

    // Standby until the lease is ours; /healthz, /readyz and /metrics answer meanwhile.
    let http = tokio::net::TcpListener::bind(p.http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", p.http_listen))?;
    let http_addr = http.local_addr()?;
    let standby_stop = CancellationToken::new();
    let standby = tokio::spawn(standby_http(http, standby_stop.clone()));
    let mut announced = false;
    let mut waiting_for_port = false;
    let socket = loop {
        match store.hold_active(&relay_id, ttl).await {
            Ok(true) => {
                if !waiting_for_port {
                    tracing::info!(%relay_id, "holding the active-relay lease");
                }
                // The previous active relay may still hold the region's QUIC port: frozen
                // (SIGSTOP, a stalled VM) with its lease expired. It steps down when it wakes
                // (its next renewal finds the lease taken); meanwhile keep the lease and try
                // again every renewal, rather than exit and leave the region without a relay.
                match std::net::UdpSocket::bind(p.listen) {
                    Ok(socket) => break socket,
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                        if !waiting_for_port {
                            tracing::warn!(listen = %p.listen, "holding the lease, but the QUIC port is still taken (a frozen predecessor?): retrying every renewal");
                            waiting_for_port = true;
                        }
                    }
                    Err(e) => {
                        standby_stop.cancel();
                        let _ = standby.await;
                        return Err(anyhow::Error::from(e)
                            .context(format!("cannot bind QUIC on {}", p.listen)));
                    }
                }
            }
            Ok(false) => {
                if waiting_for_port {
                    tracing::warn!(
                        "lost the lease while waiting for the QUIC port: standing by again"
                    );
                    waiting_for_port = false;
                }
                if !announced {
                    println!("standby on http {http_addr}");
                    tracing::info!(%relay_id, "another relay is active: standing by");
                    announced = true;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot reach Redis for the active-relay lease"),
        }
        tokio::select! {
            _ = tokio::time::sleep(renew) => {}
            _ = term.recv() => {
                standby_stop.cancel();
                let _ = standby.await;
                if waiting_for_port {
                    let _ = store.release_active(&relay_id).await;
                }
                return Ok(());
            }
            _ = tokio::signal::ctrl_c() => {
                standby_stop.cancel();
                let _ = standby.await;
                if waiting_for_port {
                    let _ = store.release_active(&relay_id).await;
                }
                return Ok(());
            }
        }
    };
    if waiting_for_port {
        tracing::info!(listen = %p.listen, "the QUIC port is free again");
    }
    standby_stop.cancel();
    let _ = standby.await;
    // The standby server has released the port; the same address again (SO_REUSEADDR).
    let http = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {http_addr}"))?;
    let peers: Vec<String> = p
        .mesh
        .regions
        .keys()
        .filter(|r| **r != config.region)
        .cloned()
        .collect();
    let replicator = Replicator::new(store.clone(), peers, config.replication.options());
    let sink = Arc::new(ReplicatorSink(replicator.clone()));
    let lease = Lease {
        store,
        relay_id,
        ttl,
        renew,
    };
    run_active(p, socket, http, sink, Some((replicator, lease)), &mut term).await
}

struct Lease {
    store: ReplicaStore,
    relay_id: String,
    ttl: Duration,
    renew: Duration,
}

async fn run_active(
    p: Prepared,
    socket: std::net::UdpSocket,
    http: tokio::net::TcpListener,
    sink: Arc<dyn interregion_relay::EventSink>,
    replication: Option<(Arc<Replicator>, Lease)>,
    term: &mut tokio::signal::unix::Signal,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let running = relay::start(
        p.options,
        p.mesh,
        &p.identity,
        sink,
        socket,
        Some(http),
        shutdown.clone(),
    )
    .await?;
    running.handle.metrics().active.set(1);
    // Tests and scripts read these lines to learn the bound ports.
    println!("quic on {}", running.quic_addr);
    if let Some(addr) = running.http_addr {
        println!("http on {addr}");
    }
    let mut lost_lease = false;
    let mut lease_ref = None;
    let mut replicator_task = None;
    if let Some((replicator, lease)) = replication {
        replicator_task = Some(tokio::spawn(
            replicator.run(running.handle.clone(), shutdown.clone()),
        ));
        lease_ref = Some(lease);
    }
    let renew_every = lease_ref
        .as_ref()
        .map_or(Duration::from_secs(3600), |l| l.renew);
    let mut renew = tokio::time::interval(renew_every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: closing links");
                break;
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupt: closing links");
                break;
            }
            _ = renew.tick() => {
                let Some(l) = &lease_ref else { continue };
                match l.store.hold_active(&l.relay_id, l.ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // Another relay holds the lease (ours expired, e.g. while Redis was
                        // unreachable): two active relays must never run, so stop here.
                        tracing::error!("lost the active-relay lease to another relay: exiting");
                        lost_lease = true;
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot renew the active-relay lease"),
                }
            }
        }
    }
    shutdown.cancel();
    if let Some(t) = replicator_task {
        let _ = t.await;
    }
    running.done.await?;
    if let Some(l) = &lease_ref {
        if !lost_lease {
            // Hand over at once instead of after the lease's time-to-live.
            if let Err(e) = l.store.release_active(&l.relay_id).await {
                tracing::warn!(error = %e, "cannot release the active-relay lease");
            }
        }
    }
    if lost_lease {
        anyhow::bail!("lost the active-relay lease");
    }
    Ok(())
}

/// `/healthz`, `/readyz` and `/metrics` of a standby relay.
async fn standby_http(listener: tokio::net::TcpListener, stop: CancellationToken) {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        // Only the active relay is ready: the balancers' health checks (terraform) send the
        // region's QUIC traffic to the relay whose /readyz is 200.
        .route(
            "/readyz",
            get(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "standby\n") }),
        )
        .route(
            "/metrics",
            get(|| async {
                "# TYPE meridian_relay_active gauge\n# HELP meridian_relay_active 1 while this relay is its region's active relay\nmeridian_relay_active 0\n# EOF\n"
            }),
        );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "standby HTTP server failed");
    }
}
