//! What the router's integration tests share: a router started in-process, a scratch
//! directory, a catalogue file, and one raw HTTP/1.1 exchange (from a chosen loopback source
//! address when the test needs one).
// Each test binary uses its own subset of these.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use geo_router::config::RouterConfig;
use geo_router::service::{run, Listeners, RunningRouter, StartError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_util::sync::CancellationToken;

/// Binds the addresses `config` names and runs a router there, as the binary does, with a
/// shutdown token of its own ([`RunningRouter::stop`] cancels it; otherwise the router stops
/// with the test's runtime).
pub async fn start(config: RouterConfig) -> Result<RunningRouter, StartError> {
    let listeners = Listeners::bind(&config).await?;
    run(config, listeners, CancellationToken::new()).await
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("geo-router-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join("regions")).unwrap();
        TestDir(dir)
    }

    /// The catalogue directory (`regions/`).
    pub fn regions(&self) -> PathBuf {
        self.0.join("regions")
    }

    /// Writes `regions/<name>.toml`: region number `n` (addresses `127.0.1.<n>`), probed at
    /// `health_url`.
    pub fn write_region(&self, n: usize, name: &str, lat: f64, lon: f64, health_url: &str) {
        std::fs::write(
            self.regions().join(format!("{name}.toml")),
            format!(
                "name = \"{name}\"\nlatitude = {lat}\nlongitude = {lon}\ncapacity = 1000\n\
                 cloud = \"aws\"\ncloud_region = \"test-{n}\"\n\
                 [ingress]\naddresses = [\"127.0.1.{n}\"]\nws_url = \"ws://127.0.1.{n}:7000/v1/ws\"\n\
                 health_url = \"{health_url}\"\n[relay]\naddress = \"127.0.1.{n}:7400\"\n"
            ),
        )
        .unwrap();
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One HTTP/1.1 request with `Connection: close` from `source` (`None`: 127.0.0.1), with the
/// header lines `headers` (each ending in CRLF): (status, the whole reply with its head).
pub async fn exchange(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let exchange = async {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(source) = source {
            socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
        }
        let mut stream = socket.connect(addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.unwrap();
        let reply = String::from_utf8_lossy(&reply).into_owned();
        let status = reply
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, reply)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .expect("HTTP request timed out")
}

/// The body of a reply from [`exchange`].
pub fn body(reply: &str) -> String {
    reply
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned())
}
