//! Broker sinks. A sink's `publish` returns only once the broker has durably
//! acknowledged every record, or fails as a whole.

pub mod kafka;
pub mod rabbitmq;

use std::future::Future;

use clima_proto::v1::TweetRecord;

pub use kafka::KafkaSink;
pub use rabbitmq::RabbitMqSink;

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
