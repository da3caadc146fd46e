//! RabbitMQ: a durable direct exchange routing to one durable queue.

use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};

use crate::BrokerError;

/// Routing key of tweet messages on the exchange.
pub const ROUTING_KEY: &str = "tweet";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueType {
    /// Raft-replicated; the durable choice, and faster with confirms here.
    Quorum,
    /// Single-node classic queue.
    Classic,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RabbitMqArgs {
    /// AMQP 0.9.1 URL of RabbitMQ (credentials included; guest/guest is for local development only).
    #[arg(
        id = "amqp_url",
        long = "amqp-url",
        value_name = "URL",
        env = "CLIMA_AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_default_value = true
    )]
    pub url: String,

    /// Exchange tweets are published to.
    #[arg(long = "rabbitmq-exchange", env = "CLIMA_RABBITMQ_EXCHANGE", default_value = "tweets-clima")]
    pub exchange: String,

    /// Queue bound to the exchange, consumed by the RabbitMQ consumer.
    #[arg(long = "rabbitmq-queue", env = "CLIMA_RABBITMQ_QUEUE", default_value = "tweets-clima")]
    pub queue: String,

    /// Type of the queue when clima declares it.
    #[arg(long = "rabbitmq-queue-type", env = "CLIMA_RABBITMQ_QUEUE_TYPE", value_enum, default_value_t = QueueType::Quorum)]
    pub queue_type: QueueType,
}

impl RabbitMqArgs {
    /// Opens a connection named after the clima service using it (shown in the management UI).
    pub async fn connect(&self, connection_name: &str) -> Result<Connection, BrokerError> {
        let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
        Ok(Connection::connect(&self.url, properties).await?)
    }

    /// Declares the exchange, the queue and their binding (idempotent).
    pub async fn declare_topology(&self, channel: &Channel) -> Result<(), BrokerError> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare(self.exchange.as_str().into(), ExchangeKind::Direct, durable, FieldTable::default())
            .await?;
        let mut arguments = FieldTable::default();
        let queue_type = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        arguments.insert("x-queue-type".into(), AMQPValue::LongString(queue_type.into()));
        channel.queue_declare(self.queue.as_str().into(), QueueDeclareOptions::durable(), arguments).await?;
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }
}

/// AMQP message headers as trace-context carriers.
pub mod trace_headers {
    use lapin::types::{AMQPValue, FieldTable};
    use opentelemetry::propagation::{Extractor, Injector};

    /// Writes `traceparent`/`tracestate`/`baggage` into message headers.
    pub struct Inject<'a>(pub &'a mut FieldTable);

    impl Injector for Inject<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.into(), AMQPValue::LongString(value.into()));
        }
    }

    /// Reads trace context from a delivery's headers.
    pub struct Extract<'a>(pub Option<&'a FieldTable>);

    impl Extractor for Extract<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match self.0?.inner().get(key)? {
                AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
                AMQPValue::ShortString(value) => Some(value.as_str()),
                _ => None,
            }
        }

        fn keys(&self) -> Vec<&str> {
            self.0.map(|table| table.inner().keys().map(|key| key.as_str()).collect()).unwrap_or_default()
        }
    }
}
