//! `clima consumer`: reads tweets from a broker and counts them in a store.
//!
//! - [`kafka`]: a consumer group on the tweets topic, counting into Redis.
//! - [`rabbitmq`]: a manual-ack consumer of the tweets queue, counting into Valkey.
//!
//! Both are a [`source::Source`], run by the one loop in [`driver`].
//!
//! Both follow the same rule: a batch is acknowledged to its broker (offsets
//! committed / messages acked) only after the store counted it. A crash in
//! between means redelivery, and the store counts each tweet id once, so
//! every tweet is counted exactly once. ([`AckTiming::BeforeStore`] breaks the
//! rule on purpose, to measure what the other design loses.)

pub mod driver;
pub mod kafka;
pub mod rabbitmq;
pub mod source;

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use clima_proto::v1::TweetRecord;
use tokio_util::sync::CancellationToken;
use tracing::Span;

/// Default of `--batch-size`.
pub const DEFAULT_BATCH_SIZE: usize = 500;
/// Default of `--batch-linger`.
pub const DEFAULT_BATCH_LINGER: Duration = Duration::from_millis(10);

/// How a consumer groups messages into store round trips, and when it acknowledges them.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Most tweets counted in one store round trip (a message's tweets are
    /// never split, so a batch may exceed it by one message).
    pub max_records: usize,
    /// How long to wait for more messages once a batch has its first one.
    pub linger: Duration,
    /// When a batch is acknowledged to the broker.
    pub ack: AckTiming,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_records: DEFAULT_BATCH_SIZE, linger: DEFAULT_BATCH_LINGER, ack: AckTiming::default() }
    }
}

/// When a consumer acknowledges a batch (Kafka: commits its offsets; RabbitMQ:
/// acks its messages), relative to the store's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckTiming {
    /// After the store counted the batch. A crash in between means
    /// redelivery, which the store counts once: nothing lost, nothing twice.
    #[default]
    AfterStore,
    /// Before the store counts it, as a consumer with auto-commit or auto-ack
    /// does. A crash in between loses a RabbitMQ batch: the broker will not
    /// deliver it again (the Kafka consumer reads from the store's offsets,
    /// so an early commit loses nothing there). Never for production;
    /// ci/experiments measures what it loses.
    BeforeStore,
}

/// Why a consumer stopped or reconnects.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// Reaching the broker or declaring its topology failed.
    #[error(transparent)]
    Broker(#[from] clima_broker::BrokerError),
    /// The Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The AMQP connection or channel failed.
    #[error("rabbitmq: {0}")]
    RabbitMq(#[from] lapin::Error),
    /// RabbitMQ ended the consumer's delivery stream.
    #[error("rabbitmq closed the consumer")]
    StreamEnded,
    /// RabbitMQ did not confirm a dead letter (a nack, or no queue took it), so
    /// the original stays unacknowledged.
    #[error("rabbitmq did not take a dead letter")]
    DeadLetterRefused,
    /// The store could not be read (positions) or refused.
    #[error(transparent)]
    Store(#[from] clima_store::StoreError),
}

/// The process spans of the tweets of one received message: one per traced
/// record, a child of the creation span the writer left in the record, so every
/// tweet's trace runs from its HTTP request to its store write, and linked to
/// the message's publish span (its context is in the message headers). Untraced
/// records (tracing off upstream) get none and cost nothing.
pub(crate) fn process_spans(
    broker: clima_telemetry::events::Broker,
    destination: &str,
    records: &[TweetRecord],
    message_headers: &dyn opentelemetry::propagation::Extractor,
) -> Vec<Span> {
    records
        .iter()
        .filter(|record| !record.trace_context.is_empty())
        .map(|record| {
            let span = tracing::info_span!(
                parent: None,
                "messaging.process",
                otel.name = %format_args!("process {destination}"),
                otel.kind = "consumer",
                messaging.system = broker.as_str(),
                messaging.destination.name = %destination,
                messaging.operation.type = "process",
                messaging.operation.name = "process",
                messaging.message.id = %record.id,
            );
            clima_telemetry::propagation::set_parent(&span, &record.trace_context);
            clima_telemetry::propagation::add_link_from(&span, message_headers);
            span
        })
        .collect()
}

/// Header of a dead-lettered message saying why it was not a valid record.
pub const DEAD_LETTER_REASON_HEADER: &str = "clima-dead-letter-reason";

/// Longest dead-letter reason, in bytes. A reason quotes the bad value, which
/// whoever produced the message chose; uncut, a large one could push the dead
/// letter over the broker's message limit, and it would be retried forever.
pub const MAX_DEAD_LETTER_REASON_BYTES: usize = 1024;

/// `error` as a dead letter's reason: at most [`MAX_DEAD_LETTER_REASON_BYTES`],
/// cut at a character boundary and marked with `…`.
pub fn dead_letter_reason(error: &dyn std::fmt::Display) -> String {
    let mut reason = error.to_string();
    if reason.len() > MAX_DEAD_LETTER_REASON_BYTES {
        let mut end = MAX_DEAD_LETTER_REASON_BYTES - '…'.len_utf8();
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// Retries `attempt` with backoff (up to 5 s apart, without limit) until it
/// succeeds, or returns `None` on shutdown: connecting, store writes and dead
/// letters all wait out a broken peer this way instead of giving up.
async fn retry_until_ok<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
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

/// How often [`watch_store_policy`] reads the store's eviction policy.
pub const STORE_POLICY_CHECK_EVERY: Duration = Duration::from_secs(10);

/// Reads the store's eviction policy now and `every` (in production
/// [`STORE_POLICY_CHECK_EVERY`]) until `shutdown`: a store that may evict is
/// refused (the count script refuses every batch there too), which makes the
/// consumer not ready and logs an ERROR naming the setting, once per change.
pub async fn watch_store_policy(
    store: &clima_store::CounterStore,
    health: &clima_telemetry::readiness::Readiness,
    every: Duration,
    shutdown: &CancellationToken,
) {
    use clima_telemetry::readiness::Condition;
    let mut refused = None;
    loop {
        match store.check_never_evicts().await {
            Ok(()) => {
                if refused != Some(false) {
                    if refused.is_some() {
                        tracing::info!(store = store.system().as_str(), "the store no longer evicts; counting again");
                    }
                    refused = Some(false);
                    clima_telemetry::events::store_refused(store.system(), false);
                    health.set_condition(Condition::StoreKeepsData, true);
                }
            }
            Err(error @ clima_store::StoreError::Evicting { .. }) => {
                if refused != Some(true) {
                    tracing::error!(%error, "refusing the store: counting nothing there until it is fixed");
                    refused = Some(true);
                    clima_telemetry::events::store_refused(store.system(), true);
                    health.set_condition(Condition::StoreKeepsData, false);
                }
            }
            // Unreachable: the count's own retries say so and clear readiness.
            Err(error) => tracing::debug!(%error, "could not read the store's eviction policy"),
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
