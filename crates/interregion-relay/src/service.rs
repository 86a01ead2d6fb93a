//! A region's relay, whole: [`run`] takes the config, the sockets `main` bound and the
//! shutdown token, like `region_node::start`.
//!
//! It connects the region's Redis, serves `/healthz` `/readyz` `/metrics` (`ops.rs`) from
//! the start, and drives the [`Lifecycle`] role machine ([`crate::role`]): it checks the
//! active-relay lease at start and every `lease.renew_ms`, binds the region's QUIC port once
//! the lease is ours, then starts the links ([`crate::link`]) with the replication driver's
//! sink ([`crate::replicate::driver`]) as their sink. On shutdown it stops them, then releases the lease; when the lease turns out to be
//! another relay's it stops them and ends with [`RunError::LostLease`], releasing nothing.
//! Without `[redis]` the relay is active at once and replicates nothing (it only keeps
//! links, and says so).
//!
//! The replication wiring (how the driver is built, its sink given to the links, and started)
//! is in `Activation::start`, the one place that knows both the links and the driver.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use region_state::replica::{ReplicaConfig, ReplicaStore};
use region_state::StoreError;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{RelayConfig, ReplicationOptions};
use crate::link::{self, start_links, RelayError, RelayHandle};
use crate::metrics::Metrics;
use crate::ops::{self, OpsState};
use crate::relay::{prepare, PrepareError, Prepared};
use crate::replicate::driver::Driver as ReplicationDriver;
use crate::role::{Action, Input, LeaseCheck, Lifecycle, Role};
use crate::sink::{EventSink, LogSink};

/// The sockets of a relay, bound by the caller (`main`, or a test on port 0).
#[derive(Debug)]
pub struct Listeners {
    /// The region's QUIC (UDP) socket.
    pub quic: QuicSocket,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub http: TcpListener,
}

/// The QUIC socket, bound now or once this relay holds the lease.
#[derive(Debug)]
pub enum QuicSocket {
    /// Already bound (tests bind `127.0.0.1:0`; each relay then has its own port).
    Bound(std::net::UdpSocket),
    /// The region's QUIC address, bound when this relay becomes active. A standby cannot bind
    /// it earlier: the active relay (perhaps frozen, with its lease expired) holds it.
    OnActive(SocketAddr),
}

/// A step of a relay's life worth telling its operator (`main` prints one line for each).
#[derive(Debug, Clone)]
pub enum Announcement {
    /// Another relay is active; this one stands by (`standby on http <addr>`). Said once.
    StandingBy,
    /// This relay is active (`quic on <addr>`, `http on <addr>`).
    Active {
        /// The QUIC address it serves.
        quic_addr: SocketAddr,
        /// The links' API.
        relay: RelayHandle,
    },
}

impl Announcement {
    /// The line `main` prints for it; tests and scripts read these lines to learn the role and
    /// the bound ports.
    pub fn line(&self, http_addr: SocketAddr) -> String {
        match self {
            Self::StandingBy => format!("standby on http {http_addr}"),
            Self::Active { quic_addr, .. } => format!("quic on {quic_addr}\nhttp on {http_addr}"),
        }
    }
}

/// A started relay.
#[derive(Debug)]
pub struct RunningService {
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    /// The current role (what `/readyz` answers from).
    pub role: watch::Receiver<Role>,
    /// What `main` prints, in order.
    pub announcements: mpsc::Receiver<Announcement>,
    /// Resolves when the relay has stopped: after `shutdown` (links closed, lease released),
    /// or with [`RunError::LostLease`] when another relay took the lease.
    pub done: JoinHandle<Result<(), RunError>>,
}

/// Why a relay could not start, or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The catalogue or certificates do not fit the config.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// The region's Redis could not be reached at start (retrying is the supervisor's job).
    #[error("cannot connect to Redis at {endpoint}")]
    Redis {
        /// The endpoint, as configured.
        endpoint: String,
        /// What failed.
        #[source]
        source: StoreError,
    },
    /// The region's QUIC port could not be bound (other than being in use by a predecessor,
    /// which a relay with a lease waits out).
    #[error("cannot bind QUIC on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The links could not start.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// Another relay took the lease while this one was active: it stopped so that two active
    /// relays never run. Its supervisor restarts it as a standby.
    #[error("lost the active-relay lease")]
    LostLease,
    /// A socket operation failed.
    #[error("relay I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Starts the relay of `config.region` on `listeners` and runs it until `shutdown` is
/// cancelled (or the lease is lost): see the module doc. Returns once HTTP is served.
pub async fn run(
    config: RelayConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<RunningService, RunError> {
    let prepared = prepare(&config)?;
    let lease = match &config.redis {
        Some(redis) => Some(Lease::connect(&config, redis).await?),
        None => {
            tracing::warn!(
                "no [redis] in the config: this relay keeps links but replicates nothing"
            );
            None
        }
    };
    let http_addr = listeners.http.local_addr()?;
    let metrics = Arc::new(Metrics::new(
        prepared
            .mesh
            .regions
            .keys()
            .filter(|r| **r != config.region)
            .map(String::as_str),
    ));
    let (role, role_rx) = watch::channel(Role::Standby);
    let role_for_caller = role_rx.clone();
    let http_stop = CancellationToken::new();
    let http = ops::serve(
        listeners.http,
        OpsState {
            metrics: metrics.clone(),
            role: role_rx,
            shutdown: shutdown.clone(),
        },
        http_stop.clone(),
    );
    // At most two announcements are ever sent.
    let (announce, announcements) = mpsc::channel(2);
    let (quic, to_bind) = match listeners.quic {
        QuicSocket::Bound(socket) => (Some(socket), None),
        QuicSocket::OnActive(addr) => (None, Some(addr)),
    };
    let driver = Driver {
        replication: config.replication.options(),
        prepared: Some(prepared),
        lease,
        lease_error: String::new(),
        quic,
        to_bind,
        metrics,
        shutdown,
        active: None,
        role,
        announce,
    };
    let done = tokio::spawn(async move {
        let result = driver.drive().await;
        http_stop.cancel();
        let _ = http.await;
        result
    });
    Ok(RunningService {
        http_addr,
        role: role_for_caller,
        announcements,
        done,
    })
}

/// The active-relay lease in the region's Redis, under a random id per process.
struct Lease {
    store: ReplicaStore,
    relay_id: String,
    ttl: Duration,
    renew: Duration,
}

impl Lease {
    async fn connect(
        config: &RelayConfig,
        redis: &crate::config::RedisSettings,
    ) -> Result<Self, RunError> {
        let endpoint = redis.endpoint();
        let store = ReplicaStore::connect(ReplicaConfig {
            endpoint: endpoint.clone(),
            region: config.region.clone(),
            history_len: redis.history_len,
            history_ttl: Duration::from_secs(redis.history_ttl_secs),
            idempotency_window: Duration::from_secs(redis.idempotency_window_secs),
        })
        .await
        .map_err(|source| RunError::Redis {
            endpoint: format!("{endpoint:?}"),
            source,
        })?;
        Ok(Self {
            store,
            relay_id: region_state::random_token(12),
            ttl: Duration::from_millis(config.lease.ttl_ms),
            renew: Duration::from_millis(config.lease.renew_ms),
        })
    }
}

/// Performs the role machine's actions.
struct Driver {
    /// Taken at activation.
    prepared: Option<Prepared>,
    replication: ReplicationOptions,
    /// `None` without `[redis]`: active at once, nothing replicated.
    lease: Option<Lease>,
    /// Why the last lease check failed.
    lease_error: String,
    /// A socket the caller bound.
    quic: Option<std::net::UdpSocket>,
    /// Or the address to bind.
    to_bind: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    active: Option<Activation>,
    role: watch::Sender<Role>,
    announce: mpsc::Sender<Announcement>,
}

impl Driver {
    async fn drive(mut self) -> Result<(), RunError> {
        let result = self.steps().await;
        // After an error, nothing may keep running (an error cannot follow the activation
        // today, but the links must never outlive `run`).
        if let Some(active) = self.active.take() {
            active.stop().await;
        }
        result
    }

    /// Feeds the machine until it exits: the first lease check, then one input per renewal
    /// or the shutdown, plus what the actions produce.
    async fn steps(&mut self) -> Result<(), RunError> {
        let mut machine = Lifecycle::new();
        let mut inputs = VecDeque::from([Input::Lease(self.check_lease().await)]);
        loop {
            while let Some(input) = inputs.pop_front() {
                for action in machine.step(input) {
                    inputs.extend(self.perform(action, machine.role()).await?);
                }
                self.role.send_replace(machine.role());
            }
            if machine.exited() {
                break;
            }
            let renew = self.lease.as_ref().map(|l| l.renew);
            let woke_for_shutdown = tokio::select! {
                _ = self.shutdown.cancelled() => true,
                _ = sleep_or_never(renew) => false,
            };
            inputs.push_back(if woke_for_shutdown {
                Input::Shutdown
            } else {
                Input::Lease(self.check_lease().await)
            });
        }
        match machine.role() {
            Role::LostLease => Err(RunError::LostLease),
            Role::Standby | Role::Active => Ok(()),
        }
    }

    async fn check_lease(&mut self) -> LeaseCheck {
        // Without Redis there is no lease to share: this relay is the region's.
        let Some(lease) = &self.lease else {
            return LeaseCheck::Ours;
        };
        match lease.store.hold_active(&lease.relay_id, lease.ttl).await {
            Ok(true) => LeaseCheck::Ours,
            Ok(false) => LeaseCheck::Theirs,
            Err(e) => {
                self.lease_error = e.to_string();
                LeaseCheck::Unreachable
            }
        }
    }

    /// Runs one action; returns what it produced for the machine.
    async fn perform(&mut self, action: Action, role: Role) -> Result<Option<Input>, RunError> {
        let relay_id = self.lease.as_ref().map_or("", |l| l.relay_id.as_str());
        match action {
            Action::AnnounceStandby => {
                tracing::info!(%relay_id, "another relay is active: standing by");
                let _ = self.announce.try_send(Announcement::StandingBy);
            }
            Action::LeaseTaken => {
                if self.lease.is_some() {
                    tracing::info!(%relay_id, "holding the active-relay lease");
                }
            }
            Action::BindPort => return self.bind_port().map(Some),
            Action::PortBusy => {
                tracing::warn!(listen = ?self.to_bind, "holding the lease, but the QUIC port is still taken (a frozen predecessor?): retrying every renewal");
            }
            Action::LeaseLostWhileWaiting => {
                tracing::warn!("lost the lease while waiting for the QUIC port: standing by again");
            }
            Action::Activate { waited } => {
                if waited {
                    tracing::info!(listen = ?self.to_bind, "the QUIC port is free again");
                }
                self.activate()?;
            }
            Action::LeaseUnreachable if role == Role::Active => {
                tracing::warn!(error = %self.lease_error, "cannot renew the active-relay lease");
            }
            Action::LeaseUnreachable => {
                tracing::warn!(error = %self.lease_error, "cannot reach Redis for the active-relay lease");
            }
            Action::LeaseLost => {
                // Ours expired (e.g. while Redis was unreachable or this process was frozen)
                // and another relay took it: two active relays must never run.
                tracing::error!("lost the active-relay lease to another relay: exiting");
            }
            Action::Deactivate => {
                if let Some(active) = self.active.take() {
                    active.stop().await;
                }
            }
            Action::ReleaseLease => {
                if let Some(lease) = &self.lease {
                    if let Err(e) = lease.store.release_active(&lease.relay_id).await {
                        tracing::warn!(error = %e, "cannot release the active-relay lease");
                    }
                }
            }
            Action::Exit => {}
        }
        Ok(None)
    }

    fn bind_port(&mut self) -> Result<Input, RunError> {
        if self.quic.is_some() {
            return Ok(Input::PortBound);
        }
        let Some(addr) = self.to_bind else {
            // Bound once already (a second activation cannot happen).
            return Ok(Input::PortBound);
        };
        match std::net::UdpSocket::bind(addr) {
            Ok(socket) => {
                self.quic = Some(socket);
                Ok(Input::PortBound)
            }
            // With a lease, the holder of the port is a predecessor that will step down.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && self.lease.is_some() => {
                Ok(Input::PortInUse)
            }
            Err(source) => Err(RunError::Bind { addr, source }),
        }
    }

    fn activate(&mut self) -> Result<(), RunError> {
        let (Some(prepared), Some(socket)) = (self.prepared.take(), self.quic.take()) else {
            return Ok(());
        };
        let active = Activation::start(
            prepared,
            socket,
            self.lease.as_ref().map(|l| l.store.clone()),
            self.replication.clone(),
            self.metrics.clone(),
            self.shutdown.child_token(),
        )?;
        // Ready (`/readyz` 200) before `main` says so.
        self.role.send_replace(Role::Active);
        let _ = self.announce.try_send(Announcement::Active {
            quic_addr: active.links.quic_addr,
            relay: active.links.handle.clone(),
        });
        self.active = Some(active);
        Ok(())
    }
}

async fn sleep_or_never(period: Option<Duration>) {
    match period {
        Some(p) => tokio::time::sleep(p).await,
        None => std::future::pending().await,
    }
}

/// The links and the replicator of an active relay.
struct Activation {
    links: link::RunningRelay,
    replicator: Option<JoinHandle<()>>,
    /// Stops both (a child of the relay's shutdown token).
    stop: CancellationToken,
}

impl Activation {
    /// Starts the links on `socket`, with the replicator as their sink when there is a
    /// `store` (else a [`LogSink`]), then the replicator on the links' handle.
    fn start(
        prepared: Prepared,
        socket: std::net::UdpSocket,
        store: Option<ReplicaStore>,
        replication: ReplicationOptions,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Result<Self, RunError> {
        let peers: Vec<String> = prepared
            .mesh
            .regions
            .keys()
            .filter(|r| **r != prepared.options.region)
            .cloned()
            .collect();
        let driver = store.map(|store| ReplicationDriver::new(store, peers, replication));
        let (driver, sink): (Option<ReplicationDriver>, Arc<dyn EventSink>) = match driver {
            Some((d, sink)) => (Some(d), sink),
            None => (None, Arc::new(LogSink)),
        };
        let links = start_links(
            prepared.options,
            prepared.mesh,
            &prepared.identity,
            sink,
            socket,
            metrics,
            stop.clone(),
        )?;
        let replicator = driver.map(|d| tokio::spawn(d.run(links.handle.clone(), stop.clone())));
        Ok(Self {
            links,
            replicator,
            stop,
        })
    }

    /// Stops the replicator and the links (within the links' grace period).
    async fn stop(self) {
        self.stop.cancel();
        if let Some(task) = self.replicator {
            let _ = task.await;
        }
        let _ = self.links.done.await;
    }
}
