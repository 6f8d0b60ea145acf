//! The hot tier: one Redis hash per world (`epoch`, `tick`, `data`), written through a
//! Lua script so the fence check and the write are one atomic step, many worlds per
//! pipeline. The connection manager reconnects by itself after Redis comes back.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::{Checkpoint, Store, StoreError, Written, newest_per_world};

/// Checkpoints per pipeline; batches are split into pipelines of this size.
const PIPELINE: usize = 256;
/// Pipelines in flight at once. Enough to keep Redis busy; bounded so that a pipeline
/// never waits behind a whole large batch and hits the response timeout (which would
/// fail the batch, and every retry of it).
const IN_FLIGHT: usize = 4;

/// KEYS[1]: the world's hash. ARGV: epoch, tick, data.
/// Answers {0, stored epoch} when fenced, {1, stored tick} when stale, {2, 0} when written.
/// Epochs and ticks stay below 2^53, so Lua's numbers hold them exactly.
const WRITE: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'tick')
local epoch, tick = tonumber(ARGV[1]), tonumber(ARGV[2])
if cur[1] then
  local e, t = tonumber(cur[1]), tonumber(cur[2])
  if e > epoch then return {0, e} end
  if e == epoch and t > tick then return {1, t} end
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'tick', ARGV[2], 'data', ARGV[3])
return {2, 0}
";

#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    script: Arc<redis::Script>,
    prefix: String,
}

impl RedisStore {
    /// Connects to `url`. Requests fail after 2 s rather than hang while Redis is away;
    /// the manager keeps reconnecting in the background.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self { conn, script: Arc::new(redis::Script::new(WRITE)), prefix: "gaia:ckpt:".into() })
    }

    /// Keys are `{prefix}{world_id}`; `gaia:ckpt:` by default.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    fn key(&self, world_id: &str) -> String {
        format!("{}{world_id}", self.prefix)
    }

    async fn write_chunk(&self, chunk: &[&Arc<Checkpoint>]) -> Result<Vec<Written>, StoreError> {
        let mut pipe = redis::pipe();
        for c in chunk {
            pipe.invoke_script(
                self.script.key(self.key(c.world_id())).arg(c.epoch()).arg(c.tick()).arg(c.bytes().as_ref()),
            );
        }
        let mut conn = self.conn.clone();
        let answers: Vec<(u8, u64)> = match pipe.query_async(&mut conn).await {
            Ok(answers) => answers,
            // Redis restarted and forgot the script: load it and send once more.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.script.prepare_invoke().load_async(&mut conn).await?;
                pipe.query_async(&mut conn).await?
            }
            Err(e) => return Err(e.into()),
        };
        answers
            .into_iter()
            .map(|(code, value)| match code {
                0 => Ok(Written::Fenced { epoch: value }),
                1 => Ok(Written::Stale { tick: value }),
                2 => Ok(Written::Ok),
                other => Err(StoreError::Protocol(format!("write script answered {other}"))),
            })
            .collect()
    }
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn write(&self, batch: &[Arc<Checkpoint>]) -> Result<Vec<Written>, StoreError> {
        let order = newest_per_world(batch);
        let unique: Vec<&Arc<Checkpoint>> = order.iter().map(|&i| &batch[i]).collect();
        // Made up front: a stream mapping borrowed chunks lazily is not provably `Send`.
        let writes: Vec<_> = unique.chunks(PIPELINE).map(|c| self.write_chunk(c)).collect();
        let chunks: Vec<Vec<Written>> = futures_util::stream::iter(writes).buffered(IN_FLIGHT).try_collect().await?;
        let answers: Vec<Written> = chunks.into_iter().flatten().collect();
        Ok(crate::spread(batch, &order, &answers))
    }

    async fn read(&self, world_id: &str) -> Result<Option<Bytes>, StoreError> {
        let mut conn = self.conn.clone();
        let data: Option<Vec<u8>> =
            redis::cmd("HGET").arg(self.key(world_id)).arg("data").query_async(&mut conn).await?;
        Ok(data.map(Bytes::from))
    }

    async fn delete(&self, world_id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL").arg(self.key(world_id)).query_async(&mut conn).await?;
        Ok(())
    }
}
