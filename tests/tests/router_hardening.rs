//! Issue #20 on `meridian up --auto-ports` (a child process, loopback only): the router `up`
//! starts hands out RTT report tokens (so `up` gave it a `rtt.report_key`) whose probe URLs
//! answer, accepts a report only with a token, serves the admin API only on its own listener
//! (`endpoints.json` `router.admin`), and redacts operators' notes in `/v1/regions` without an
//! admin token. Every child is killed on drop.

use anyhow::{ensure, Context, Result};
use meridian_e2e::up::Up;
use meridian_e2e::{http_get, http_request};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_hands_out_report_tokens_and_keeps_admin_off_the_public_port() -> Result<()> {
    let up = Up::start("router-hardening", &["--relay-grace", "3s"])?;
    let http = up.router_addr("http")?;
    let admin = up.router_addr("admin")?;
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
