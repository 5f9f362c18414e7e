//! Rate limits shared by every replica: the same generic cell rate
//! algorithm as the in-memory limiter (a burst of `burst` requests, one more
//! every `1 / requests_per_second`), kept in Redis as one theoretical
//! arrival time per key and advanced by a Lua script, so that the check and
//! the update are one atomic step, timed by the server's clock (replicas'
//! clocks may disagree; the server's is one).

use std::sync::LazyLock;
use std::time::Duration;

use super::RedisStore;
use crate::config::RateLimitConfig;
use crate::store::StoreError;

/// `KEYS[1]`: the key's theoretical arrival time, in microseconds of the
/// server's clock. `ARGV[1]`: the emission interval in microseconds;
/// `ARGV[2]`: the burst. Returns `{allowed, remaining, wait_us}`.
static GCRA: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local tolerance = interval * (burst - 1)
local wait = tat - now - tolerance
if wait > 0 then
  return {0, 0, wait}
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
return {1, math.floor((now + tolerance - tat) / interval), 0}
",
    )
});

/// One request taken from a shared limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateTaken {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// Requests left right now.
    pub remaining: u32,
    /// When refused, the time until one request is admitted.
    pub wait: Duration,
}

impl RedisStore {
    /// Takes one request from `key`'s limit, shared with every replica.
    pub fn take_rate(&self, key: &str, rate: RateLimitConfig) -> Result<RateTaken, StoreError> {
        let interval_us = 1_000_000 / u64::from(rate.requests_per_second.max(1));
        let redis_key = self.keys().rate(key);
        self.with_connection("take rate", |con| {
            let (allowed, remaining, wait_us): (i64, i64, i64) = GCRA
                .key(&redis_key)
                .arg(interval_us.max(1))
                .arg(rate.burst.max(1))
                .invoke(con)?;
            Ok(RateTaken {
                allowed: allowed == 1,
                remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
                wait: Duration::from_micros(u64::try_from(wait_us.max(0)).unwrap_or(0)),
            })
        })
    }
}
