//! Connection-level attacks on a region node: silent TCP connections against a node at its
//! file-descriptor limit, and a flood of WebSocket upgrades that never say `hello`.
//!
//! Run: `cargo build --bins && cargo test -p meridian-e2e --test hardening_conn -- --nocapture`

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use meridian_e2e::{bin_path, eventually, http_get, ok, token, Client, TempDir, SECRET};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

/// A region-node on the memory store with an ops listener, optionally under `prlimit`.
struct OpsNode {
    child: Child,
    addr: SocketAddr,
    ops: SocketAddr,
    _dir: TempDir,
}

impl OpsNode {
    fn start(nofile: Option<u64>, extra: &str) -> Result<Self> {
        let dir = TempDir::new("ops-node")?;
        let config = dir.0.join("node.toml");
        std::fs::write(
            &config,
            format!(
                "region = \"conn\"\nlisten = \"127.0.0.1:0\"\nops_listen = \"127.0.0.1:0\"\n\
                 token_secret = \"{SECRET}\"\nstore = {{ kind = \"memory\" }}\n{extra}\n"
            ),
        )?;
        let node = bin_path("region-node")?;
        let mut command = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(node);
                c
            }
            None => Command::new(node),
        };
        let mut child = command
            .arg("--config")
            .arg(&config)
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
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut addr, mut ops) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while addr.is_none() || ops.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                bail!("region-node did not report its addresses");
            };
            if let Some(a) = line.strip_prefix("listening on ") {
                addr = Some(a.trim().parse()?);
            } else if let Some(a) = line.strip_prefix("ops listening on ") {
                ops = Some(a.trim().parse()?);
            }
        }
        Ok(Self {
            child,
            addr: addr.ok_or_else(|| anyhow!("no address"))?,
            ops: ops.ok_or_else(|| anyhow!("no ops address"))?,
            _dir: dir,
        })
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// A counter's value from `/metrics` on the ops port (0 when absent).
    async fn metric(&self, name: &str, label: &str) -> Result<f64> {
        let (status, body) = http_get(self.ops, "/metrics").await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(body
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}

impl Drop for OpsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real user: connect, hello, join. Errors name what failed.
async fn real_user(url: &str, user: &str) -> Result<()> {
    let (mut c, _) = Client::hello(url, &token(user), json!([])).await?;
    ok(c.request(json!({"op": "join", "room": "lobby"})).await?)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_at_the_fd_limit_neither_hide_health_nor_lock_users_out() -> Result<()> {
    // 256 descriptors; the unauthenticated caps are off so the fd limit is what binds.
    let node = OpsNode::start(
        Some(256),
        "[limits]\nmax_unauthenticated = 0\nmax_unauthenticated_per_source = 0\n\
         [timing]\nupgrade_timeout_ms = 2000\nhello_timeout_ms = 2000\n",
    )?;
    // The client port serves WebSockets only.
    assert_eq!(http_get(node.addr, "/metrics").await?.0, 404);
    assert_eq!(http_get(node.addr, "/readyz").await?.0, 404);
    assert_eq!(http_get(node.ops, "/healthz").await?.0, 200);

    // 400 connections that never send a byte: more than the process has descriptors.
    let mut silent = Vec::new();
    for _ in 0..400 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(node.addr)).await
        {
            silent.push(s);
        }
    }
    let opened_at = Instant::now();
    // Health on the ops listener answers while the client port is saturated.
    let started = Instant::now();
    let (status, _) = tokio::time::timeout(Duration::from_secs(2), http_get(node.ops, "/healthz"))
        .await
        .context("/healthz on the ops port timed out while the client port is saturated")??;
    let health_took = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(http_get(node.ops, "/readyz").await?.0, 200);
    assert!(
        node.metric("meridian_node_refused_connections", "fd_limit")
            .await?
            > 0.0,
        "the node sheds at its fd limit and says so"
    );

    // After the upgrade timeout the silent ones are gone and a real user gets in.
    let mut user_in = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if real_user(&node.ws_url(), "alice").await.is_ok() {
            user_in = Some(opened_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let user_in = user_in.context("no real user got in within 10 s")?;
    // The node closed the silent sockets it had accepted.
    let mut closed_by_node = 0;
    for s in &mut silent {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await
        {
            closed_by_node += 1;
        }
    }
    let timed_out = node
        .metric("meridian_node_refused_connections", "upgrade_timeout")
        .await?;
    println!(
        "fd limit 256, {} silent connections: /healthz on the ops port in {health_took:?}, a real \
         user in {user_in:?} after they opened, {closed_by_node} closed by the node, \
         {timed_out} closed for no upgrade in time",
        silent.len()
    );
    assert!(timed_out > 0.0);
    assert!(user_in <= Duration::from_secs(6), "{user_in:?}");
    assert!(closed_by_node >= silent.len() * 9 / 10, "{closed_by_node}");
    Ok(())
}

/// Opens a WebSocket from `source` and says nothing; returns once the node closed it or
/// `hold` passed.
async fn silent_upgrade(source: &str, node: SocketAddr, url: &str, hold: Duration) -> Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse()?)?;
    let stream = socket.connect(node).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    let _ = tokio::time::timeout(hold, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    let _ = ws.close(None).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_flood_from_one_address_does_not_starve_real_users() -> Result<()> {
    // A node-wide accept rate the flood alone could exhaust many times over.
    let node = OpsNode::start(
        None,
        "[limits]\ntrusted_proxies = []\naccept_per_second = 200.0\naccept_burst = 50.0\n\
         max_unauthenticated_per_source = 64\naccept_per_source_per_second = 50.0\n\
         accept_per_source_burst = 50.0\n",
    )?;
    let url = node.ws_url();
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for _ in 0..24 {
        let (stop, attempts, url) = (stop.clone(), attempts.clone(), url.clone());
        let addr = node.addr;
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                attempts.fetch_add(1, Ordering::Relaxed);
                let _ = silent_upgrade("127.0.0.2", addr, &url, Duration::from_millis(300)).await;
            }
        }));
    }
    // The real users come while the flood is on: the per-source limits already refuse it.
    let flooding = eventually(Duration::from_secs(5), || async {
        node.metric("meridian_node_refused_connections", "source")
            .await
            .is_ok_and(|n| n > 0.0)
    })
    .await;
    assert!(flooding, "the flood never reached the per-source limits");
    let mut failures = Vec::new();
    let tries = 20;
    for i in 0..tries {
        if let Err(e) = real_user(&url, &format!("user{i}")).await {
            failures.push(e.to_string());
        }
        // Workload pacing: the real users arrive spread over the flood.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        let _ = f.await;
    }
    let refused = node
        .metric("meridian_node_refused_connections", "source")
        .await?;
    println!(
        "flood of {} silent upgrades from 127.0.0.2: real users {}/{tries} in, {refused} flood \
         attempts refused by the per-source limits",
        attempts.load(Ordering::Relaxed),
        tries - failures.len()
    );
    assert!(refused > 0.0, "the per-source limits bound the flood");
    assert!(failures.is_empty(), "real users failed: {failures:?}");
    Ok(())
}
