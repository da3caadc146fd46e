use std::{sync::Arc, time::SystemTime};

use clima_proto::v1::{MinuteCount, StatsSnapshot, StoreCounts};
use clima_store::{CounterStore, KeySchema, Retention};
use pbjson_types::Timestamp;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

/// Per-minute counters shown when a client does not say.
pub(crate) const DEFAULT_MINUTES: u32 = 15;
/// A day of minutes at most.
pub(crate) const MAX_MINUTES: u32 = 1440;

/// One store, connected on first use so the dashboard starts (and shows the
/// store as unreachable) even while the store is down.
pub struct StoreReader {
    url: String,
    keys: KeySchema,
    store: OnceCell<CounterStore>,
}

impl StoreReader {
    /// The store at `url`, read under `keys`; not connected yet.
    pub fn new(url: impl Into<String>, keys: KeySchema) -> Self {
        Self { url: url.into(), keys, store: OnceCell::new() }
    }

    async fn read(&self, minutes: usize) -> StoreCounts {
        let store = self
            .store
            .get_or_try_init(|| CounterStore::connect(&self.url, self.keys.clone(), Retention::default()))
            .await;
        let counts = match store {
            Ok(store) => store.read_counts(minutes).await.map(|counts| (store.system(), counts)),
            Err(error) => Err(error),
        };
        match counts {
            Ok((system, counts)) => StoreCounts {
                system: system.as_str().to_owned(),
                reachable: true,
                error: String::new(),
                total: counts.total,
                by_country: counts.by_country.into_iter().collect(),
                by_weather: counts.by_weather.into_iter().collect(),
                by_country_weather: counts.by_country_weather.into_iter().collect(),
                per_minute: counts
                    .per_minute
                    .into_iter()
                    .map(|(minute, count)| MinuteCount { minute, count })
                    .collect(),
            },
            Err(error) => StoreCounts { reachable: false, error: error.to_string(), ..Default::default() },
        }
    }
}

/// Redis (from Kafka) and Valkey (from RabbitMQ).
#[derive(Clone)]
pub struct Stores {
    redis: Arc<StoreReader>,
    valkey: Arc<StoreReader>,
    /// Cancelled when the dashboard shuts down: every watch (SSE and gRPC)
    /// then ends, so the graceful drain does not wait on streams that never do.
    pub(crate) closing: CancellationToken,
}

impl Stores {
    /// Both stores, the dashboard's two columns.
    pub fn new(redis: StoreReader, valkey: StoreReader) -> Self {
        Self { redis: Arc::new(redis), valkey: Arc::new(valkey), closing: CancellationToken::new() }
    }

    /// Both stores, read concurrently.
    pub async fn snapshot(&self, recent_minutes: u32) -> StatsSnapshot {
        let minutes = match recent_minutes {
            0 => DEFAULT_MINUTES,
            requested => requested.min(MAX_MINUTES),
        } as usize;
        let (redis, valkey) = tokio::join!(self.redis.read(minutes), self.valkey.read(minutes));
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        StatsSnapshot {
            read_at: Some(Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() as i32 }),
            redis: Some(redis),
            valkey: Some(valkey),
        }
    }
}
