//! What a drill talks to: the router (HTTP, admin, DNS), the token secret, and on a local
//! mesh `meridian up`'s control API; from the flags or a local mesh's `endpoints.json`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::mesh::{self, ControlApi, RouterApi};
use super::{DrillArgs, Mode};

/// Everything the drill talks to.
pub(super) struct Target {
    pub(super) router: RouterApi,
    /// The router's admin listener (drain / undrain).
    pub(super) admin: Option<mesh::AdminApi>,
    pub(super) dns: Option<SocketAddr>,
    pub(super) zone: String,
    pub(super) admin_token: Option<String>,
    pub(super) token_secret: String,
    pub(super) control: Option<ControlApi>,
    pub(super) grace: Duration,
    pub(super) local: bool,
    /// Where the JSON report goes without --report: the local mesh's state directory.
    pub(super) report_dir: Option<PathBuf>,
}

pub(super) fn dns_server(text: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()
        .with_context(|| format!("--dns {text}: give the router's DNS server as HOST:PORT"))?
        .next()
        .ok_or_else(|| anyhow!("--dns {text}: the name has no address"))
}

pub(super) fn resolve(args: &DrillArgs) -> Result<Target> {
    let dns = args.dns.as_deref().map(dns_server).transpose()?;
    let endpoints = mesh::load_endpoints(args.endpoints.as_deref(), args.state_dir.as_deref())?;
    if let Some(ca) = endpoints.as_ref().and_then(|e| e.tls_ca.as_ref()) {
        crate::tls::trust_ca(ca)?;
    }
    let target = match endpoints {
        Some(e) => Target {
            router: RouterApi::new(
                args.router
                    .as_deref()
                    .unwrap_or(&format!("http://{}", e.router.http)),
            )?,
            admin: match (&args.router_admin, e.router.admin) {
                (Some(url), _) => Some(mesh::AdminApi::new(url, args.router_admin_ca.as_deref())?),
                (None, Some(addr)) => Some(mesh::AdminApi::new(&format!("http://{addr}"), None)?),
                (None, None) => None,
            },
            dns: dns.or(Some(e.router.dns)),
            zone: args.zone.clone().unwrap_or(e.zone),
            admin_token: args.admin_token.clone().or(Some(e.admin_token)),
            token_secret: args.token_secret.clone().unwrap_or(e.token_secret),
            control: Some(ControlApi::new(e.control)?),
            grace: args
                .grace
                .unwrap_or(Duration::from_millis(e.relay_grace_ms)),
            local: true,
            report_dir: Some(e.state_dir),
        },
        None => {
            let router = args.router.as_deref().ok_or_else(|| {
                anyhow!(
                    "say which mesh to drill: --state-dir DIR (or --endpoints FILE) of a running \
                     `meridian up`, or --router http://HOST:PORT (plus --token-secret and \
                     --admin-token) for a deployment"
                )
            })?;
            Target {
                router: RouterApi::new(router)?,
                admin: args
                    .router_admin
                    .as_deref()
                    .map(|url| mesh::AdminApi::new(url, args.router_admin_ca.as_deref()))
                    .transpose()?,
                dns,
                zone: args
                    .zone
                    .clone()
                    .unwrap_or_else(|| "mesh.localhost.".into()),
                admin_token: args.admin_token.clone(),
                token_secret: args.token_secret.clone().ok_or_else(|| {
                    anyhow!(
                        "--token-secret (or MERIDIAN_TOKEN_SECRET) is needed to mint the \
                         drill's user tokens"
                    )
                })?,
                control: None,
                grace: args.grace.unwrap_or(Duration::from_secs(15)),
                local: false,
                report_dir: None,
            }
        }
    };
    if args.mode == Mode::Kill && target.control.is_none() {
        bail!(
            "--mode kill works on a local mesh only (--state-dir of `meridian up`): on a \
             deployment, kill the region yourself and use --mode drain for the routing side"
        );
    }
    if args.mode == Mode::Drain && target.admin_token.is_none() {
        bail!("--mode drain needs the router's admin token: --admin-token or MERIDIAN_ADMIN_TOKEN");
    }
    if args.mode == Mode::Drain && target.admin.is_none() {
        bail!(
            "--mode drain needs the router's admin API: --router-admin https://HOST:PORT (the \
             router's admin_listen; the public HTTP port does not serve /v1/admin)"
        );
    }
    if args.clients < 2 || args.clients > 5000 {
        bail!("--clients must be in 2..=5000");
    }
    if args.rooms == 0 || args.rooms > args.clients {
        bail!("--rooms must be in 1..=--clients");
    }
    Ok(target)
}
