//! Harness for Meridian's end-to-end tests: real `redis-server` and `region-node` processes on
//! loopback, a WebSocket client that speaks protocol v1 (over `meridian-client`), and token minting. Every child is
//! killed on drop, so a failing test leaves nothing behind.
//!
//! The tests need the binaries built first (`cargo build --bins`; `.ci/run` does it).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use meridian_protocol::token::{issue, Claims, RoomGrant};
use meridian_protocol::UserId;
use serde_json::Value;

pub use client::{Client, WAIT};
pub use region_state::testing::RedisServer;

mod client;
pub mod mesh;
pub mod up;

/// The token secret every test node uses.
pub const SECRET: &str = "e2e-secret-0123456789";

/// Where cargo put the workspace's binaries (next to this test executable).
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("cannot locate the target directory from {}", exe.display()))?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// Sends `sig` (`"KILL"`, `"TERM"`, `"STOP"`, ...) to a child with kill(1).
pub fn signal_child(child: &Child, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()?;
    if !status.success() {
        bail!("kill -{sig} failed");
    }
    Ok(())
}

/// Waits for a child to exit, at most `within`; returns its exit status.
pub fn wait_child(child: &mut Child, within: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("process still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates a fresh directory under the system temp dir.
    pub fn new(tag: &str) -> Result<Self> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let path =
            std::env::temp_dir().join(format!("meridian-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_TEST_DIRS").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Test timings: short leases and timeouts so failure paths finish in seconds. The ping
/// timeout is long because test clients only answer pings while they are being read.
pub const FAST_TIMING: &[(&str, u64)] = &[
    ("hello_timeout_ms", 1000),
    ("ping_interval_ms", 1000),
    ("ping_timeout_ms", 30000),
    ("lease_ttl_ms", 1500),
    ("lease_renew_ms", 500),
    ("reap_interval_ms", 300),
    ("drain_deadline_ms", 4000),
    ("drain_reconnect_min_ms", 50),
    ("drain_reconnect_max_ms", 500),
];

/// A `region-node` child process.
#[derive(Debug)]
pub struct NodeProcess {
    child: Child,
    /// Its bound address.
    pub addr: SocketAddr,
    /// Its server API address, when `extra` configured `[api]`.
    pub api_addr: Option<SocketAddr>,
    _dir: TempDir,
}

impl NodeProcess {
    /// Starts a node on `redis_url` with [`FAST_TIMING`] plus `extra` TOML, and waits for its
    /// "listening on" line.
    pub fn start(region: &str, redis_url: &str, extra: &str) -> Result<Self> {
        Self::start_with_timing(region, redis_url, extra, &[])
    }

    /// Like [`NodeProcess::start`], replacing some [`FAST_TIMING`] values.
    pub fn start_with_timing(
        region: &str,
        redis_url: &str,
        extra: &str,
        timing: &[(&str, u64)],
    ) -> Result<Self> {
        let store = format!("store = {{ kind = \"redis\", url = \"{redis_url}\" }}");
        Self::start_with_store(region, &store, extra, timing)
    }

    /// Starts a node with a `store = ...` TOML line (or a `[store]` table written last via
    /// `extra`), [`FAST_TIMING`] with `timing` replacements, plus `extra` top-level TOML.
    pub fn start_with_store(
        region: &str,
        store: &str,
        extra: &str,
        timing: &[(&str, u64)],
    ) -> Result<Self> {
        let dir = TempDir::new("node")?;
        let config = dir.0.join("node.toml");
        let mut toml = format!(
            "region = \"{region}\"\nlisten = \"127.0.0.1:0\"\ntoken_secret = \"{SECRET}\"\n\
             {store}\n{extra}\n[timing]\n"
        );
        for (key, value) in FAST_TIMING {
            let value = timing
                .iter()
                .find(|(k, _)| k == key)
                .map_or(*value, |(_, v)| *v);
            toml.push_str(&format!("{key} = {value}\n"));
        }
        for (key, value) in timing {
            if !FAST_TIMING.iter().any(|(k, _)| k == key) {
                toml.push_str(&format!("{key} = {value}\n"));
            }
        }
        std::fs::write(&config, toml)?;
        let mut child = Command::new(bin_path("region-node")?)
            .arg("--config")
            .arg(&config)
            // E2E_NODE_LOG overrides the nodes' log filter when debugging a test.
            .env(
                "RUST_LOG",
                std::env::var("E2E_NODE_LOG").unwrap_or_else(|_| "warn,region_node=info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn region-node")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let (api_tx, api_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
                if let Some(addr) = line.strip_prefix("api listening on ") {
                    let _ = api_tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse()?,
            Err(_) => {
                let _ = child.kill();
                bail!("region-node did not report its address");
            }
        };
        // The API line follows the client one at once when the API is configured.
        let api_addr = if extra.contains("[api]") {
            match api_rx.recv_timeout(Duration::from_secs(5)) {
                Ok(a) => Some(a.parse()?),
                Err(_) => {
                    let _ = child.kill();
                    bail!("region-node did not report its API address");
                }
            }
        } else {
            None
        };
        Ok(Self {
            child,
            addr,
            api_addr,
            _dir: dir,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (VmRSS) in KiB, from /proc.
    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.child.id())
    }

    /// `ws://addr/v1/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Sends a signal (`"KILL"`, `"TERM"`) with kill(1).
    pub fn signal(&self, sig: &str) -> Result<()> {
        signal_child(&self.child, sig)
    }

    /// Waits for the process to exit, at most `within`; returns its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        wait_child(&mut self.child, within)
    }

    /// GET a path on the node's HTTP port; returns (status, body).
    pub async fn http_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.addr, path).await
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory (VmRSS) of a process in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))
}

/// The soft limit on open files of this process (`ulimit -n`).
pub fn open_files_limit() -> Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("cannot read the open-files limit"))
}

/// A Redis primary, `n` replicas and three sentinels on free loopback ports, with short
/// failover timings (`down-after-milliseconds` 1000, `failover-timeout` 3000). Every process is
/// killed on drop.
#[derive(Debug)]
pub struct SentinelGroup {
    /// The primary at start.
    pub primary: Option<RedisServer>,
    /// The replicas at start.
    pub replicas: Vec<RedisServer>,
    sentinels: Vec<(Child, u16)>,
    _dir: TempDir,
}

/// The master name the sentinels monitor.
pub const MASTER_NAME: &str = "meridian-test";

impl SentinelGroup {
    /// Starts everything and waits until the replicas are online and every sentinel knows the
    /// replicas and the two other sentinels (so a failover can happen).
    pub fn start(replicas: usize) -> Result<Self> {
        // No 5 s diskless-sync delay: a replica (re)syncs at once, also from a promoted one.
        const NO_DELAY: [&str; 2] = ["--repl-diskless-sync-delay", "0"];
        let primary = RedisServer::start_with_args(&NO_DELAY)?;
        let port = primary.port().to_string();
        let mut replica_servers = Vec::new();
        for _ in 0..replicas {
            replica_servers.push(RedisServer::start_with_args(&[
                NO_DELAY[0],
                NO_DELAY[1],
                "--replicaof",
                "127.0.0.1",
                &port,
            ])?);
        }
        let dir = TempDir::new("sentinel")?;
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let sport = region_state::testing::free_port()?;
            let conf = dir.0.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {sport}\nbind 127.0.0.1\ndir {dir}\nprotected-mode no\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 3000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = dir.0.display()
                ),
            )?;
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("spawn redis-sentinel (apt-get install redis-sentinel)")?;
            sentinels.push((child, sport));
        }
        let group = Self {
            primary: Some(primary),
            replicas: replica_servers,
            sentinels,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if group.settled().unwrap_or(false) {
                return Ok(group);
            }
            if Instant::now() > deadline {
                bail!("sentinels did not discover the replica and each other in 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn settled(&self) -> Result<bool> {
        for replica in &self.replicas {
            let info = redis_info(replica.port(), "replication")?;
            if !info.contains("master_link_status:up") {
                return Ok(false);
            }
        }
        // Online as the primary sees them, so WAIT counts them.
        let primary = self.primary.as_ref().ok_or_else(|| anyhow!("no primary"))?;
        let info = redis_info(primary.port(), "replication")?;
        if info.matches("state=online").count() != self.replicas.len() {
            return Ok(false);
        }
        let want = self.replicas.len().to_string();
        for (_, port) in &self.sentinels {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
            let mut conn = client.get_connection_with_timeout(Duration::from_millis(300))?;
            let fields: Vec<String> = redis::cmd("SENTINEL")
                .arg("MASTER")
                .arg(MASTER_NAME)
                .query(&mut conn)?;
            let get = |k: &str| {
                fields
                    .iter()
                    .position(|f| f == k)
                    .and_then(|i| fields.get(i + 1))
                    .cloned()
                    .unwrap_or_default()
            };
            if get("num-slaves") != want || get("num-other-sentinels") != "2" {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The sentinel URLs, for a node's `store.sentinels`.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(_, p)| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// A node's `store = {...}` line for this group.
    pub fn store_toml(&self, durable: bool) -> String {
        let list: Vec<String> = self
            .sentinel_urls()
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect();
        format!(
            "store = {{ kind = \"sentinel\", sentinels = [{}], master_name = \"{MASTER_NAME}\", durable = {durable}, durable_timeout_ms = 1000 }}",
            list.join(", ")
        )
    }

    /// `SENTINEL FAILOVER`: a planned failover; the old primary stays up and is demoted.
    pub fn force_failover(&self) -> Result<()> {
        let (_, port) = self
            .sentinels
            .first()
            .ok_or_else(|| anyhow!("no sentinel"))?;
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
        let _: String = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query(&mut conn)?;
        Ok(())
    }

    /// The port the sentinels currently name as the primary.
    pub fn current_primary_port(&self) -> Result<u16> {
        for (_, port) in &self.sentinels {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else {
                continue;
            };
            let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(300))
            else {
                continue;
            };
            let addr: redis::RedisResult<(String, String)> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(MASTER_NAME)
                .query(&mut conn);
            if let Ok((_, p)) = addr {
                return Ok(p.parse()?);
            }
        }
        bail!("no sentinel answered")
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for (child, _) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `INFO <section>` of the server on a loopback port.
pub fn redis_info(port: u16, section: &str) -> Result<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_millis(300))?;
    Ok(redis::cmd("INFO").arg(section).query(&mut conn)?)
}

/// The tests' HTTP client (reqwest): never through an `HTTP_PROXY` from the environment, no
/// redirect followed (tests look at the 3xx themselves), and no idle connection kept (each
/// `#[tokio::test]` has its own runtime, and a pooled connection belongs to the one that made
/// it).
fn http_client() -> Result<&'static reqwest::Client> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client);
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()?;
    Ok(CLIENT.get_or_init(|| client))
}

/// An HTTP GET over loopback: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let (status, _, body) = http_request(addr, "GET", path, &[], "").await?;
    Ok((status, body))
}

/// A token for `user` valid for `ttl_secs` (negative: already expired), with grants.
pub fn token_with(user: &str, ttl_secs: i64, grants: &[(&str, bool)], secret: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let claims = Claims {
        sub: UserId::new(user).unwrap_or_else(|e| panic!("bad test user {user}: {e}")),
        exp: (now + ttl_secs).max(0) as u64,
        rooms: grants
            .iter()
            .map(|(p, publish)| RoomGrant {
                pattern: (*p).to_owned(),
                publish: *publish,
            })
            .collect(),
        nbf: None,
        iat: u64::try_from(now).ok(),
        dm: false,
    };
    issue(secret.as_bytes(), &claims).unwrap_or_else(|e| panic!("issue: {e}"))
}

/// A token like [`token_with`] that also carries the claim `dm: true` (direct messages to
/// users who share no room with the holder).
pub fn token_with_dm(user: &str, ttl_secs: i64, grants: &[(&str, bool)], secret: &str) -> String {
    let verifier = meridian_protocol::token::TokenVerifier::new(secret.as_bytes());
    let plain = token_with(user, ttl_secs, grants, secret);
    let mut claims = verifier
        .verify(&plain)
        .unwrap_or_else(|e| panic!("verify a fresh test token: {e}"));
    claims.dm = true;
    issue(secret.as_bytes(), &claims).unwrap_or_else(|e| panic!("issue: {e}"))
}

/// A token for `user` allowed to join and publish everywhere and to send direct messages to
/// anyone (claim `dm`), valid for an hour.
pub fn token(user: &str) -> String {
    token_with_dm(user, 3600, &[("*", true)], SECRET)
}

/// The `result` of an `ok` reply, or an error naming the code.
pub fn ok(reply: Value) -> Result<Value> {
    if reply["type"] == "ok" {
        Ok(reply["result"].clone())
    } else {
        bail!("expected ok, got {reply}")
    }
}

/// The `code` of an `error` reply.
pub fn error_code(reply: &Value) -> String {
    assert_eq!(
        reply["type"], "error",
        "expected an error reply, got {reply}"
    );
    reply["code"].as_str().unwrap_or_default().to_owned()
}

/// Polls `check` every 50 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// An HTTP request over loopback; returns (status, head, body). The head is the status line
/// and one `name: value` line per header, as the server sent them (names in lower case).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String, String)> {
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut request = http_client()?
        .request(method, format!("http://{addr}{path}"))
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    let status = response.status();
    let mut head = format!("{:?} {status}", response.version());
    for (name, value) in response.headers() {
        head.push_str(&format!(
            "\r\n{name}: {}",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    let body = response.text().await?;
    Ok((status.as_u16(), head, body))
}

/// A `geo-router` child process.
#[derive(Debug)]
pub struct RouterProcess {
    child: Child,
    /// DNS address (UDP and TCP).
    pub dns: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    /// The admin API's address, when the config sets `admin_listen`.
    pub admin: Option<SocketAddr>,
}

impl RouterProcess {
    /// Starts `geo-router --config <toml>` (listen addresses default to port 0 on 127.0.0.1)
    /// and waits for its "listening on" lines (the admin one too when `admin_listen` is set).
    pub fn start(dir: &Path, name: &str, toml: &str) -> Result<Self> {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml)?;
        let mut child = Command::new(bin_path("geo-router")?)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn,geo_router=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn geo-router")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                for prefix in [
                    "dns listening on ",
                    "http listening on ",
                    "admin listening on ",
                ] {
                    if let Some(addr) = line.strip_prefix(prefix) {
                        let _ = tx.send((prefix, addr.trim().to_owned()));
                    }
                }
            }
        });
        let (mut dns, mut http, mut admin) = (None, None, None);
        let wants_admin = toml.contains("admin_listen");
        while dns.is_none() || http.is_none() || (wants_admin && admin.is_none()) {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(("dns listening on ", addr)) => dns = Some(addr.parse()?),
                Ok(("admin listening on ", addr)) => admin = Some(addr.parse()?),
                Ok((_, addr)) => http = Some(addr.parse()?),
                Err(_) => {
                    let _ = child.kill();
                    bail!("geo-router did not report its addresses");
                }
            }
        }
        Ok(Self {
            child,
            dns: dns.ok_or_else(|| anyhow!("no dns address"))?,
            http: http.ok_or_else(|| anyhow!("no http address"))?,
            admin,
        })
    }

    /// Sends a signal (`"KILL"`, `"TERM"`).
    pub fn signal(&self, sig: &str) -> Result<()> {
        signal_child(&self.child, sig)
    }

    /// Waits for the process to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        wait_child(&mut self.child, within)
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A region health endpoint the test controls: answers 200 with a load body while up, 503
/// while failing, and refuses connections once stopped.
#[derive(Debug)]
pub struct HealthServer {
    /// Where it listens.
    pub addr: SocketAddr,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl HealthServer {
    /// Starts on 127.0.0.1 with a free port.
    pub async fn start() -> Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr` (to come back on the same port after [`HealthServer::stop`]).
    pub async fn start_on(addr: SocketAddr) -> Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let failing = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&failing);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let failing = flag.load(Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = stream.read(&mut buf).await;
                    let (status, body) = if failing {
                        ("503 Service Unavailable", "{\"status\":\"failing\"}")
                    } else {
                        ("200 OK", "{\"status\":\"ready\",\"load\":0.1}")
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Ok(Self {
            addr,
            failing,
            task: Some(task),
        })
    }

    /// Answer 503 (true) or 200 (false) from now on.
    pub fn set_failing(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::Relaxed);
    }

    /// Closes the listener: connections are refused.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// The health URL to put in a catalogue.
    pub fn url(&self) -> String {
        format!("http://{}/readyz", self.addr)
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes a catalogue of the dev regions (coordinates as in `regions/`) into `dir`, with each
/// region's ingress address `127.0.1.<n>` and `health_url` from `health` (by name).
pub fn write_catalogue(dir: &Path, health: &[(&str, String)]) -> Result<()> {
    let regions = [
        ("us-east", 38.9072, -77.0369, 1),
        ("eu-central", 50.1109, 8.6821, 2),
        ("ap-southeast", 1.3521, 103.8198, 3),
    ];
    std::fs::create_dir_all(dir)?;
    for (name, lat, lon, n) in regions {
        let url = health
            .iter()
            .find(|(h, _)| *h == name)
            .map(|(_, u)| u.clone())
            .unwrap_or_else(|| "http://127.0.0.1:9/readyz".into());
        std::fs::write(
            dir.join(format!("{name}.toml")),
            format!(
                "name = \"{name}\"\nlatitude = {lat}\nlongitude = {lon}\ncapacity = 1000\n\
                 cloud = \"aws\"\ncloud_region = \"test-{n}\"\n\
                 [ingress]\naddresses = [\"127.0.1.{n}\", \"::1\"]\nws_url = \"ws://127.0.1.{n}:7000/v1/ws\"\n\
                 health_url = \"{url}\"\n[relay]\naddress = \"127.0.1.{n}:7400\"\n"
            ),
        )?;
    }
    Ok(())
}

/// The A records and the ECS scope of one `qname` query with an optional ECS network
/// (`address/prefix`) sent over UDP to `server`: (rcode, addresses, scope, ttl).
pub async fn dns_query(
    server: SocketAddr,
    qname: &str,
    ecs: Option<(std::net::IpAddr, u8)>,
) -> Result<(
    hickory_proto::op::ResponseCode,
    Vec<std::net::IpAddr>,
    Option<u8>,
    Option<u32>,
)> {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut message = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_utf8(qname)?, RecordType::A));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    if let Some((address, prefix)) = ecs {
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(address, prefix, 0)));
    }
    message.set_edns(edns);
    let bytes = message.to_vec()?;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(&bytes, server).await?;
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await??;
    let response = Message::from_vec(&buf[..n])?;
    let addresses = response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    let ttl = response.answers.first().map(|r| r.ttl);
    let scope = response.edns.as_ref().and_then(|e| {
        e.options().as_ref().iter().find_map(|(_, o)| match o {
            EdnsOption::Subnet(s) => Some(s.scope_prefix()),
            _ => None,
        })
    });
    Ok((response.metadata.response_code, addresses, scope, ttl))
}

fn rand_id() -> u16 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (nanos >> 16)) as u16
}

impl SentinelGroup {
    /// A planned failover that loses no acknowledged write, as Redis's own `FAILOVER` does it:
    /// pause writes on the primary (`CLIENT PAUSE <ms> WRITE`), wait until every replica has the
    /// primary's replication offset, `SENTINEL FAILOVER`, wait until the sentinels name the new
    /// primary, demote the old one (`REPLICAOF` the new), then unpause it (it is a replica by
    /// then, so the writes it held are refused, and their clients retry on the new primary).
    /// Returns how long writes were paused.
    pub fn planned_failover_paused(&self, pause: Duration) -> Result<Duration> {
        let old = self.current_primary_port()?;
        let client = redis::Client::open(format!("redis://127.0.0.1:{old}/"))?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
        let paused_at = Instant::now();
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(pause.as_millis() as u64)
            .arg("WRITE")
            .query(&mut conn)?;
        // Every replica at the primary's offset: nothing acknowledged is missing on any of them.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let info: String = redis::cmd("INFO").arg("replication").query(&mut conn)?;
            let offset = info
                .lines()
                .find_map(|l| l.strip_prefix("master_repl_offset:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| anyhow!("no master_repl_offset"))?;
            let replicas: Vec<u64> = info
                .lines()
                .filter(|l| l.starts_with("slave") && l.contains("offset="))
                .filter_map(|l| {
                    l.split(',')
                        .find_map(|f| f.strip_prefix("offset="))
                        .and_then(|v| v.parse().ok())
                })
                .collect();
            if !replicas.is_empty() && replicas.iter().all(|o| *o >= offset) {
                break;
            }
            if Instant::now() > deadline {
                bail!("replicas did not reach offset {offset}: {replicas:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.force_failover()?;
        let deadline = Instant::now() + pause;
        while self.current_primary_port().is_ok_and(|p| p == old) {
            if Instant::now() > deadline {
                bail!("the sentinels did not switch within the pause");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Demote the old primary now rather than waiting for Sentinel: Sentinel's own
        // `REPLICAOF` queues on its connection behind a `PUBLISH` the pause holds. `REPLICAOF`
        // is not a write, so the pause does not hold ours.
        let new = self.current_primary_port()?;
        let _: () = redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(new)
            .query(&mut conn)?;
        while !redis_info(old, "replication").is_ok_and(|i| i.contains("role:slave")) {
            if Instant::now() > deadline {
                bail!("the old primary was not demoted within the pause");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let paused_for = paused_at.elapsed();
        let _: redis::RedisResult<()> = redis::cmd("CLIENT").arg("UNPAUSE").query(&mut conn);
        Ok(paused_for)
    }
}
