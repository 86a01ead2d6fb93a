//! A local multi-region mesh for end-to-end tests: per region a real `redis-server`, a
//! `region-node` and one or two `interregion-relay` processes (active and standby), with the
//! user-space impairment proxy between every pair of relays (emulated WAN RTT, partitions),
//! a catalogue and dev certificates written for the run. Everything is on 127.0.0.1.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio_util::sync::CancellationToken;
use wan_impair::{self as impair, Impairment, ProxyHandle};

use crate::{bin_path, http_get, NodeProcess, RedisServer, TempDir};

/// Relay timers of the tests: a dead link is seen within 2.5 s, a region is declared down
/// `grace_ms` after that.
#[derive(Debug, Clone)]
pub struct MeshTiming {
    /// `replication.grace_ms`.
    pub grace_ms: u64,
    /// `replication.interest_linger_ms`.
    pub interest_linger_ms: u64,
    /// `timing.idle_timeout_ms`.
    pub idle_timeout_ms: u64,
    /// `timing.keep_alive_ms`.
    pub keep_alive_ms: u64,
    /// Extra TOML for every node (e.g. `[limits]` for benchmarks).
    pub node_extra: String,
    /// `replication.presence_ttl_ms`.
    pub presence_ttl_ms: u64,
}

impl Default for MeshTiming {
    fn default() -> Self {
        Self {
            grace_ms: 4_000,
            interest_linger_ms: 2_000,
            idle_timeout_ms: 2_000,
            keep_alive_ms: 500,
            node_extra: String::new(),
            presence_ttl_ms: 3_000,
        }
    }
}

/// An `interregion-relay` child process.
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Its HTTP address (`/healthz`, `/readyz`, `/metrics`), once known.
    pub http: Option<SocketAddr>,
    /// Whether it reported holding the active lease.
    pub active: bool,
}

impl RelayProcess {
    /// Starts `interregion-relay --config <config>` and waits until it reports being
    /// active (`quic on`, `http on`) or standing by (`standby on http`).
    pub fn start(config: &Path, log: &Path) -> Result<Self> {
        let stderr = std::fs::File::create(log)?;
        let mut child = Command::new(bin_path("interregion-relay")?)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn,interregion_relay=info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawn interregion-relay")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut relay = Self {
            child,
            lines,
            http: None,
            active: false,
        };
        relay.wait_state(Duration::from_secs(20), false)?;
        Ok(relay)
    }

    /// Reads status lines until the relay is active (or, unless `active_only`, standing by).
    pub fn wait_state(&mut self, within: Duration, active_only: bool) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => bail!("relay did not report its state within {within:?}"),
            };
            if let Some(addr) = line.strip_prefix("standby on http ") {
                self.http = Some(addr.trim().parse()?);
                if !active_only {
                    return Ok(());
                }
            } else if let Some(addr) = line.strip_prefix("http on ") {
                self.http = Some(addr.trim().parse()?);
                self.active = true;
                return Ok(());
            }
        }
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        let addr = self
            .http
            .ok_or_else(|| anyhow!("relay HTTP address unknown"))?;
        Ok(http_get(addr, "/metrics").await?.1)
    }

    /// Sends a signal (`"KILL"`, `"TERM"`).
    pub fn signal(&self, sig: &str) -> Result<()> {
        crate::signal_child(&self.child, sig)
    }

    /// Waits for the process to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        crate::wait_child(&mut self.child, within)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `/readyz` status code.
    pub async fn readyz(&self) -> Result<u16> {
        let addr = self
            .http
            .ok_or_else(|| anyhow!("relay HTTP address unknown"))?;
        Ok(http_get(addr, "/readyz").await?.0)
    }
}

/// A `redis-server` started again, empty, on the port of a killed one (killed on drop).
#[derive(Debug)]
pub struct RespawnedRedis {
    child: Child,
    dir: TempDir,
}

impl RespawnedRedis {
    /// Starts an empty server on `port` (no persistence) and waits until it answers PING.
    pub fn start(port: u16) -> Result<Self> {
        Self::start_in(port, None)
    }

    /// Starts a server on `port`, with its data from the append-only file in `aof_dir` when
    /// given (else empty, without persistence), and waits until it answers PING.
    pub fn start_in(port: u16, aof_dir: Option<&Path>) -> Result<Self> {
        let dir = TempDir::new("redis-respawn")?;
        let (aof, data) = match aof_dir {
            Some(d) => ("yes", d.to_path_buf()),
            None => ("no", dir.0.clone()),
        };
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                aof,
                "--appendfsync",
                "everysec",
            ])
            .arg("--dir")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn redis-server")?;
        let server = Self { child, dir };
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // PING fails with LOADING while the append-only file is read.
            if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return Ok(server);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "redis-server on port {port} did not come back ({})",
            server.dir.0.display()
        )
    }
}

impl Drop for RespawnedRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            eprintln!("relay {} had exited: {status}", self.child.id());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One region of a [`TestMesh`].
#[derive(Debug)]
pub struct TestRegion {
    /// Its name.
    pub name: String,
    /// Its Redis.
    pub redis: RedisServer,
    /// Its node.
    pub node: NodeProcess,
    /// Its relays: `[0]` started first (active), `[1]` the standby when asked for.
    pub relays: Vec<RelayProcess>,
    /// The relay's QUIC address (the catalogue's `relay.address`).
    pub relay_addr: SocketAddr,
    /// The server that replaced `redis` after [`TestRegion::restart_redis_empty`].
    pub respawned: Option<RespawnedRedis>,
    config: PathBuf,
}

/// Regions, proxies and files of one test.
#[derive(Debug)]
pub struct TestMesh {
    /// Scratch directory (catalogue, certificates, configs, relay logs).
    pub dir: TempDir,
    /// The regions, in the order given.
    pub regions: Vec<TestRegion>,
    /// The proxy of each pair `(dialer, acceptor)`.
    pub proxies: BTreeMap<(String, String), ProxyHandle>,
    stop: CancellationToken,
}

impl Drop for TestMesh {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The dev coordinates of a test region name.
fn coordinates(name: &str) -> (f64, f64) {
    match name {
        "us-east" => (38.9072, -77.0369),
        "eu-central" => (50.1109, 8.6821),
        "ap-southeast" => (1.3521, 103.8198),
        _ => (0.0, 0.0),
    }
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl TestMesh {
    /// Starts `names` (dev region names) with `rtt_ms` of emulated RTT between every pair
    /// and `relays` relay processes per region (1, or 2 for active + standby).
    pub async fn start(
        names: &[&str],
        rtt_ms: u64,
        relays: usize,
        timing: MeshTiming,
    ) -> Result<Self> {
        let dir = TempDir::new("mesh")?;
        let catalogue = dir.0.join("regions");
        std::fs::create_dir_all(&catalogue)?;
        let stop = CancellationToken::new();
        let mut started = Vec::new();
        for name in names {
            let redis = RedisServer::start().map_err(|e| anyhow!("redis-server: {e}"))?;
            let node = NodeProcess::start(name, &redis.url(), &timing.node_extra)?;
            let relay_addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
            let (lat, lon) = coordinates(name);
            std::fs::write(
                catalogue.join(format!("{name}.toml")),
                format!(
                    "name = \"{name}\"\nlatitude = {lat}\nlongitude = {lon}\ncapacity = 1000\n\
                     cloud = \"aws\"\ncloud_region = \"test-{name}\"\n\
                     [ingress]\naddresses = [\"127.0.0.1\"]\nws_url = \"{ws}\"\n\
                     health_url = \"http://{http}/readyz\"\n[relay]\naddress = \"{relay_addr}\"\n",
                    ws = node.ws_url(),
                    http = node.addr,
                ),
            )?;
            started.push((name.to_string(), redis, node, relay_addr));
        }
        interregion_relay::certs::generate_dev_mesh(
            names.iter().copied(),
            &dir.0.join("certs"),
            true,
        )
        .context("dev certificates")?;
        // One proxy per pair, in front of the acceptor (the region whose name sorts last).
        let mut proxies = BTreeMap::new();
        let mut dial: BTreeMap<String, BTreeMap<String, SocketAddr>> = BTreeMap::new();
        for (a, _, _, _) in &started {
            for (b, _, _, b_addr) in &started {
                if a < b {
                    let (handle, _task) = impair::start(
                        SocketAddr::from(([127, 0, 0, 1], 0)),
                        *b_addr,
                        Impairment {
                            delay_ms: rtt_ms / 2,
                            jitter_ms: 0,
                            loss: 0.0,
                        },
                        7,
                        stop.clone(),
                    )
                    .await?;
                    dial.entry(a.clone())
                        .or_default()
                        .insert(b.clone(), handle.listen_addr);
                    proxies.insert((a.clone(), b.clone()), handle);
                }
            }
        }
        let mut regions = Vec::new();
        for (name, redis, node, relay_addr) in started {
            let certs = dir.0.join("certs");
            let mut peers = String::new();
            for (peer, addr) in dial.get(&name).into_iter().flatten() {
                peers.push_str(&format!("{peer} = \"{addr}\"\n"));
            }
            let config = dir.0.join(format!("relay-{name}.toml"));
            std::fs::write(
                &config,
                format!(
                    "region = \"{name}\"\ncatalogue_dir = \"{cat}\"\nlisten = \"{relay_addr}\"\n\
                     http_listen = \"127.0.0.1:0\"\n\
                     [tls]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
                     [peers]\n{peers}\
                     [timing]\nkeep_alive_ms = {keep_alive}\nidle_timeout_ms = {idle}\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\n\
                     [redis]\nurl = \"{redis_url}\"\n\
                     [replication]\ngrace_ms = {grace}\ninterest_linger_ms = {linger}\nrescan_ms = 2000\npresence_ttl_ms = {presence_ttl}\n\
                     [lease]\nttl_ms = 1500\nrenew_ms = 300\n",
                    cat = catalogue.display(),
                    ca = certs.join("ca.pem").display(),
                    cert = certs.join(format!("{name}.cert.pem")).display(),
                    key = certs.join(format!("{name}.key.pem")).display(),
                    redis_url = redis.url(),
                    grace = timing.grace_ms,
                    keep_alive = timing.keep_alive_ms,
                    idle = timing.idle_timeout_ms,
                    linger = timing.interest_linger_ms,
                    presence_ttl = timing.presence_ttl_ms,
                ),
            )?;
            let mut rs = Vec::new();
            for i in 0..relays.max(1) {
                let log = dir.0.join(format!("relay-{name}-{i}.log"));
                rs.push(RelayProcess::start(&config, &log)?);
            }
            regions.push(TestRegion {
                name,
                redis,
                node,
                relays: rs,
                relay_addr,
                respawned: None,
                config,
            });
        }
        Ok(Self {
            dir,
            regions,
            proxies,
            stop,
        })
    }

    /// The region called `name`.
    pub fn region(&self, name: &str) -> Result<&TestRegion> {
        self.regions
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| anyhow!("no region {name}"))
    }

    /// Mutable access to the region called `name`.
    pub fn region_mut(&mut self, name: &str) -> Result<&mut TestRegion> {
        self.regions
            .iter_mut()
            .find(|r| r.name == name)
            .ok_or_else(|| anyhow!("no region {name}"))
    }

    /// Partitions (or heals) the path between two regions.
    pub fn partition(&self, a: &str, b: &str, partitioned: bool) -> Result<()> {
        let key = if a < b {
            (a.to_owned(), b.to_owned())
        } else {
            (b.to_owned(), a.to_owned())
        };
        let proxy = self
            .proxies
            .get(&key)
            .ok_or_else(|| anyhow!("no proxy between {a} and {b}"))?;
        proxy.set_partitioned(partitioned);
        Ok(())
    }

    /// The catalogue directory (for a geo-router).
    pub fn catalogue(&self) -> PathBuf {
        self.dir.0.join("regions")
    }

    /// Waits until every relay link is up (by the `meridian_relay_link_up` gauges).
    pub async fn wait_links(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let mut all = true;
            for r in &self.regions {
                let Some(active) = r.relays.iter().find(|x| x.active) else {
                    all = false;
                    continue;
                };
                let text = active.metrics().await.unwrap_or_default();
                let ups = text
                    .lines()
                    .filter(|l| l.starts_with("meridian_relay_link_up{"))
                    .filter(|l| l.ends_with(" 1"))
                    .count();
                if ups + 1 < self.regions.len() {
                    all = false;
                }
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("relay links not all up within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl TestRegion {
    /// Starts one more relay process on this region's config (it stands by while another
    /// holds the lease).
    pub fn start_relay(&mut self) -> Result<()> {
        let log = self
            .config
            .with_extension(format!("{}.log", self.relays.len()));
        self.relays.push(RelayProcess::start(&self.config, &log)?);
        Ok(())
    }

    /// `kill -9` of the region's Redis (the original or a respawned one).
    pub fn kill_redis(&mut self) -> Result<()> {
        match &mut self.respawned {
            Some(r) => {
                r.child.kill()?;
                r.child.wait()?;
            }
            None => {
                let status = Command::new("kill")
                    .args(["-KILL", &self.redis.pid().to_string()])
                    .status()?;
                if !status.success() {
                    bail!("kill redis failed");
                }
            }
        }
        Ok(())
    }

    /// Starts the region's Redis again on the same port from its append-only file in `dir`
    /// (after [`Self::kill_redis`]; AOF must have been on, e.g. `CONFIG SET appendonly yes`).
    pub fn restart_redis_from_aof(&mut self, dir: &Path) -> Result<()> {
        self.respawned = None;
        self.respawned = Some(RespawnedRedis::start_in(self.redis.port(), Some(dir))?);
        Ok(())
    }

    /// Starts the region's Redis again, empty, on the same port (after [`Self::kill_redis`]).
    pub fn restart_redis_empty(&mut self) -> Result<()> {
        self.respawned = None;
        self.respawned = Some(RespawnedRedis::start(self.redis.port())?);
        Ok(())
    }

    /// `kill -9` of every process of the region: node, relays and Redis.
    pub fn kill_all(&mut self) -> Result<()> {
        self.node.signal("KILL")?;
        for r in &self.relays {
            let _ = r.signal("KILL");
        }
        let status = Command::new("kill")
            .args(["-KILL", &self.redis.pid().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill redis failed");
        }
        Ok(())
    }
}
