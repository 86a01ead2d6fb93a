//! The table of endpoints `up` prints once the mesh is up, with commands to try.

use std::path::Path;

use super::Endpoints;

pub(super) fn print_table(e: &Endpoints, json: &Path, smoke: bool) {
    println!(
        "\nMeridian mesh is up  (state: {})\n",
        e.state_dir.display()
    );
    println!(
        "  geo-router   DNS {}   HTTP http://{}   zone {}",
        e.router.dns, e.router.http, e.zone
    );
    println!(
        "  GeoIP        {}{}",
        e.geoip.display(),
        if e.geoip_synthetic {
            "  (SYNTHETIC demo data)"
        } else {
            ""
        }
    );
    println!();
    println!(
        "  {:<14} {:<32} {:<9} {:<26} {:<20} nodes",
        "region", "ws_url", "balancer", "store", "relay"
    );
    for r in &e.regions {
        let nodes: Vec<String> = r.nodes.iter().map(ToString::to_string).collect();
        println!(
            "  {:<14} {:<32} {:<9} {:<26} {:<20} {}",
            r.name,
            r.ws_url,
            r.balancer,
            r.store,
            r.relay.to_string(),
            nodes.join(" ")
        );
    }
    let port = e.router.dns.port();
    println!("\nTry it:");
    println!(
        "  dig @127.0.0.1 -p {port} ws.{} A +subnet=103.20.1.0/24   # a Singapore user",
        e.zone
    );
    println!(
        "  dig @127.0.0.1 -p {port} ws.{} A +subnet=81.20.1.0/24    # a Berlin user",
        e.zone
    );
    println!(
        "  curl 'http://{}/v1/route?ip=23.10.1.1'                 # a New York user",
        e.router.http
    );
    let me = cli_command();
    let state = shell_word(&e.state_dir.display().to_string());
    if let (Some(a), Some(b)) = (e.regions.first(), e.regions.get(1)) {
        println!(
            "  {me} chat --state-dir {state} --region {} --user alice --room lobby",
            a.name
        );
        println!(
            "  {me} chat --state-dir {state} --region {} --user bob --room lobby",
            b.name
        );
        println!(
            "  {me} members --state-dir {state} --region {} --user carol --room lobby",
            b.name
        );
    }
    println!(
        "  (clients connect to a region's ws_url above; the DNS answers name the region's public address)"
    );
    if let Some(ca) = &e.tls_ca {
        let ca = shell_word(&ca.display().to_string());
        println!(
            "\nTLS: the balancers serve wss:// and https:// with a certificate of the dev CA {ca}"
        );
        println!(
            "  meridian commands given --state-dir trust it; elsewhere: --ca {ca} (or MERIDIAN_CA)"
        );
        if let Some(r) = e.regions.first() {
            println!("  curl --cacert {ca} {}", r.health_url);
        }
        println!(
            "  browsers: import {ca} as an authority (Firefox: Settings > Certificates; Chromium: \
             certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n meridian-dev -i {ca})"
        );
    }
    if let Some(demo) = &e.demo {
        println!("\nWebRTC demo (open it twice: alice in Singapore, bob in Berlin):");
        println!("  {demo}?user=alice&ip=103.20.1.7");
        println!("  {demo}?user=bob&ip=81.20.1.7");
    }
    println!("\nEvery endpoint as JSON: {}", json.display());
    if !smoke {
        println!("Ctrl-C stops everything.");
    }
}

/// How to run this `meridian` in a shell: `meridian` when that is on the PATH and is this very
/// binary, else this binary's absolute path.
pub(super) fn cli_command() -> String {
    let Ok(exe) = std::env::current_exe().and_then(std::fs::canonicalize) else {
        return "meridian".into();
    };
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("meridian"))
            .find(|p| p.is_file())
    });
    if on_path.and_then(|p| p.canonicalize().ok()).as_ref() == Some(&exe) {
        return "meridian".into();
    }
    // Absolute: `scripts/up.sh` runs from the repository root, the reader's shell may not.
    shell_word(&exe.display().to_string())
}

/// `text` quoted for a POSIX shell when it needs it.
pub(super) fn shell_word(text: &str) -> String {
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@=,".contains(c))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}
