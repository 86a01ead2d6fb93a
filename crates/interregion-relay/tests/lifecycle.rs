//! The relay's lifecycle in-process, against a real `redis-server`: two relays of one region
//! started with `interregion_relay::run` on port-0 sockets share the active-relay lease. One is
//! active (`/readyz` 200), the other stands by (`/readyz` 503, `meridian_relay_active 0`);
//! the standby takes over when the active one shuts down (and releases the lease); an active
//! relay that finds the lease taken stops with `LostLease`. (The same with processes, kill -9
//! and SIGSTOP is in `tests/tests/mesh.rs` and `mesh_races.rs`.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;
use interregion_relay::role::Role;
use interregion_relay::{
    Announcement, Listeners, QuicSocket, RelayConfig, RunError, RunningService,
};
use region_state::testing::RedisServer;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(10);

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "relay-lifecycle-{tag}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let regions = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../regions");
        let catalogue = meridian_catalogue::load_dir(&regions).unwrap();
        interregion_relay::certs::generate_dev_mesh(
            catalogue.keys().map(String::as_str),
            &dir.join("certs"),
            false,
        )
        .unwrap();
        Self(dir)
    }

    /// A us-east relay config on `redis`: lease renewed every 100 ms, 400 ms time-to-live.
    fn config(&self, redis: &RedisServer) -> RelayConfig {
        let regions = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../regions");
        let certs = self.0.join("certs");
        let toml = format!(
            "region = \"us-east\"\ncatalogue_dir = {regions:?}\nhttp_listen = \"127.0.0.1:0\"\n\
             [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n\
             [redis]\nurl = {:?}\n[lease]\nrenew_ms = 100\nttl_ms = 400\n",
            certs.join("ca.pem"),
            certs.join("us-east.cert.pem"),
            certs.join("us-east.key.pem"),
            redis.url(),
        );
        RelayConfig::from_figment(Figment::from(Toml::string(&toml))).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start(config: RelayConfig, shutdown: &CancellationToken) -> RunningService {
    let listeners = Listeners {
        quic: QuicSocket::Bound(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()),
        http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    interregion_relay::run(config, listeners, shutdown.clone())
        .await
        .unwrap()
}

async fn next_announcement(relay: &mut RunningService) -> Announcement {
    tokio::time::timeout(LIMIT, relay.announcements.recv())
        .await
        .expect("an announcement in time")
        .expect("the relay is running")
}

/// `GET path` with `Connection: close`: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = client.get(format!("http://{addr}{path}")).send();
    let response = tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .unwrap()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_is_not_ready_and_takes_over_when_the_active_relay_stops() {
    let redis = RedisServer::start().unwrap();
    let scratch = Scratch::new("takeover");
    let stop_a = CancellationToken::new();
    let mut a = start(scratch.config(&redis), &stop_a).await;
    let Announcement::Active { quic_addr, relay } = next_announcement(&mut a).await else {
        panic!("the first relay of the region is active");
    };
    assert_eq!(relay.local_addr().unwrap(), quic_addr);
    assert_eq!(http_get(a.http_addr, "/readyz").await.0, 200);

    let stop_b = CancellationToken::new();
    let mut b = start(scratch.config(&redis), &stop_b).await;
    assert!(matches!(
        next_announcement(&mut b).await,
        Announcement::StandingBy
    ));
    assert_eq!(*b.role.borrow(), Role::Standby);
    let (status, body) = http_get(b.http_addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "standby\n"));
    let (status, metrics) = http_get(b.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("meridian_relay_active 0"), "{metrics}");
    assert!(
        metrics.contains("meridian_relay_link_up{peer=\"eu-central\"} 0"),
        "the standby serves the relay's whole registry: {metrics}"
    );
    let (_, metrics) = http_get(a.http_addr, "/metrics").await;
    assert!(metrics.contains("meridian_relay_active 1"), "{metrics}");

    // A graceful stop releases the lease: the standby takes over within a renewal or two,
    // far sooner than the lease's time-to-live would allow.
    stop_a.cancel();
    tokio::time::timeout(LIMIT, &mut a.done)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(
        next_announcement(&mut b).await,
        Announcement::Active { .. }
    ));
    assert_eq!(*b.role.borrow(), Role::Active);
    assert_eq!(http_get(b.http_addr, "/readyz").await.0, 200);
    stop_b.cancel();
    tokio::time::timeout(LIMIT, b.done)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_relay_that_finds_its_lease_taken_stops() {
    let redis = RedisServer::start().unwrap();
    let scratch = Scratch::new("lost");
    let stop = CancellationToken::new();
    let mut a = start(scratch.config(&redis), &stop).await;
    assert!(matches!(
        next_announcement(&mut a).await,
        Announcement::Active { .. }
    ));
    // Another relay's id in the lease, as after ours expired while this one was frozen.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(region_state::replica::ACTIVE_RELAY_KEY)
        .arg("someone-else")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut c)
        .await
        .unwrap();
    let result = tokio::time::timeout(LIMIT, &mut a.done)
        .await
        .expect("the relay stops by itself")
        .unwrap();
    assert!(matches!(result, Err(RunError::LostLease)), "{result:?}");
    assert_eq!(*a.role.borrow(), Role::LostLease);
    // It did not release what is not its own.
    let holder: String = redis::cmd("GET")
        .arg(region_state::replica::ACTIVE_RELAY_KEY)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(holder, "someone-else");
}
