//! How clima reaches its brokers: connection settings (CLI flags with env-var
//! equivalents) and the topology both writers and consumers declare, so
//! whichever starts first creates it.

pub mod kafka;
pub mod rabbitmq;

/// Why a broker could not be reached or set up.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("kafka topic {topic}: {code}")]
    KafkaTopic { topic: String, code: rdkafka::types::RDKafkaErrorCode },
    #[error("rabbitmq: {0}")]
    RabbitMq(#[from] lapin::Error),
}
