//! A named lease in Redis: one holder at a time, taken when free, renewed by its holder within
//! its TTL, given up on a graceful stop. The region's active relay and the webhook delivery
//! workers (one node per endpoint partition) both use it.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::Script;

const HOLD_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"#;

const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#;

/// The lease scripts, hashed once and shared by clones.
#[derive(Debug, Clone)]
pub struct LeaseScripts {
    hold: Arc<Script>,
    release: Arc<Script>,
}

impl Default for LeaseScripts {
    fn default() -> Self {
        Self {
            hold: Arc::new(Script::new(HOLD_LUA)),
            release: Arc::new(Script::new(RELEASE_LUA)),
        }
    }
}

impl LeaseScripts {
    /// Takes the lease `key` for `holder`, or extends it when `holder` has it; false while
    /// someone else holds it.
    pub async fn hold<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> redis::RedisResult<bool> {
        let held: i64 = self
            .hold
            .key(key)
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(conn)
            .await?;
        Ok(held == 1)
    }

    /// Gives the lease up if `holder` has it, so the next holder takes over at once.
    pub async fn release<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        key: &str,
        holder: &str,
    ) -> redis::RedisResult<()> {
        let _: i64 = self.release.key(key).arg(holder).invoke_async(conn).await?;
        Ok(())
    }
}
