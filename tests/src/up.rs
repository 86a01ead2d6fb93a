//! A `meridian up --auto-ports` mesh as a child process, for the tests that drive the CLI
//! (cli.rs, cli_newcomer.rs, router_hardening.rs). Loopback only; on drop `up` gets SIGTERM,
//! then it and every process of its mesh get SIGKILL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{bin_path, TempDir};

/// A running `meridian up` (SIGTERM, then SIGKILL of it and of every mesh pid on drop).
#[derive(Debug)]
pub struct Up {
    /// The `meridian up` process.
    pub child: Child,
    /// Its scratch directory: `up.log` and `state/`.
    pub dir: TempDir,
    /// `endpoints.json`, read once `up` wrote it.
    pub endpoints: Value,
}

impl Up {
    /// Starts `meridian up --auto-ports --dns 127.0.0.1:0 --http 127.0.0.1:0 --state-dir
    /// <dir>/state` plus `extra`, and waits (up to 120 s) for its `endpoints.json`.
    pub fn start(tag: &str, extra: &[&str]) -> Result<Up> {
        let dir = TempDir::new(tag)?;
        let state = dir.0.join("state");
        let log = std::fs::File::create(dir.0.join("up.log"))?;
        let child = Command::new(bin_path("meridian")?)
            .args([
                "up",
                "--auto-ports",
                "--dns",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ])
            .arg("--state-dir")
            .arg(&state)
            .args(extra)
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("start meridian up")?;
        let mut up = Up {
            child,
            dir,
            endpoints: Value::Null,
        };
        let json = state.join("endpoints.json");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(text) = std::fs::read_to_string(&json) {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    up.endpoints = v;
                    return Ok(up);
                }
            }
            if let Some(status) = up.child.try_wait()? {
                bail!("meridian up exited ({status}): {}", up.log());
            }
            if Instant::now() > deadline {
                bail!("meridian up not ready after 120 s: {}", up.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What `up` printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("up.log")).unwrap_or_default()
    }

    /// `--state-dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.0.join("state")
    }

    /// `router.<key>` of endpoints.json (`http`, `dns`, `admin`).
    pub fn router_addr(&self, key: &str) -> Result<SocketAddr> {
        Ok(self.endpoints["router"][key]
            .as_str()
            .with_context(|| format!("router.{key} in endpoints.json"))?
            .parse()?)
    }

    /// A region's `ws_url`.
    pub fn ws_url(&self, region: &str) -> Result<String> {
        self.endpoints["regions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == region)
            .and_then(|r| r["ws_url"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("no region {region}"))
    }

    /// The router's HTTP address.
    pub fn router_http(&self) -> Result<SocketAddr> {
        Ok(self.endpoints["router"]["http"]
            .as_str()
            .context("router.http")?
            .parse()?)
    }

    /// The router's DNS address.
    pub fn router_dns(&self) -> Result<SocketAddr> {
        Ok(self.endpoints["router"]["dns"]
            .as_str()
            .context("router.dns")?
            .parse()?)
    }

    /// The pids `up` recorded for its children.
    pub fn mesh_pids(&self) -> Vec<u32> {
        self.endpoints["pids"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(_, p)| p.as_u64().map(|p| p as u32))
            .collect()
    }

    /// SIGTERM and wait for `up` to exit.
    pub fn terminate(&mut self, within: Duration) -> Result<ExitStatus> {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("meridian up still running {within:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Whatever survived (a failing test must not leave a mesh behind).
        for pid in self
            .mesh_pids()
            .into_iter()
            .chain(processes_under(&self.state_dir()))
        {
            signal(pid, "KILL");
        }
    }
}

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Sends `kill -<sig>` to `pid`, ignoring failures (it may be gone).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether `pid` is a live process (not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Processes whose command line mentions `dir` (every mesh child gets a path in the state
/// directory: configs, Redis data) or whose working directory is inside it (redis-server
/// rewrites its command line but changes into its data dir), except this test process.
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let me = std::process::id();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let in_cmdline = String::from_utf8_lossy(&cmdline).contains(&needle);
        let in_cwd =
            std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir));
        if (in_cmdline || in_cwd) && alive(pid) {
            out.push(pid);
        }
    }
    out
}
