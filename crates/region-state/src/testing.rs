//! Test support: a real `redis-server` on a free loopback port, killed on drop.
//!
//! Used by this crate's conformance tests and by the end-to-end tests in `tests/`; compiled only
//! with the `test-support` feature (and in this crate's own unit tests).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on `127.0.0.1:<port>`, without persistence.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// Errors starting a test Redis.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisServerError {
    /// `redis-server` could not be started (is it installed?).
    #[error("cannot start redis-server (install it: apt-get install -y redis-server): {0}")]
    Spawn(std::io::Error),
    /// The server did not answer PING in time.
    #[error("redis-server on port {0} did not become ready")]
    NotReady(u16),
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisServer {
    /// Starts a server and waits until it answers PING (at most 10 s).
    pub fn start() -> Result<Self, RedisServerError> {
        Self::start_with_args(&[])
    }

    /// Starts a server with extra `redis-server` arguments.
    pub fn start_with_args(extra: &[&str]) -> Result<Self, RedisServerError> {
        // A port that was free a moment ago may be taken by the time redis-server binds it
        // (other tests start servers too): then ours exits and the PING reached someone
        // else's. Check that the server answering is ours, and retry on a new port.
        let mut last = None;
        for _ in 0..5 {
            match Self::start_once(extra) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(RedisServerError::NotReady(0)))
    }

    fn start_once(extra: &[&str]) -> Result<Self, RedisServerError> {
        let port = free_port().map_err(RedisServerError::Spawn)?;
        let dir =
            std::env::temp_dir().join(format!("meridian-redis-{port}-{}", crate::random_token(6)));
        std::fs::create_dir_all(&dir).map_err(RedisServerError::Spawn)?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(RedisServerError::Spawn)?;
        let server = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(client) = redis::Client::open(server.url().as_str()) {
                if let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200))
                {
                    let dir: Result<Vec<String>, _> =
                        redis::cmd("CONFIG").arg("GET").arg("dir").query(&mut conn);
                    if let Ok(reply) = dir {
                        let canon = |p: &std::path::Path| std::fs::canonicalize(p).ok();
                        let ours = reply
                            .get(1)
                            .is_some_and(|d| canon(std::path::Path::new(d)) == canon(&server.dir));
                        if !ours {
                            return Err(RedisServerError::NotReady(port));
                        }
                        return Ok(server);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(RedisServerError::NotReady(port))
    }

    /// The server's process id (to pause it with SIGSTOP in outage tests).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
