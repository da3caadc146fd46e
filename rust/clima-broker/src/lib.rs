//! How clima reaches its brokers: connection settings (CLI flags with env-var
//! equivalents) and the topology both writers and consumers declare, so
//! whichever starts first creates it.

pub mod kafka;
pub mod rabbitmq;

/// Why a broker could not be reached or set up.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Creating or checking the topic failed.
    #[error("kafka topic {topic}: {code}")]
    KafkaTopic {
        /// The topic.
        topic: String,
        /// What the broker answered.
        code: rdkafka::types::RDKafkaErrorCode,
    },
    /// The AMQP connection or channel failed, or a declaration was refused.
    #[error("rabbitmq: {0}")]
    RabbitMq(#[from] lapin::Error),
    /// A RabbitMQ node did not accept a connection in time.
    #[error("rabbitmq: {node} did not accept a connection within {} s", crate::rabbitmq::NODE_CONNECT_TIMEOUT.as_secs())]
    RabbitMqConnectTimeout {
        /// The node, without credentials.
        node: String,
    },
    /// The AMQP URL names no node.
    #[error("rabbitmq: the AMQP URL names no node")]
    NoRabbitMqNode,
}
