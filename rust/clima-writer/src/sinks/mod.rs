//! Broker sinks. A sink's `publish` returns only once the broker has durably
//! acknowledged every record, or fails as a whole.

pub mod kafka;
pub mod rabbitmq;

use std::future::Future;

use clima_proto::v1::TweetRecord;

pub use kafka::KafkaSink;
pub use rabbitmq::RabbitMqSink;

/// The producer span of one record (OpenTelemetry messaging conventions). Its
/// context travels in the message headers, so the consumer's process span
/// becomes its child. Broker-specific attributes start empty; the sink records them.
pub(crate) fn publish_span(system: &'static str, destination: &str, record_id: &str) -> tracing::Span {
    use tracing::field::Empty;
    tracing::info_span!(
        "messaging.publish",
        otel.name = %format_args!("publish {destination}"),
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = system,
        messaging.destination.name = %destination,
        messaging.operation.type = "publish",
        messaging.operation.name = "publish",
        messaging.message.id = %record_id,
        messaging.kafka.message.key = Empty,
        messaging.destination.partition.id = Empty,
        messaging.kafka.offset = Empty,
        messaging.rabbitmq.destination.routing_key = Empty,
    )
}

pub trait Sink: Send + Sync + 'static {
    /// Short broker name for logs and errors.
    fn name(&self) -> &'static str;

    /// Publishes every record; `Ok` means the broker acknowledged all of them.
    fn publish(&self, records: &[TweetRecord]) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Checks (and, if needed, re-establishes) the broker connection and its topology.
    fn check(&self) -> impl Future<Output = Result<(), SinkError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Broker(#[from] clima_broker::BrokerError),
    #[error("kafka did not acknowledge record {id}: {source}")]
    KafkaDelivery {
        id: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("rabbitmq: {0}")]
    RabbitMq(#[from] lapin::Error),
    #[error("rabbitmq refused record {id} (nack)")]
    RabbitMqNack { id: String },
    #[error("rabbitmq could not route record {id} to any queue: {reply}")]
    RabbitMqUnroutable { id: String, reply: String },
    #[error("{broker} did not confirm within {timeout:?}")]
    Timeout { broker: &'static str, timeout: std::time::Duration },
}
