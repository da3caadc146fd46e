//! What the dedupe markers of `clima-store` cost: counts N distinct tweets
//! through the real count script into a fresh prefix and reports the server's
//! `used_memory` growth per marker. Run it against a scratch server: other
//! clients' writes in the meantime would be measured too.

use std::time::Duration;

use clima_proto::v1::{Tweet, TweetRecord, Weather};
use clima_store::{CounterStore, KeySchema, Retention};
use serde::Serialize;

/// What `clima bench dedupe-memory` runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// A scratch Redis or Valkey.
    pub url: String,
    /// Distinct tweets to count.
    pub tweets: u64,
    /// Tweets per count script call (the consumer's --batch-size).
    pub batch: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    server: String,
    tweets: u64,
    used_memory_growth_bytes: i64,
    bytes_per_marker: f64,
    mib_per_million_tweets: f64,
}

async fn used_memory(connection: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<i64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(connection).await?;
    let line = info.lines().find_map(|line| line.strip_prefix("used_memory:")).unwrap_or("0");
    Ok(line.trim().parse()?)
}

/// Counts the tweets and prints the memory growth per dedupe marker as JSON.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let client = redis::Client::open(config.url.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut connection).await?;
    let version = |key: &str| info.lines().find_map(|line| line.strip_prefix(key)).map(str::trim).map(str::to_owned);
    let server = version("valkey_version:")
        .map(|v| format!("valkey {v}"))
        .or_else(|| version("redis_version:").map(|v| format!("redis {v}")))
        .unwrap_or_default();
    let prefix = format!("clima-bench-dedupe:{}", uuid::Uuid::now_v7().simple());
    // A window long enough that no marker expires during the run.
    let retention = Retention { dedupe_window: Duration::from_secs(3600), ..Retention::default() };
    let store = CounterStore::connect(&config.url, KeySchema::new(prefix.as_str()), retention).await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let record = |_| TweetRecord {
        id: uuid::Uuid::now_v7().to_string(),
        received_at: Some(pbjson_types::Timestamp { seconds: now.as_secs() as i64, nanos: 0 }),
        tweet: Some(Tweet { description: "x".into(), country: "GT".into(), weather: Weather::Soleado as i32 }),
        trace_context: Default::default(),
    };
    // The counters exist before the first measurement, so only markers grow.
    store.count_batch(&[record(0)]).await?;
    let before = used_memory(&mut connection).await?;
    let mut counted = 0;
    while counted < config.tweets {
        let batch: Vec<TweetRecord> = (0..config.batch.min(config.tweets - counted)).map(record).collect();
        counted += store.count_batch(&batch).await?;
    }
    let growth = used_memory(&mut connection).await? - before;
    let per_marker = growth as f64 / counted as f64;
    let report = Report {
        server,
        tweets: counted,
        used_memory_growth_bytes: growth,
        bytes_per_marker: per_marker,
        mib_per_million_tweets: per_marker * 1e6 / 1_048_576.0,
    };
    println!("{}", serde_json::to_string(&report)?);
    // Clean up the scratch prefix.
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut connection).await?;
    for chunk in keys.chunks(1000) {
        let () = redis::cmd("UNLINK").arg(chunk).query_async(&mut connection).await?;
    }
    Ok(())
}
