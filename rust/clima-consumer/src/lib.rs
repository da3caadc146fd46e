//! `clima consumer`: reads tweets from a broker and counts them in a store.
//!
//! - [`kafka`]: a consumer group on the tweets topic, counting into Redis.
//! - [`rabbitmq`]: a manual-ack consumer of the tweets queue, counting into Valkey.
//!
//! Both follow the same rule: a batch is acknowledged to its broker (offsets
//! committed / messages acked) only after the store counted it. A crash in
//! between means redelivery, and the store counts each tweet id once, so
//! every tweet is counted exactly once.

pub mod kafka;
pub mod rabbitmq;

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use clima_proto::v1::TweetRecord;
use clima_store::CounterStore;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct BatchConfig {
    /// Most tweets counted in one store round trip.
    #[arg(id = "batch_size", long = "batch-size", value_name = "TWEETS", env = "CLIMA_CONSUMER_BATCH_SIZE", default_value_t = 500)]
    pub max_records: usize,

    /// How long to wait for more messages once a batch has its first one.
    #[arg(long = "batch-linger", env = "CLIMA_CONSUMER_BATCH_LINGER", default_value = "10ms", value_parser = humantime::parse_duration)]
    pub linger: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_records: 500, linger: Duration::from_millis(10) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Broker(#[from] clima_broker::BrokerError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("rabbitmq: {0}")]
    RabbitMq(#[from] lapin::Error),
    #[error("rabbitmq closed the consumer")]
    StreamEnded,
}

/// Counts a batch, retrying the store until it succeeds: a batch is never
/// skipped. Gives up only on shutdown, leaving the batch unacknowledged so the
/// broker redelivers it to the next consumer.
async fn count_until_stored(store: &CounterStore, records: &[TweetRecord], shutdown: &CancellationToken) -> bool {
    let count = || store.count_batch(records);
    let retrying = count
        .retry(ExponentialBuilder::default().with_max_delay(Duration::from_secs(5)).without_max_times())
        .notify(|error, delay| tracing::warn!(%error, ?delay, "store write failed; retrying"));
    tokio::select! {
        result = retrying => match result {
            Ok(new) => {
                tracing::debug!(records = records.len(), new, "batch counted");
                true
            }
            Err(_) => false,
        },
        () = shutdown.cancelled() => false,
    }
}

/// Retries a broker connection step with backoff until it works or shutdown.
async fn connect_until_ready<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    shutdown: &CancellationToken,
    attempt: impl FnMut() -> F,
) -> Option<T> {
    let retrying = attempt
        .retry(ExponentialBuilder::default().with_max_delay(Duration::from_secs(5)).without_max_times())
        .notify(|error, delay| tracing::warn!(%error, ?delay, "{what} failed; retrying"));
    tokio::select! {
        result = retrying => result.ok(),
        () = shutdown.cancelled() => None,
    }
}

#[cfg(test)]
mod tests;
