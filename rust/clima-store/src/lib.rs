//! Tweet counters in Redis or Valkey (same protocol, same code).
//!
//! [`CounterStore::count_batch`] counts a batch of records in ONE round trip
//! (a Lua script, atomic on the server) and counts each tweet at most once:
//! Kafka messages by their offsets ([`CounterStore::count_log_batch`]),
//! RabbitMQ redeliveries by an unacked-message journal
//! ([`CounterStore::count_delivered`]), and every tweet id by a dedupe marker
//! for a window (a client's retry). Consumers can therefore retry a batch, or
//! receive a broker redelivery or replay, without counting anything twice.
//! The key schema is [`KeySchema`]; ARCHITECTURE.md documents it.

use std::{collections::BTreeMap, time::Duration};

use clima_proto::v1::{TweetRecord, Weather};
pub use clima_telemetry::events::Store;
use clima_tweet::{received_minute, weather_name};
use redis::{AsyncCommands, Script, aio::ConnectionManager};
use serde::Serialize;

/// The names of every key clima writes under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchema {
    prefix: String,
}

impl KeySchema {
    /// The keys under `prefix` (`--key-prefix`, `clima` by default).
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
    /// Hash of dedupe markers: the binary ids (16 bytes) of the tweets counted
    /// in one generation (a dedupe window long) whose ids end in `bucket` (4
    /// hex digits). Small hashes are listpacks, ~26 bytes a marker where one
    /// key per id took ~140; expires two windows after its generation began.
    pub fn seen(&self, generation: u64, bucket: &str) -> String {
        format!("{}{generation}:{bucket}", self.seen_prefix())
    }
    /// String: this broker message (by its message id) was counted and not
    /// yet acknowledged; deleted after the ack. What makes a RabbitMQ
    /// redelivery count nothing, however late it comes.
    pub fn counted_message(&self, message_id: &str) -> String {
        format!("{}{message_id}", self.counted_message_prefix())
    }
    fn counted_message_prefix(&self) -> String {
        format!("{}:unacked-message:", self.prefix)
    }
    /// Hash: partition → the next offset of that Kafka topic's partition not
    /// counted yet. Written by the same script as the counters, so a message
    /// below it is never counted again, whatever the consumer group's offsets say.
    pub fn log_positions(&self, topic: &str) -> String {
        format!("{}:kafka-next-offset:{topic}", self.prefix)
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
    /// How long a counted tweet id is surely remembered (and at most twice
    /// that): a client's retry of the same tweet later than this may be
    /// counted again. Kafka replays and RabbitMQ redeliveries do not depend on
    /// it (next offsets and the unacked-message journal cover them).
    pub dedupe_window: Duration,
    /// How long per-minute counters are kept.
    pub minutes: Duration,
}

/// Default dedupe window: client retries come seconds to minutes after the
/// first attempt, and at 20,000 tweets/s the markers of two windows of 3 min
/// take ~190 MB (ARCHITECTURE.md, "What deduplication costs").
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(3 * 60);

/// How long a counted, unacknowledged message is remembered; a redelivery
/// comes when its consumer's connection closes, so this only bounds leaks.
const UNACKED_MESSAGE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for Retention {
    fn default() -> Self {
        Self { dedupe_window: DEFAULT_DEDUPE_WINDOW, minutes: Duration::from_secs(7 * 24 * 3600) }
    }
}

/// Why the store could not count or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A record whose id is not a UUID (the writer checks, so a bug or a forged message).
    #[error("record id {0:?} is not a UUID")]
    InvalidId(String),
    /// A server older than the count script needs.
    #[error("store {url} runs {server}; the count script needs Redis or Valkey 7.0 or later")]
    TooOld {
        /// The store, without its password.
        url: String,
        /// The server and version it reported.
        server: String,
    },
    /// The server refused or could not be reached.
    #[error("store {url}: {source}")]
    Redis {
        /// The store, without its password.
        url: String,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
}

/// Counts and reads tweets in one Redis or Valkey database.
#[derive(Clone)]
pub struct CounterStore {
    url: String,
    /// Redis or Valkey, as the server says (for span attributes and metric labels).
    system: Store,
    connection: ConnectionManager,
    keys: KeySchema,
    retention: Retention,
    count_script: Script,
}

/// Atomic, idempotent batch count. KEYS: total, country, weather,
/// country_weather, and for records read from a Kafka topic its
/// [`KeySchema::log_positions`] hash. ARGV: seen prefix, minute prefix, dedupe
/// window s, minute TTL s, unacked-message prefix, its TTL s, then per broker
/// message: partition, offset (-1: not from a log), message id (or ""), record
/// count, and per record (16-byte binary id, country, weather, minute).
/// Returns how many records were new.
///
/// A message is skipped whole when it was counted before: from a log, when its
/// offset is below its partition's stored next offset (a redelivery, a renamed
/// group, a reset offset); with a message id, when that id is in the
/// unacked-message journal (a redelivery after a crash between count and
/// ack). Otherwise each record counts unless its id is among the dedupe
/// markers of this generation or the last (a client's retry).
///
/// Redis does not roll a script back: a command that fails halfway (a
/// counter key of the wrong type, WRONGTYPE) would leave the batch's dedupe
/// markers set and its counters unwritten, so a retry would skip those tweets
/// for good. Every counter key's type is therefore checked before the first
/// write, and a wrong one fails the batch with nothing written. (When Redis is
/// out of memory under `noeviction`, the first write fails, so nothing is
/// written either.) The marker hashes are clima's alone and not checked.
const COUNT_BATCH_LUA: &str = r#"
local seen_prefix, minute_prefix = ARGV[1], ARGV[2]
local window, minute_ttl = tonumber(ARGV[3]), ARGV[4]
local unacked_prefix, unacked_ttl = ARGV[5], ARGV[6]
local log_positions = KEYS[5]
local expected = {{KEYS[1], 'string'}, {KEYS[2], 'hash'}, {KEYS[3], 'hash'}, {KEYS[4], 'hash'}}
if log_positions then expected[#expected + 1] = {log_positions, 'hash'} end
-- Read-only pass: the messages to take, and the minute keys they touch.
local messages, minutes_seen = {}, {}
local i = 7
while i <= #ARGV do
  local partition, offset, message_id, n = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  local first = i + 4
  i = first + 4 * n
  local take = true
  if log_positions and offset >= 0 then
    take = offset >= tonumber(redis.call('HGET', log_positions, partition) or -1)
  end
  if take and message_id ~= '' then
    take = redis.call('EXISTS', unacked_prefix .. message_id) == 0
  end
  if take then
    messages[#messages + 1] = {partition, offset, message_id, first, i - 1}
    for m = first + 3, i - 1, 4 do
      if not minutes_seen[ARGV[m]] then
        minutes_seen[ARGV[m]] = true
        expected[#expected + 1] = {minute_prefix .. ARGV[m], 'string'}
      end
    end
  end
end
for _, key_type in ipairs(expected) do
  local found = redis.call('TYPE', key_type[1])['ok']
  if found ~= 'none' and found ~= key_type[2] then
    return redis.error_reply('WRONGTYPE ' .. key_type[1] .. ' holds a ' .. found .. ', not a ' .. key_type[2] ..
      '; nothing of this batch was written')
  end
end
-- One clock for every consumer: the server's.
local generation = math.floor(tonumber(redis.call('TIME')[1]) / window)
local current, previous = seen_prefix .. generation .. ':', seen_prefix .. (generation - 1) .. ':'
local counted = 0
-- Only the dedupe marker is per tweet; the counters of the new tweets are
-- summed here and written once per distinct field.
local by_country, by_weather, by_pair, by_minute, next_offsets, buckets = {}, {}, {}, {}, {}, {}
for _, message in ipairs(messages) do
  local partition, offset, message_id, first, last = message[1], message[2], message[3], message[4], message[5]
  if log_positions and offset >= 0 and (next_offsets[partition] or -1) < offset + 1 then
    next_offsets[partition] = offset + 1
  end
  if message_id ~= '' then
    redis.call('SET', unacked_prefix .. message_id, '1', 'EX', unacked_ttl)
  end
  for r = first, last, 4 do
    local id, country, weather, minute = ARGV[r], ARGV[r + 1], ARGV[r + 2], ARGV[r + 3]
    local bucket = string.format('%02x%02x', string.byte(id, 15, 16))
    if redis.call('HEXISTS', previous .. bucket, id) == 0 and redis.call('HSETNX', current .. bucket, id, '') == 1 then
      buckets[bucket] = true
      counted = counted + 1
      by_country[country] = (by_country[country] or 0) + 1
      by_weather[weather] = (by_weather[weather] or 0) + 1
      local pair = country .. ':' .. weather
      by_pair[pair] = (by_pair[pair] or 0) + 1
      by_minute[minute] = (by_minute[minute] or 0) + 1
    end
  end
end
for bucket in pairs(buckets) do
  redis.call('EXPIRE', current .. bucket, 2 * window + 1, 'NX')
end
for partition, next_offset in pairs(next_offsets) do
  redis.call('HSET', log_positions, partition, next_offset)
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

/// Where the records of one Kafka message sit in its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    /// The message's partition.
    pub partition: i32,
    /// The message's offset in it.
    pub offset: i64,
    /// How many of the batch's records, in order, came in this message.
    pub records: usize,
}

/// One RabbitMQ message of a batch: its message id (if the publisher set one)
/// and how many of the batch's records, in order, it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The AMQP `message-id` property, if set.
    pub message_id: Option<String>,
    /// How many of the batch's records it carried.
    pub records: usize,
}

/// One broker message's part of a script call.
struct MessageArgs<'a> {
    partition: i32,
    offset: i64,
    message_id: &'a str,
    records: usize,
}

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
        let system = if info.contains("valkey_version") { Store::Valkey } else { Store::Redis };
        // `EXPIRE … NX` (7.0) runs after the script's first writes: on an older
        // server it would fail halfway and leave a batch half written.
        let version = info.lines().find_map(|line| line.strip_prefix("redis_version:")).unwrap_or("0").trim();
        if version.split('.').next().and_then(|major| major.parse::<u32>().ok()).unwrap_or(0) < 7 {
            return Err(StoreError::TooOld { url: redact(url), server: format!("{} {version}", system.as_str()) });
        }
        Ok(Self { url: redact(url), system, connection, keys, retention, count_script: Script::new(COUNT_BATCH_LUA) })
    }

    /// Redis or Valkey: which server this is.
    pub fn system(&self) -> Store {
        self.system
    }

    /// The key names it counts under.
    pub fn keys(&self) -> &KeySchema {
        &self.keys
    }

    /// Counts every record whose id was not counted before; returns how many
    /// were new. Safe to call again with the same records after an error.
    pub async fn count_batch(&self, records: &[TweetRecord]) -> Result<u64, StoreError> {
        let whole = MessageArgs { partition: 0, offset: -1, message_id: "", records: records.len() };
        self.count(None, records, &[whole]).await
    }

    /// Counts records read from a Kafka topic, message by message
    /// (`positions`, in the records' order): a message below its partition's
    /// stored next offset is skipped whole, and the next offsets advance in the
    /// same atomic step as the counters. A replay from any offset, by any
    /// consumer group, counts nothing twice for as long as this store keeps
    /// its data.
    pub async fn count_log_batch(
        &self,
        topic: &str,
        records: &[TweetRecord],
        positions: &[LogPosition],
    ) -> Result<u64, StoreError> {
        let messages: Vec<MessageArgs<'_>> = positions
            .iter()
            .map(|p| MessageArgs { partition: p.partition, offset: p.offset, message_id: "", records: p.records })
            .collect();
        self.count(Some(topic), records, &messages).await
    }

    /// Counts records delivered by RabbitMQ, message by message
    /// (`delivered`, in the records' order). A message with an id is recorded
    /// as counted-and-unacked in the same atomic step, and a redelivery of it
    /// is skipped whole until [`Self::forget_acked`] is called after the ack.
    pub async fn count_delivered(&self, records: &[TweetRecord], delivered: &[Delivered]) -> Result<u64, StoreError> {
        let messages: Vec<MessageArgs<'_>> = delivered
            .iter()
            .map(|d| MessageArgs {
                partition: 0,
                offset: -1,
                message_id: d.message_id.as_deref().unwrap_or_default(),
                records: d.records,
            })
            .collect();
        self.count(None, records, &messages).await
    }

    /// Drops the journal entries of messages the broker has now acknowledged.
    pub async fn forget_acked(&self, delivered: &[Delivered]) -> Result<(), StoreError> {
        let keys: Vec<String> =
            delivered.iter().filter_map(|d| d.message_id.as_deref()).map(|id| self.keys.counted_message(id)).collect();
        if keys.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection.clone();
        redis::cmd("UNLINK").arg(keys).query_async(&mut connection).await.map_err(|e| self.error(e))
    }

    /// Sets the next offset of each partition that has none yet (HSETNX):
    /// how a store counted by an earlier clima, which kept no offsets, takes
    /// over its consumer group's committed offsets (everything below them was
    /// counted, as offsets are committed only after the count).
    pub async fn adopt_log_positions(&self, topic: &str, committed: &BTreeMap<i32, i64>) -> Result<(), StoreError> {
        if committed.is_empty() {
            return Ok(());
        }
        let key = self.keys.log_positions(topic);
        let mut pipe = redis::pipe();
        for (partition, offset) in committed {
            pipe.hset_nx(&key, partition, offset).ignore();
        }
        let mut connection = self.connection.clone();
        pipe.query_async(&mut connection).await.map_err(|e| self.error(e))
    }

    /// Drops the stored next offsets of these partitions (a recreated topic).
    pub async fn forget_log_positions(&self, topic: &str, partitions: &[i32]) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        connection.hdel(self.keys.log_positions(topic), partitions).await.map_err(|e| self.error(e))
    }

    /// Each partition's next offset not counted yet, as [`Self::count_log_batch`] stored it.
    pub async fn log_positions(&self, topic: &str) -> Result<BTreeMap<i32, i64>, StoreError> {
        let mut connection = self.connection.clone();
        connection.hgetall(self.keys.log_positions(topic)).await.map_err(|e| self.error(e))
    }

    async fn count(
        &self,
        topic: Option<&str>,
        records: &[TweetRecord],
        messages: &[MessageArgs<'_>],
    ) -> Result<u64, StoreError> {
        if records.is_empty() {
            return Ok(0);
        }
        debug_assert_eq!(messages.iter().map(|m| m.records).sum::<usize>(), records.len());
        let mut invocation = self.count_script.prepare_invoke();
        invocation
            .key(self.keys.total())
            .key(self.keys.by_country())
            .key(self.keys.by_weather())
            .key(self.keys.by_country_weather());
        if let Some(topic) = topic {
            invocation.key(self.keys.log_positions(topic));
        }
        invocation
            .arg(self.keys.seen_prefix())
            .arg(self.keys.minute_prefix())
            .arg(self.retention.dedupe_window.as_secs().max(1))
            .arg(self.retention.minutes.as_secs().max(1))
            .arg(self.keys.counted_message_prefix())
            .arg(UNACKED_MESSAGE_TTL.as_secs());
        let mut records = records.iter();
        for message in messages {
            invocation.arg(message.partition).arg(message.offset).arg(message.message_id).arg(message.records);
            for record in records.by_ref().take(message.records) {
                let tweet = record.tweet.as_ref();
                let weather = tweet.map_or(Weather::Unspecified, clima_proto::v1::Tweet::weather);
                let id = uuid::Uuid::try_parse(&record.id).map_err(|_| StoreError::InvalidId(record.id.clone()))?;
                invocation
                    .arg(id.as_bytes().as_slice())
                    .arg(tweet.map_or("", |t| t.country.as_str()))
                    .arg(weather_name(weather))
                    .arg(received_minute(record));
            }
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
    /// Every tweet counted.
    pub total: u64,
    /// By ISO 3166-1 alpha-2 country code.
    pub by_country: BTreeMap<String, u64>,
    /// By weather (`Lluvioso`, `Nublado`, `Soleado`).
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
