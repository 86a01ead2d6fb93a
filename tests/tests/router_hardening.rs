//! Issue #20 on `meridian up --auto-ports` (a child process, loopback only): the router `up`
//! starts hands out RTT report tokens (so `up` gave it a `rtt.report_key`) whose probe URLs
//! answer, accepts a report only with a token, serves the admin API only on its own listener
//! (`endpoints.json` `router.admin`), and redacts operators' notes in `/v1/regions` without an
//! admin token. Every child is killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use meridian_e2e::{bin_path, http_get, http_request, TempDir};
use serde_json::Value;

/// A running `meridian up` (SIGTERM, then SIGKILL of it and of every mesh pid on drop).
struct Up {
    child: Child,
    dir: TempDir,
    endpoints: Value,
}

impl Up {
    fn start(tag: &str) -> Result<Up> {
        let dir = TempDir::new(tag)?;
        let state = dir.0.join("state");
        let log = std::fs::File::create(dir.0.join("up.log"))?;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".."));
        let child = Command::new(bin_path("meridian")?)
            .args(["up", "--auto-ports", "--dns", "127.0.0.1:0"])
            .args([
                "--http",
                "127.0.0.1:0",
                "--relay-grace",
                "3s",
                "--state-dir",
            ])
            .arg(&state)
            .current_dir(root)
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
                bail!("meridian up exited ({status})");
            }
            if Instant::now() > deadline {
                bail!("meridian up not ready after 120 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn addr(&self, key: &str) -> Result<SocketAddr> {
        Ok(self.endpoints["router"][key]
            .as_str()
            .with_context(|| format!("router.{key} in endpoints.json"))?
            .parse()?)
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Processes whose command line mentions `dir` or whose working directory is inside it.
fn processes_under(dir: &Path) -> Vec<u32> {
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
        if in_cmdline || in_cwd {
            out.push(pid);
        }
    }
    out
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
        let pids: Vec<u32> = self.endpoints["pids"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(_, p)| p.as_u64().and_then(|p| u32::try_from(p).ok()))
            .chain(processes_under(&self.dir.0.join("state")))
            .collect();
        for pid in pids {
            signal(pid, "KILL");
        }
        let _ = std::fs::remove_dir_all(&self.dir.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_hands_out_report_tokens_and_keeps_admin_off_the_public_port() -> Result<()> {
    let up = Up::start("router-hardening")?;
    let http = up.addr("http")?;
    let admin = up.addr("admin")?;
    ensure!(admin != http, "the admin API has its own listener");

    // /v1/route carries a report token and a probe URL per region that answers.
    let (status, _, body) = http_request(http, "GET", "/v1/route", &[], "").await?;
    ensure!(status == 200, "/v1/route: {status} {body}");
    let route: Value = serde_json::from_str(&body)?;
    let report = &route["rtt_report"];
    let token = report["token"]
        .as_str()
        .with_context(|| format!("no rtt_report token: {route}"))?;
    let regions = report["regions"].as_array().context("rtt_report.regions")?;
    ensure!(regions.len() == 3, "{route}");
    for region in regions {
        let url = region["probe_url"].as_str().context("probe_url")?;
        let rest = url.strip_prefix("http://").context("http probe_url")?;
        let (authority, path) = rest.split_once('/').context("probe_url path")?;
        let (status, _) = http_get(authority.parse()?, &format!("/{path}")).await?;
        ensure!(status == 200, "{url} answered {status}");
    }

    // A report counts only with the token.
    let rtts = r#"[{"region": "us-east", "rtt_ms": 12.5}]"#;
    let (status, _, body) = http_request(
        http,
        "POST",
        "/v1/rtt",
        &[],
        &format!(r#"{{"rtts": {rtts}}}"#),
    )
    .await?;
    ensure!(
        status == 401 && body.contains("bad_rtt_token"),
        "{status} {body}"
    );
    let (status, _, body) = http_request(
        http,
        "POST",
        "/v1/rtt",
        &[],
        &format!(r#"{{"token": "{token}", "rtts": {rtts}}}"#),
    )
    .await?;
    ensure!(status == 204, "{status} {body}");

    // The admin API: not on the public port; on the admin listener with the token.
    let auth = format!(
        "Bearer {}",
        up.endpoints["admin_token"]
            .as_str()
            .context("admin_token")?
    );
    let drain = "/v1/admin/regions/us-east/drain";
    let note = r#"{"note": "ticket OPS-99 on db-3.internal", "drill": true}"#;
    let (status, _, body) =
        http_request(http, "POST", drain, &[("Authorization", &auth)], note).await?;
    ensure!(
        status == 404 && body.contains("admin_not_here"),
        "{status} {body}"
    );
    let (status, _, body) = http_request(admin, "POST", drain, &[], note).await?;
    ensure!(status == 401, "{status} {body}");
    let (status, _, body) =
        http_request(admin, "POST", drain, &[("Authorization", &auth)], note).await?;
    ensure!(status == 200, "{status} {body}");

    // Notes only with the token.
    let (_, _, public) = http_request(http, "GET", "/v1/regions", &[], "").await?;
    ensure!(!public.contains("OPS-99"), "{public}");
    ensure!(public.contains("\"redacted\":true"), "{public}");
    let (_, _, full) =
        http_request(http, "GET", "/v1/regions", &[("Authorization", &auth)], "").await?;
    ensure!(full.contains("OPS-99"), "{full}");
    let (status, _, body) = http_request(
        admin,
        "POST",
        "/v1/admin/regions/us-east/undrain",
        &[("Authorization", &auth)],
        "",
    )
    .await?;
    ensure!(status == 200, "{status} {body}");
    Ok(())
}
