//! Tweet counters in Redis or Valkey (same protocol, same code).
//!
//! [`CounterStore::count_batch`] counts a batch of records in ONE round trip
//! (a Lua script, atomic on the server) and counts each tweet id at most once:
//! the script sets a `seen` marker with `SET NX EX` and increments the
//! counters only when the marker was new. Consumers can therefore retry a
//! batch, or receive a broker redelivery, without counting anything twice.
//! The key schema is [`KeySchema`]; ARCHITECTURE.md documents it.

use std::{collections::BTreeMap, time::Duration};

use clima_proto::v1::{TweetRecord, Weather};
use clima_tweet::{received_minute, weather_name};
use redis::{AsyncCommands, Script, aio::ConnectionManager};
use serde::Serialize;

/// The names of every key clima writes under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchema {
    prefix: String,
}

impl KeySchema {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }
    /// String: all tweets counted.
    pub fn total(&self) -> String {
        format!("{}:total", self.prefix)
    }
    /// Hash: country code → count.
    pub fn by_country(&self) -> String {
        format!("{}:country", self.prefix)
    }
    /// Hash: weather name → count.
    pub fn by_weather(&self) -> String {
        format!("{}:weather", self.prefix)
    }
    /// Hash: `COUNTRY:Weather` → count.
    pub fn by_country_weather(&self) -> String {
        format!("{}:country_weather", self.prefix)
    }
    /// String: tweets received in that minute (minutes since the Unix epoch);
    /// expires after the minute retention.
    pub fn minute(&self, minute: i64) -> String {
        format!("{}{minute}", self.minute_prefix())
    }
    /// String marker: this tweet id was counted; expires after the dedupe window.
    pub fn seen(&self, tweet_id: &str) -> String {
        format!("{}{tweet_id}", self.seen_prefix())
    }
    fn minute_prefix(&self) -> String {
        format!("{}:minute:", self.prefix)
    }
    fn seen_prefix(&self) -> String {
        format!("{}:seen:", self.prefix)
    }
}

/// How long markers and per-minute counters live.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// How long a counted tweet id is remembered: a redelivery or retry of the
    /// same id later than this would be counted again.
    pub dedupe_window: Duration,
    /// How long per-minute counters are kept.
    pub minutes: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self { dedupe_window: Duration::from_secs(24 * 3600), minutes: Duration::from_secs(7 * 24 * 3600) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },
}

/// Counts and reads tweets in one Redis or Valkey database.
#[derive(Clone)]
pub struct CounterStore {
    url: String,
    /// "redis" or "valkey", as the server says (for span attributes).
    system: &'static str,
    connection: ConnectionManager,
    keys: KeySchema,
    retention: Retention,
    count_script: Script,
}

/// Atomic, idempotent batch count. KEYS: total, country, weather,
/// country_weather. ARGV: seen prefix, minute prefix, dedupe TTL s, minute
/// TTL s, then (id, country, weather, minute) per record. Returns how many
/// records were new.
const COUNT_BATCH_LUA: &str = r#"
local seen_prefix, minute_prefix = ARGV[1], ARGV[2]
local dedupe_ttl, minute_ttl = ARGV[3], ARGV[4]
local counted = 0
-- Only the dedupe marker is per tweet; the counters of the new tweets are
-- summed here and written once per distinct field.
local by_country, by_weather, by_pair, by_minute = {}, {}, {}, {}
for i = 5, #ARGV, 4 do
  local id, country, weather, minute = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if redis.call('SET', seen_prefix .. id, '1', 'NX', 'EX', dedupe_ttl) then
    counted = counted + 1
    by_country[country] = (by_country[country] or 0) + 1
    by_weather[weather] = (by_weather[weather] or 0) + 1
    local pair = country .. ':' .. weather
    by_pair[pair] = (by_pair[pair] or 0) + 1
    by_minute[minute] = (by_minute[minute] or 0) + 1
  end
end
if counted > 0 then
  redis.call('INCRBY', KEYS[1], counted)
  for field, n in pairs(by_country) do redis.call('HINCRBY', KEYS[2], field, n) end
  for field, n in pairs(by_weather) do redis.call('HINCRBY', KEYS[3], field, n) end
  for field, n in pairs(by_pair) do redis.call('HINCRBY', KEYS[4], field, n) end
  for minute, n in pairs(by_minute) do
    local minute_key = minute_prefix .. minute
    if redis.call('INCRBY', minute_key, n) == n then
      redis.call('EXPIRE', minute_key, minute_ttl)
    end
  end
end
return counted
"#;

impl CounterStore {
    /// Connects (once; later drops are reconnected transparently). `rediss://`
    /// URLs use TLS, verified against the system's roots.
    pub async fn connect(url: &str, keys: KeySchema, retention: Retention) -> Result<Self, StoreError> {
        Self::connect_with_ca(url, keys, retention, None).await
    }

    /// As [`CounterStore::connect`], verifying a `rediss://` server against
    /// `ca_pem` (a PEM CA certificate) instead of the system's roots.
    pub async fn connect_with_ca(
        url: &str,
        keys: KeySchema,
        retention: Retention,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<Self, StoreError> {
        let redis_error = |source| StoreError::Redis { url: redact(url), source };
        let client = match ca_pem {
            Some(ca) => {
                let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(ca) };
                redis::Client::build_with_tls(url, certificates)
            }
            None => redis::Client::open(url),
        }
        .map_err(redis_error)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let mut connection = ConnectionManager::new_with_config(client, config).await.map_err(redis_error)?;
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut connection).await.map_err(redis_error)?;
        let system = if info.contains("valkey_version") { "valkey" } else { "redis" };
        Ok(Self { url: redact(url), system, connection, keys, retention, count_script: Script::new(COUNT_BATCH_LUA) })
    }

    /// `redis` or `valkey`: which server this is.
    pub fn system(&self) -> &'static str {
        self.system
    }

    pub fn keys(&self) -> &KeySchema {
        &self.keys
    }

    /// Counts every record whose id was not counted before; returns how many
    /// were new. Safe to call again with the same records after an error.
    pub async fn count_batch(&self, records: &[TweetRecord]) -> Result<u64, StoreError> {
        if records.is_empty() {
            return Ok(0);
        }
        let mut invocation = self.count_script.prepare_invoke();
        invocation
            .key(self.keys.total())
            .key(self.keys.by_country())
            .key(self.keys.by_weather())
            .key(self.keys.by_country_weather())
            .arg(self.keys.seen_prefix())
            .arg(self.keys.minute_prefix())
            .arg(self.retention.dedupe_window.as_secs().max(1))
            .arg(self.retention.minutes.as_secs().max(1));
        for record in records {
            let tweet = record.tweet.as_ref();
            let weather = tweet.map_or(Weather::Unspecified, |t| t.weather());
            invocation
                .arg(&record.id)
                .arg(tweet.map_or("", |t| t.country.as_str()))
                .arg(weather_name(weather))
                .arg(received_minute(record));
        }
        let mut connection = self.connection.clone();
        invocation.invoke_async(&mut connection).await.map_err(|source| self.error(source))
    }

    /// Reads every counter, with the per-minute counts of the last
    /// `recent_minutes` (at least 1) minutes, oldest first, zeros included.
    pub async fn read_counts(&self, recent_minutes: usize) -> Result<Counts, StoreError> {
        let now_minute =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| (d.as_secs() / 60) as i64);
        // MGET needs at least one key.
        let minutes: Vec<i64> = (0..recent_minutes.max(1) as i64).rev().map(|ago| now_minute - ago).collect();
        let minute_keys: Vec<String> = minutes.iter().map(|m| self.keys.minute(*m)).collect();

        let mut connection = self.connection.clone();
        let (total, by_country, by_weather, by_country_weather, recent): Reply = redis::pipe()
            .get(self.keys.total())
            .hgetall(self.keys.by_country())
            .hgetall(self.keys.by_weather())
            .hgetall(self.keys.by_country_weather())
            .mget(&minute_keys)
            .query_async(&mut connection)
            .await
            .map_err(|e| self.error(e))?;
        Ok(Counts {
            total: total.unwrap_or(0),
            by_country,
            by_weather,
            by_country_weather,
            per_minute: minutes.into_iter().zip(recent.into_iter().map(Option::unwrap_or_default)).collect(),
        })
    }

    /// The total counter alone: one GET, cheap enough to poll often.
    pub async fn read_total(&self) -> Result<u64, StoreError> {
        let mut connection = self.connection.clone();
        let total: Option<u64> = connection.get(self.keys.total()).await.map_err(|e| self.error(e))?;
        Ok(total.unwrap_or(0))
    }

    /// Whether the store answers (for readiness checks).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let _: String = connection.ping().await.map_err(|e| self.error(e))?;
        Ok(())
    }

    fn error(&self, source: redis::RedisError) -> StoreError {
        StoreError::Redis { url: self.url.clone(), source }
    }
}

/// The URL without its password, for errors and logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => format!("{}://***@{}", &url[..scheme_end], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

type Reply = (Option<u64>, BTreeMap<String, u64>, BTreeMap<String, u64>, BTreeMap<String, u64>, Vec<Option<u64>>);

/// Every counter of one store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub total: u64,
    pub by_country: BTreeMap<String, u64>,
    pub by_weather: BTreeMap<String, u64>,
    /// Keyed `COUNTRY:Weather`.
    pub by_country_weather: BTreeMap<String, u64>,
    /// (minute since the Unix epoch, tweets received in it), oldest first.
    pub per_minute: Vec<(i64, u64)>,
}

impl Counts {
    /// Adds one tweet, as the store would count it (for expected tallies).
    pub fn add(&mut self, country: &str, weather: &str) {
        self.total += 1;
        *self.by_country.entry(country.to_owned()).or_default() += 1;
        *self.by_weather.entry(weather.to_owned()).or_default() += 1;
        *self.by_country_weather.entry(format!("{country}:{weather}")).or_default() += 1;
    }

    /// Adds every counter of `other` (per-minute counts are not merged).
    pub fn merge(&mut self, other: &Counts) {
        self.total += other.total;
        for (mine, theirs) in [
            (&mut self.by_country, &other.by_country),
            (&mut self.by_weather, &other.by_weather),
            (&mut self.by_country_weather, &other.by_country_weather),
        ] {
            for (key, count) in theirs {
                *mine.entry(key.clone()).or_default() += count;
            }
        }
    }

    /// What was counted after `earlier` was read (per-minute counts excluded;
    /// zero entries dropped).
    pub fn since(&self, earlier: &Counts) -> Counts {
        let minus = |now: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>| {
            now.iter()
                .map(|(key, count)| (key.clone(), count.saturating_sub(before.get(key).copied().unwrap_or(0))))
                .filter(|(_, count)| *count > 0)
                .collect()
        };
        Counts {
            total: self.total.saturating_sub(earlier.total),
            by_country: minus(&self.by_country, &earlier.by_country),
            by_weather: minus(&self.by_weather, &earlier.by_weather),
            by_country_weather: minus(&self.by_country_weather, &earlier.by_country_weather),
            per_minute: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
