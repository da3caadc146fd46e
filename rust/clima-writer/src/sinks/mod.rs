//! Broker sinks. A sink's `publish` returns only once the broker has durably
//! acknowledged every record, or fails as a whole.

pub mod kafka;
pub mod rabbitmq;

use std::future::Future;

use clima_proto::v1::TweetRecord;
pub use clima_telemetry::events::Broker;

pub use kafka::KafkaSink;
pub use rabbitmq::RabbitMqSink;

/// The span of publishing one broker message (a batch of records), per the
/// OpenTelemetry messaging conventions: it links to each record's creation
/// span (see `service.rs`), and its own context travels in the message
/// headers. Broker-specific attributes start empty; the sink records them.
pub(crate) fn publish_span(broker: Broker, destination: &str, records: &[TweetRecord]) -> tracing::Span {
    use tracing::field::Empty;
    let span = tracing::info_span!(
        "messaging.publish",
        otel.name = %format_args!("publish {destination}"),
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = broker.as_str(),
        messaging.destination.name = %destination,
        messaging.operation.type = "publish",
        messaging.operation.name = "publish",
        messaging.batch.message_count = records.len(),
        messaging.destination.partition.id = Empty,
        messaging.kafka.offset = Empty,
        messaging.rabbitmq.destination.routing_key = Empty,
    );
    for record in records.iter().filter(|record| !record.trace_context.is_empty()) {
        clima_telemetry::propagation::add_link_from(&span, &record.trace_context);
    }
    span
}

/// A broker the writer publishes to: Kafka or RabbitMQ.
pub trait Sink: Send + Sync + 'static {
    /// Short broker name for logs and errors.
    fn broker(&self) -> Broker;

    /// Where records go: the Kafka topic or the RabbitMQ exchange.
    fn destination(&self) -> &str;

    /// Publishes the records as one message (Kafka: as few as its message size
    /// limit allows); `Ok` means the broker acknowledged all of them.
    fn publish(&self, records: &[TweetRecord]) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Checks (and, if needed, re-establishes) the broker connection and its topology.
    fn check(&self) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Why a batch was not published: the API answers 503 and nothing is counted
/// as accepted.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Reaching the broker or declaring its topology failed.
    #[error(transparent)]
    Broker(#[from] clima_broker::BrokerError),
    /// Kafka did not acknowledge a message (acks=all).
    #[error("kafka did not acknowledge a batch of {records} records: {source}")]
    KafkaDelivery {
        /// Records of the batch.
        records: usize,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The AMQP connection or channel failed.
    #[error("rabbitmq: {0}")]
    RabbitMq(#[from] lapin::Error),
    /// RabbitMQ answered the publish with a nack.
    #[error("rabbitmq refused a batch of {records} records (nack)")]
    RabbitMqNack {
        /// Records of the batch.
        records: usize,
    },
    /// The mandatory message reached no queue.
    #[error("rabbitmq could not route a batch of {records} records to any queue: {reply}")]
    RabbitMqUnroutable {
        /// Records of the batch.
        records: usize,
        /// The broker's reply text.
        reply: String,
    },
    /// No confirm in time.
    #[error("{broker} did not confirm within {timeout:?}")]
    Timeout {
        /// The broker's name.
        broker: &'static str,
        /// How long the writer waited.
        timeout: std::time::Duration,
    },
}
