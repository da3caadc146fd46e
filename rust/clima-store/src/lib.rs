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
    /// counted yet. Written by the same script as the counters: the consumer
    /// reads from here on every assignment, and a message below it is never
    /// counted again, whatever the consumer group's offsets say.
    pub fn log_positions(&self, topic: &str) -> String {
        format!("{}:kafka-next-offset:{topic}", self.prefix)
    }
    /// Hash: partition → `<offset>:<binary id>` of the message just below its
    /// next offset and of that message's first tweet. Tells the log the store
    /// counted from a topic deleted and created again under the same name,
    /// whose offsets start over.
    pub fn log_last_ids(&self, topic: &str) -> String {
        format!("{}:kafka-last-id:{topic}", self.prefix)
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
    /// The store may evict keys (`maxmemory-policy` other than `noeviction`):
    /// clima counts nothing there, as it would lose counts and dedupe markers.
    #[error(
        "store {url} has maxmemory-policy {policy}, so it may evict counts and dedupe markers; clima counts only into \
         a store with noeviction (CONFIG SET maxmemory-policy noeviction, or the managed service's parameter group)"
    )]
    Evicting {
        /// The store, without its password.
        url: String,
        /// The policy it reported.
        policy: String,
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
    forget_position_script: Script,
}

/// Atomic, idempotent batch count. KEYS: total, country, weather,
/// country_weather, and for records read from a Kafka topic its
/// [`KeySchema::log_positions`] and [`KeySchema::log_last_ids`] hashes. ARGV:
/// seen prefix, minute prefix, dedupe window s, minute TTL s, unacked-message
/// prefix, its TTL s, then per broker message: partition, offset (-1: not from
/// a log), the partition's next offset as the consumer read it (-1: none),
/// message id (or ""), record count, and per record (16-byte binary id,
/// country, weather, minute). Returns `{0, new records}`, or `{1, partition,
/// stored next offset (-1: none), …}` when the store's next offsets are not
/// the ones the consumer read from: then nothing was written.
///
/// Everything is decided before the first write, because Redis does not roll
/// a script back: a command failing halfway (a counter of the wrong type, a
/// value that is not an integer, out of memory) would leave dedupe markers set
/// and counters unwritten, so a retry would skip those tweets for good.
///
/// 1. The store must not evict (`maxmemory-policy` `noeviction`, read from
///    `INFO`, which managed services allow where they block `CONFIG`): an
///    evicting store drops counters and markers without a word.
/// 2. A log message counts only if its partition's stored next offset is the
///    one its consumer read from (the store was not restored, emptied or
///    advanced by another consumer meanwhile); below it, it was counted.
/// 3. A message with an id in the unacked-message journal was counted (a
///    RabbitMQ redelivery after a crash between count and ack).
/// 4. A tweet id among the dedupe markers of this generation or the last was
///    counted (a client's retry).
/// 5. Every counter about to be incremented is checked: right type, and an
///    integer that cannot overflow.
const COUNT_BATCH_LUA: &str = r#"
local seen_prefix, minute_prefix = ARGV[1], ARGV[2]
local window, minute_ttl = tonumber(ARGV[3]), ARGV[4]
local unacked_prefix, unacked_ttl = ARGV[5], ARGV[6]
local log_positions, log_last_ids = KEYS[5], KEYS[6]
local nothing = '; nothing of this batch was written'
local policy = string.match(redis.call('INFO', 'memory'), 'maxmemory_policy:([%w-]+)')
if policy ~= 'noeviction' then
  return redis.error_reply('EVICTING maxmemory-policy is ' .. tostring(policy) ..
    ', so the store may drop counts and dedupe markers; clima needs noeviction' .. nothing)
end
-- Read-only pass: the messages to take, or the partitions whose stored next
-- offset moved away from where the consumer read.
local messages, moved, moved_seen = {}, {1}, {}
local i = 7
while i <= #ARGV do
  local partition, offset, expected = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local message_id, n = ARGV[i + 3], tonumber(ARGV[i + 4])
  local first = i + 5
  i = first + 4 * n
  local take = true
  if log_positions and offset >= 0 then
    local stored = tonumber(redis.call('HGET', log_positions, partition) or -1)
    if stored ~= expected then
      take = false
      if not moved_seen[partition] then
        moved_seen[partition] = true
        moved[#moved + 1] = tonumber(partition)
        moved[#moved + 1] = stored
      end
    else
      take = offset >= stored
    end
  end
  if take and message_id ~= '' then
    take = redis.call('EXISTS', unacked_prefix .. message_id) == 0
  end
  if take then
    messages[#messages + 1] = {partition, offset, message_id, first, i - 1}
  end
end
if #moved > 1 then return moved end
-- One clock for every consumer: the server's.
local generation = math.floor(tonumber(redis.call('TIME')[1]) / window)
local current, previous = seen_prefix .. generation .. ':', seen_prefix .. (generation - 1) .. ':'
local counted, new_ids, in_batch = 0, {}, {}
-- Only the dedupe marker is per tweet; the counters of the new tweets are
-- summed here and written once per distinct field.
local by_country, by_weather, by_pair, by_minute, next_offsets, last_ids = {}, {}, {}, {}, {}, {}
for _, message in ipairs(messages) do
  local partition, offset, first, last = message[1], message[2], message[4], message[5]
  if log_positions and offset >= 0 and (next_offsets[partition] or -1) < offset + 1 then
    next_offsets[partition] = offset + 1
    -- Paired with its offset: an id left by an older writer of the hash is never compared.
    last_ids[partition] = offset .. ':' .. (first <= last and ARGV[first] or '')
  end
  for r = first, last, 4 do
    local id, country, weather, minute = ARGV[r], ARGV[r + 1], ARGV[r + 2], ARGV[r + 3]
    local bucket = string.format('%02x%02x', string.byte(id, 15, 16))
    if not in_batch[id] and redis.call('HEXISTS', previous .. bucket, id) == 0
        and redis.call('HEXISTS', current .. bucket, id) == 0 then
      in_batch[id] = true
      new_ids[#new_ids + 1] = {bucket, id}
      counted = counted + 1
      by_country[country] = (by_country[country] or 0) + 1
      by_weather[weather] = (by_weather[weather] or 0) + 1
      local pair = country .. ':' .. weather
      by_pair[pair] = (by_pair[pair] or 0) + 1
      by_minute[minute] = (by_minute[minute] or 0) + 1
    end
  end
end
-- Every key about to be written must hold what clima writes there.
local function check_type(key, expected)
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= expected then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. expected .. nothing)
  end
end
-- An integer as Redis parses one (no leading zero, no '-0'), of at most 18
-- digits so that an increment cannot overflow 64 bits.
local function check_count(key, field, value)
  local digits = value and (value == '0' and '0' or string.match(value, '^-?([1-9]%d*)$'))
  if value and not (digits and #digits <= 18) then
    local where = field and (key .. ' field ' .. field) or key
    return redis.error_reply('NOTANINTEGER ' .. where .. ' holds ' .. string.format('%q', string.sub(value, 1, 40)) ..
      ', not a count' .. nothing)
  end
end
local checks = {{KEYS[1], 'string'}, {KEYS[2], 'hash'}, {KEYS[3], 'hash'}, {KEYS[4], 'hash'}}
if log_positions then
  checks[#checks + 1] = {log_positions, 'hash'}
  checks[#checks + 1] = {log_last_ids, 'hash'}
end
for minute in pairs(by_minute) do checks[#checks + 1] = {minute_prefix .. minute, 'string'} end
for _, check in ipairs(checks) do
  local refused = check_type(check[1], check[2])
  if refused then return refused end
end
if counted > 0 then
  local refused = check_count(KEYS[1], nil, redis.call('GET', KEYS[1]))
  if refused then return refused end
  for minute in pairs(by_minute) do
    refused = check_count(minute_prefix .. minute, nil, redis.call('GET', minute_prefix .. minute))
    if refused then return refused end
  end
  for k, fields in pairs({[2] = by_country, [3] = by_weather, [4] = by_pair}) do
    for field in pairs(fields) do
      refused = check_count(KEYS[k], field, redis.call('HGET', KEYS[k], field))
      if refused then return refused end
    end
  end
end
-- Writes: nothing below can fail on a store that did not evict or fill up.
for _, message in ipairs(messages) do
  if message[3] ~= '' then
    redis.call('SET', unacked_prefix .. message[3], '1', 'EX', unacked_ttl)
  end
end
local buckets = {}
for _, new in ipairs(new_ids) do
  redis.call('HSET', current .. new[1], new[2], '')
  buckets[new[1]] = true
end
for bucket in pairs(buckets) do
  redis.call('EXPIRE', current .. bucket, 2 * window + 1, 'NX')
end
for partition, next_offset in pairs(next_offsets) do
  redis.call('HSET', log_positions, partition, next_offset)
  redis.call('HSET', log_last_ids, partition, last_ids[partition])
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
return {0, counted}
"#;

/// Drops a partition's stored next offset and last id, if the next offset is
/// still ARGV[2] (another consumer may have counted since). KEYS: the
/// topic's [`KeySchema::log_positions`] and [`KeySchema::log_last_ids`].
/// ARGV: partition, expected next offset. Returns 1 if dropped.
const FORGET_POSITION_LUA: &str = r#"
if tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or -1) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"#;

/// Where the records of one Kafka message sit in its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    /// The message's partition.
    pub partition: i32,
    /// The message's offset in it.
    pub offset: i64,
    /// The partition's next offset in the store, as the consumer knew it when
    /// it read the message (`None`: the store had none). The count refuses
    /// the batch if the store says otherwise.
    pub stored_next: Option<i64>,
    /// How many of the batch's records, in order, came in this message.
    pub records: usize,
}

/// What [`CounterStore::count_log_batch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogCount {
    /// Counted: this many records were new.
    Counted(u64),
    /// Nothing written: these partitions' next offsets in the store are not
    /// the ones the consumer read from (`None`: the store has none). The store
    /// was restored or emptied, or another consumer counted there meanwhile;
    /// the consumer must read again from the store's offsets.
    Moved(BTreeMap<i32, Option<i64>>),
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
    stored_next: i64,
    message_id: &'a str,
    records: usize,
}

/// The policy under which a store never evicts.
const NO_EVICTION: &str = "noeviction";

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
        Ok(Self {
            url: redact(url),
            system,
            connection,
            keys,
            retention,
            count_script: Script::new(COUNT_BATCH_LUA),
            forget_position_script: Script::new(FORGET_POSITION_LUA),
        })
    }

    /// The store's `maxmemory-policy`, from `INFO memory` (managed services
    /// allow it where they block `CONFIG GET`).
    pub async fn eviction_policy(&self) -> Result<String, StoreError> {
        let mut connection = self.connection.clone();
        let info: String =
            redis::cmd("INFO").arg("memory").query_async(&mut connection).await.map_err(|e| self.error(e))?;
        Ok(info.lines().find_map(|line| line.strip_prefix("maxmemory_policy:")).unwrap_or("unknown").trim().to_owned())
    }

    /// Fails with [`StoreError::Evicting`] unless the store's policy is
    /// `noeviction`, whatever `maxmemory` is now: a later `CONFIG SET
    /// maxmemory` would start evicting at once. The count script checks the
    /// same on every batch; this says it before there is one.
    pub async fn check_never_evicts(&self) -> Result<(), StoreError> {
        let policy = self.eviction_policy().await?;
        if policy == NO_EVICTION { Ok(()) } else { Err(StoreError::Evicting { url: self.url.clone(), policy }) }
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
        let whole = MessageArgs { partition: 0, offset: -1, stored_next: -1, message_id: "", records: records.len() };
        self.count_new(records, &[whole]).await
    }

    /// Counts records read from a Kafka topic, message by message
    /// (`positions`, in the records' order): a message below its partition's
    /// stored next offset is skipped whole, and the next offsets advance in the
    /// same atomic step as the counters. A replay from any offset, by any
    /// consumer group, counts nothing twice for as long as this store keeps
    /// its data. If a partition's stored next offset is not the one the
    /// consumer read from ([`LogPosition::stored_next`]), nothing is written
    /// and [`LogCount::Moved`] says where the store is.
    pub async fn count_log_batch(
        &self,
        topic: &str,
        records: &[TweetRecord],
        positions: &[LogPosition],
    ) -> Result<LogCount, StoreError> {
        let messages: Vec<MessageArgs<'_>> = positions
            .iter()
            .map(|p| MessageArgs {
                partition: p.partition,
                offset: p.offset,
                stored_next: p.stored_next.unwrap_or(-1),
                message_id: "",
                records: p.records,
            })
            .collect();
        let reply = self.count(Some(topic), records, &messages).await?;
        Ok(match reply.split_first() {
            Some((1, moved)) => LogCount::Moved(
                moved.chunks_exact(2).map(|pair| (pair[0] as i32, (pair[1] >= 0).then_some(pair[1]))).collect(),
            ),
            _ => LogCount::Counted(counted(&reply)),
        })
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
                stored_next: -1,
                message_id: d.message_id.as_deref().unwrap_or_default(),
                records: d.records,
            })
            .collect();
        self.count_new(records, &messages).await
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

    /// Drops a partition's stored next offset and last id if the next offset
    /// is still `next` (nothing was counted there since): the log the store
    /// counted is gone (a recreated topic), and the new one is counted from
    /// its start. Returns whether it dropped them.
    pub async fn forget_log_position(&self, topic: &str, partition: i32, next: i64) -> Result<bool, StoreError> {
        let mut connection = self.connection.clone();
        let dropped: i64 = self
            .forget_position_script
            .key(self.keys.log_positions(topic))
            .key(self.keys.log_last_ids(topic))
            .arg(partition)
            .arg(next)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| self.error(e))?;
        Ok(dropped == 1)
    }

    /// Each partition's last counted message: its offset, and the binary id
    /// of its first tweet (empty if it had none).
    pub async fn log_last_ids(&self, topic: &str) -> Result<BTreeMap<i32, (i64, Vec<u8>)>, StoreError> {
        let mut connection = self.connection.clone();
        let stored: BTreeMap<i32, Vec<u8>> =
            connection.hgetall(self.keys.log_last_ids(topic)).await.map_err(|e| self.error(e))?;
        Ok(stored
            .into_iter()
            .filter_map(|(partition, value)| {
                let colon = value.iter().position(|&byte| byte == b':')?;
                let offset = std::str::from_utf8(&value[..colon]).ok()?.parse().ok()?;
                Some((partition, (offset, value[colon + 1..].to_vec())))
            })
            .collect())
    }

    /// Each partition's next offset not counted yet, as [`Self::count_log_batch`] stored it.
    pub async fn log_positions(&self, topic: &str) -> Result<BTreeMap<i32, i64>, StoreError> {
        let mut connection = self.connection.clone();
        connection.hgetall(self.keys.log_positions(topic)).await.map_err(|e| self.error(e))
    }

    /// [`Self::count`] of messages that are not from a log: no offsets can move.
    async fn count_new(&self, records: &[TweetRecord], messages: &[MessageArgs<'_>]) -> Result<u64, StoreError> {
        Ok(counted(&self.count(None, records, messages).await?))
    }

    /// The count script's reply (see [`COUNT_BATCH_LUA`]).
    async fn count(
        &self,
        topic: Option<&str>,
        records: &[TweetRecord],
        messages: &[MessageArgs<'_>],
    ) -> Result<Vec<i64>, StoreError> {
        if records.is_empty() {
            return Ok(vec![0, 0]);
        }
        debug_assert_eq!(messages.iter().map(|m| m.records).sum::<usize>(), records.len());
        let mut invocation = self.count_script.prepare_invoke();
        invocation
            .key(self.keys.total())
            .key(self.keys.by_country())
            .key(self.keys.by_weather())
            .key(self.keys.by_country_weather());
        if let Some(topic) = topic {
            invocation.key(self.keys.log_positions(topic)).key(self.keys.log_last_ids(topic));
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
            invocation
                .arg(message.partition)
                .arg(message.offset)
                .arg(message.stored_next)
                .arg(message.message_id)
                .arg(message.records);
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
        if source.code() == Some("EVICTING") {
            let detail = source.detail().unwrap_or_default();
            let policy = detail.strip_prefix("maxmemory-policy is ").and_then(|rest| rest.split(',').next());
            return StoreError::Evicting { url: self.url.clone(), policy: policy.unwrap_or("unknown").to_owned() };
        }
        StoreError::Redis { url: self.url.clone(), source }
    }
}

/// The new records of a `{0, counted}` script reply.
fn counted(reply: &[i64]) -> u64 {
    reply.get(1).map_or(0, |&n| n.max(0) as u64)
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
