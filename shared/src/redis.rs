//! The Redis connection pool (deadpool-redis).

pub use deadpool_redis::{Connection, Pool};

use crate::config::RedisConfig;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("configuration key `redis.url`: {0}")]
    Config(#[from] deadpool_redis::CreatePoolError),
    #[error("redis is unreachable: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("redis: {0}")]
    Redis(#[from] deadpool_redis::redis::RedisError),
}

/// Builds a pool and checks that Redis answers.
pub async fn connect(cfg: &RedisConfig) -> Result<Pool, RedisError> {
    let pool = pool(cfg)?;
    ping(&pool).await?;
    Ok(pool)
}

/// Builds a pool without connecting: for a process that must start (and
/// report itself unready) while Redis is down.
pub fn pool(cfg: &RedisConfig) -> Result<Pool, RedisError> {
    let mut pc = deadpool_redis::Config::from_url(cfg.url.clone());
    let mut pool = deadpool_redis::PoolConfig::new(cfg.pool_size);
    let timeout = Some(std::time::Duration::from_millis(cfg.timeout_ms.max(1)));
    pool.timeouts = deadpool_redis::Timeouts {
        wait: timeout,
        create: timeout,
        recycle: timeout,
    };
    pc.pool = Some(pool);
    Ok(pc.create_pool(Some(deadpool_redis::Runtime::Tokio1))?)
}

/// Whether Redis answers a `PING` through `pool` (bounded by the pool's
/// timeouts).
pub async fn ping(pool: &Pool) -> Result<(), RedisError> {
    let mut conn = pool.get().await?;
    let _: String = deadpool_redis::redis::cmd("PING")
        .query_async(&mut conn)
        .await?;
    Ok(())
}
