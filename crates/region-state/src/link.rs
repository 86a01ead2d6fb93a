//! The store's link to the region's Redis *primary*, standalone or behind Sentinel.
//!
//! redis-rs's `ConnectionManager` reconnects to the address it was built with, which after a
//! Sentinel failover is a dead (or demoted) server. [`PrimaryLink`] instead resolves the primary
//! on every reconnect: a standalone endpoint is its URL; a Sentinel endpoint asks the sentinels
//! (`SENTINEL get-master-addr-by-name`, then `ROLE` on the answer, so a demoted server is never
//! taken for the primary). Calls go through [`LinkConn`], a [`ConnectionLike`] that pins one
//! multiplexed connection for its lifetime (so a `WAIT` lands on the connection that made the
//! write) and drops that connection from the link when it fails in a way only a new connection
//! can fix (I/O, timeout, `READONLY`, `MASTERDOWN`, `LOADING`). Nothing is retried behind the
//! caller's back: a command that may have run is reported as an error, and callers retry
//! (publish with its idempotency key). Reconnects are serialised and rate-limited, so a
//! thousand sessions failing at once make one attempt, not a thousand.
//!
//! Every successful reconnect bumps a generation, published on a `watch` channel: the pub/sub
//! task follows it so that subscriptions always live on the server the commands go to.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, RedisError, RedisFuture, RedisResult,
    ServerErrorKind, Value,
};
use tokio::sync::{watch, Mutex};

/// A Sentinel-managed primary.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelEndpoint {
    /// Sentinel addresses, `redis://host:port` (`rediss://` for TLS to the sentinels; put
    /// sentinel credentials in the URL: `redis://user:pass@host:port`).
    pub sentinels: Vec<String>,
    /// The monitored master's name (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// Database number on the data nodes.
    pub db: i64,
    /// ACL user for the data nodes (primary and replicas).
    pub username: Option<String>,
    /// Password for the data nodes.
    pub password: Option<String>,
    /// TLS to the data nodes (system roots).
    pub tls: bool,
}

impl std::fmt::Debug for SentinelEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelEndpoint")
            .field("sentinels", &self.sentinels.len())
            .field("master_name", &self.master_name)
            .field("db", &self.db)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Where the region's primary is.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisEndpoint {
    /// One server: `redis://host:port/db` or `rediss://` for TLS.
    Standalone(String),
    /// Discovered (and re-discovered after a failover) through Sentinel.
    Sentinel(SentinelEndpoint),
}

impl std::fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Never print a password from the URL's userinfo.
            Self::Standalone(url) => {
                let shown = match (url.find("://"), url.rfind('@')) {
                    (Some(scheme), Some(at)) if at > scheme => {
                        format!("{}://***@{}", &url[..scheme], &url[at + 1..])
                    }
                    _ => url.clone(),
                };
                f.debug_tuple("Standalone").field(&shown).finish()
            }
            Self::Sentinel(s) => f.debug_tuple("Sentinel").field(s).finish(),
        }
    }
}

impl RedisEndpoint {
    /// A standalone endpoint.
    pub fn url(url: impl Into<String>) -> Self {
        Self::Standalone(url.into())
    }
}

/// Connect/response timeouts for data connections and for sentinel queries.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed reconnect, callers fail fast for this long instead of dialling again;
/// doubles per consecutive failure up to `MAX_RETRY_GAP`.
const MIN_RETRY_GAP: Duration = Duration::from_millis(50);
const MAX_RETRY_GAP: Duration = Duration::from_millis(500);

/// Resolves the current primary.
pub(crate) struct Resolver {
    endpoint: RedisEndpoint,
    sentinel: Option<Mutex<Sentinel>>,
    node_info: SentinelNodeConnectionInfo,
}

impl Resolver {
    /// Whether the primary is found through Sentinel (and can move under us).
    pub(crate) fn is_sentinel(&self) -> bool {
        matches!(self.endpoint, RedisEndpoint::Sentinel(_))
    }

    pub(crate) fn new(endpoint: RedisEndpoint) -> RedisResult<Self> {
        let (sentinel, node_info) = match &endpoint {
            RedisEndpoint::Standalone(url) => {
                // Parse now, so a bad URL fails at start-up.
                Client::open(url.as_str())?;
                (None, SentinelNodeConnectionInfo::default())
            }
            RedisEndpoint::Sentinel(s) => {
                let sentinel = Sentinel::build(s.sentinels.iter().map(String::as_str).collect())?;
                let mut redis_info = redis::RedisConnectionInfo::default().set_db(s.db);
                if let Some(user) = &s.username {
                    redis_info = redis_info.set_username(user);
                }
                if let Some(password) = &s.password {
                    redis_info = redis_info.set_password(password);
                }
                let mut info =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(redis_info);
                if s.tls {
                    info = info.set_tls_mode(redis::TlsMode::Secure);
                }
                (Some(Mutex::new(sentinel)), info)
            }
        };
        Ok(Self {
            endpoint,
            sentinel,
            node_info,
        })
    }

    /// A client for the primary as of now.
    pub(crate) async fn primary(&self) -> RedisResult<Client> {
        let s = match &self.endpoint {
            RedisEndpoint::Standalone(url) => return Client::open(url.as_str()),
            RedisEndpoint::Sentinel(s) => s,
        };
        let Some(sentinel) = &self.sentinel else {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "sentinel endpoint without sentinels",
            )));
        };
        let lookup = async {
            let mut sentinel = sentinel.lock().await;
            sentinel
                .async_master_for(&s.master_name, Some(&self.node_info))
                .await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, lookup).await {
            Ok(r) => r,
            Err(_) => Err(timeout_error("sentinel lookup timed out")),
        }
    }
}

fn timeout_error(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// Whether an error means this connection (or this server) cannot serve us any more.
pub(crate) fn needs_new_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly)
                | ErrorKind::Server(ServerErrorKind::MasterDown)
                | ErrorKind::Server(ServerErrorKind::BusyLoading)
        )
}

/// Dialling state, behind an async lock so that one caller dials while the others wait.
struct Dial {
    generation: u64,
    last_failure: Option<(Instant, Duration, String)>,
}

/// The command link to the primary: one multiplexed connection at a time, replaced on failure.
pub(crate) struct PrimaryLink {
    resolver: Arc<Resolver>,
    /// The live connection; a plain lock, never held across an await.
    live: std::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Held while dialling (across the dial's awaits, on purpose: it serialises reconnects).
    dial: Mutex<Dial>,
    /// `(generation, primary address)` after every successful (re)connect.
    changes: watch::Sender<(u64, String)>,
    label: &'static str,
    response_timeout: Duration,
}

impl PrimaryLink {
    /// Connects once (start-up fails if the primary cannot be reached).
    pub(crate) async fn connect(
        resolver: Arc<Resolver>,
        label: &'static str,
        response_timeout: Duration,
    ) -> RedisResult<Self> {
        let (changes, _) = watch::channel((0, String::new()));
        let link = Self {
            resolver,
            live: std::sync::Mutex::new(None),
            dial: Mutex::new(Dial {
                generation: 0,
                last_failure: None,
            }),
            changes,
            label,
            response_timeout,
        };
        link.get().await?;
        Ok(link)
    }

    /// Follows reconnects: `(generation, address)`.
    pub(crate) fn watch(&self) -> watch::Receiver<(u64, String)> {
        self.changes.subscribe()
    }

    fn live(&self) -> Option<(u64, MultiplexedConnection)> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current connection, dialling the primary if there is none.
    async fn get(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(live) = self.live() {
            return Ok(live);
        }
        let mut dial = self.dial.lock().await;
        // Someone else may have dialled while we waited.
        if let Some(live) = self.live() {
            return Ok(live);
        }
        if let Some((at, gap, error)) = &dial.last_failure {
            if at.elapsed() < *gap {
                return Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    format!("no connection to the redis primary (last attempt: {error})"),
                )));
            }
        }
        let attempt = async {
            let client = self.resolver.primary().await?;
            let address = client.get_connection_info().addr().to_string();
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(self.response_timeout));
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            Ok::<_, RedisError>((address, conn))
        };
        match attempt.await {
            Ok((address, conn)) => {
                dial.generation += 1;
                let generation = dial.generation;
                if dial.last_failure.take().is_some() || generation > 1 {
                    tracing::info!(link = self.label, %address, generation, "connected to the redis primary");
                }
                *self.live.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((generation, conn.clone()));
                self.changes.send_replace((generation, address));
                Ok((generation, conn))
            }
            Err(e) => {
                let gap = dial
                    .last_failure
                    .as_ref()
                    .map_or(MIN_RETRY_GAP, |(_, g, _)| (*g * 2).min(MAX_RETRY_GAP));
                dial.last_failure = Some((Instant::now(), gap, e.to_string()));
                Err(e)
            }
        }
    }

    /// The address of the live connection, if there is one.
    pub(crate) fn live_address(&self) -> Option<String> {
        self.live()?;
        Some(self.changes.borrow().1.clone())
    }

    /// Drops the live connection (the primary has moved): the next call dials the new one.
    pub(crate) fn abandon(&self, why: &str) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.take().is_some() {
            tracing::warn!(link = self.label, why, "leaving the redis server");
        }
    }

    /// Drops the connection of `generation` after an error that only a new connection fixes.
    fn invalidate(&self, generation: u64, error: &RedisError) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.as_ref().is_some_and(|(g, _)| *g == generation) {
            tracing::warn!(link = self.label, %error, "redis connection lost; will resolve the primary again");
            *live = None;
        }
    }
}

/// A [`ConnectionLike`] over a [`PrimaryLink`]: pins one connection on first use.
pub(crate) struct LinkConn {
    link: Arc<PrimaryLink>,
    pinned: Option<(u64, MultiplexedConnection)>,
}

impl LinkConn {
    pub(crate) fn new(link: Arc<PrimaryLink>) -> Self {
        Self { link, pinned: None }
    }

    async fn pinned(&mut self) -> RedisResult<&mut MultiplexedConnection> {
        if self.pinned.is_none() {
            self.pinned = Some(self.link.get().await?);
        }
        match &mut self.pinned {
            Some((_, conn)) => Ok(conn),
            None => Err(timeout_error("no connection")),
        }
    }

    fn observe<T>(&mut self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            if needs_new_connection(e) {
                if let Some((generation, _)) = self.pinned.take() {
                    self.link.invalidate(generation, e);
                }
            }
        }
        result
    }
}

impl ConnectionLike for LinkConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = match self.pinned().await {
                Ok(conn) => conn.req_packed_command(cmd).await,
                Err(e) => Err(e),
            };
            self.observe(result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = match self.pinned().await {
                Ok(conn) => conn.req_packed_commands(pipeline, offset, count).await,
                Err(e) => Err(e),
            };
            self.observe(result)
        })
    }

    fn get_db(&self) -> i64 {
        self.pinned.as_ref().map_or(0, |(_, c)| c.get_db())
    }
}

/// With Sentinel: every `every`, asks the sentinels where the primary is and leaves a server
/// that is no longer it. A planned failover (`SENTINEL FAILOVER`) or a partition can leave the
/// old primary up and accepting writes for a while (Sentinel demotes it on its next check, up to
/// 10 s later); without this the node would keep writing there, and those writes would be lost
/// when it is demoted. Ends when the links are dropped.
pub(crate) async fn follow_primary(
    resolver: Arc<Resolver>,
    links: Vec<std::sync::Weak<PrimaryLink>>,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let alive: Vec<Arc<PrimaryLink>> = links.iter().filter_map(|l| l.upgrade()).collect();
        if alive.is_empty() {
            return;
        }
        let Ok(client) = resolver.primary().await else {
            // No answer (no primary, or no sentinel): the links find out by themselves.
            continue;
        };
        let primary = client.get_connection_info().addr().to_string();
        for link in alive {
            if link.live_address().is_some_and(|a| a != primary) {
                link.abandon("sentinel names another primary");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_level_errors_replace_the_connection() {
        let reset = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert!(needs_new_connection(&reset));
        let timeout = timeout_error("slow");
        assert!(needs_new_connection(&timeout));
        let readonly = RedisError::from((ErrorKind::Server(ServerErrorKind::ReadOnly), "READONLY"));
        assert!(needs_new_connection(&readonly), "we reached a replica");
        let noscript = RedisError::from((ErrorKind::Server(ServerErrorKind::NoScript), "NOSCRIPT"));
        assert!(!needs_new_connection(&noscript));
        let wrong_type = RedisError::from((ErrorKind::UnexpectedReturnType, "type"));
        assert!(!needs_new_connection(&wrong_type));
    }

    #[tokio::test]
    async fn unreachable_sentinels_fail_fast_and_the_link_backs_off() {
        let port = crate::testing::free_port().unwrap();
        let resolver = Arc::new(
            Resolver::new(RedisEndpoint::Sentinel(SentinelEndpoint {
                sentinels: vec![format!("redis://127.0.0.1:{port}")],
                master_name: "nobody".into(),
                db: 0,
                username: None,
                password: Some("secret".into()),
                tls: false,
            }))
            .unwrap(),
        );
        let started = Instant::now();
        assert!(resolver.primary().await.is_err());
        assert!(started.elapsed() < Duration::from_secs(3));
        let err = PrimaryLink::connect(resolver, "test", Duration::from_secs(1))
            .await
            .err()
            .unwrap();
        assert!(
            needs_new_connection(&err) || err.kind() == ErrorKind::Io,
            "{err}"
        );
    }

    #[test]
    fn endpoint_debug_hides_credentials() {
        let e = SentinelEndpoint {
            sentinels: vec!["redis://u:topsecret@h:1".into()],
            master_name: "m".into(),
            db: 0,
            username: Some("u".into()),
            password: Some("topsecret".into()),
            tls: true,
        };
        assert!(!format!("{e:?}").contains("topsecret"));
        let url = RedisEndpoint::url("rediss://user:topsecret@redis.internal:6380/0");
        let shown = format!("{url:?}");
        assert!(
            !shown.contains("topsecret") && shown.contains("redis.internal:6380"),
            "{shown}"
        );
    }
}
