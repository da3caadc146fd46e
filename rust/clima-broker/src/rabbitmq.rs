//! RabbitMQ: a durable direct exchange routing to one durable queue.

use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};

use crate::BrokerError;

/// Routing key of tweet messages on the exchange.
pub const ROUTING_KEY: &str = "tweet";

/// The type of the queue clima declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// Raft-replicated; the durable choice, and faster with confirms here.
    #[default]
    Quorum,
    /// Single-node classic queue.
    Classic,
}

/// How long one node may take to accept a connection before the next is tried.
pub const NODE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Default of `--amqp-url` (guest/guest is for local development only).
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default of `--rabbitmq-exchange`.
pub const DEFAULT_EXCHANGE: &str = "tweets-clima";
/// Default of `--rabbitmq-queue`.
pub const DEFAULT_QUEUE: &str = "tweets-clima";

/// How to reach RabbitMQ and the topology tweets travel through (the
/// `clima` binary's `--amqp-url` and `--rabbitmq-*` flags).
#[derive(Debug, Clone)]
pub struct RabbitMqConfig {
    /// AMQP 0.9.1 URL, credentials included; several, comma separated, are
    /// the nodes of one cluster (see [`Self::connect`]).
    pub url: String,
    /// The exchange tweets are published to.
    pub exchange: String,
    /// The queue bound to the exchange, consumed by the RabbitMQ consumer.
    pub queue: String,
    /// The type of the queue when clima declares it.
    pub queue_type: QueueType,
}

impl Default for RabbitMqConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.to_owned(),
            exchange: DEFAULT_EXCHANGE.to_owned(),
            queue: DEFAULT_QUEUE.to_owned(),
            queue_type: QueueType::default(),
        }
    }
}

impl RabbitMqConfig {
    /// Opens a connection named after the clima service using it (shown in the
    /// management UI). Where the URL lists a cluster's nodes, each call starts
    /// one node further, and tries them all in turn: a client that lost its node
    /// reconnects to another at once, and a process's connections spread over
    /// the cluster (a quorum queue answers on every node).
    pub async fn connect(&self, connection_name: &str) -> Result<Connection, BrokerError> {
        static NEXT_NODE: AtomicUsize = AtomicUsize::new(0);
        let nodes = self.nodes();
        let first = NEXT_NODE.fetch_add(1, Ordering::Relaxed);
        let mut failed = BrokerError::NoRabbitMqNode;
        for turn in 0..nodes.len() {
            let node = nodes[(first + turn) % nodes.len()];
            let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
            // A node whose packets are dropped (a deleted pod's address) would
            // hold the attempt for the kernel's TCP timeout, minutes.
            failed = match tokio::time::timeout(NODE_CONNECT_TIMEOUT, Connection::connect(node, properties)).await {
                Ok(Ok(connection)) => return Ok(connection),
                Ok(Err(error)) => BrokerError::RabbitMq(error),
                Err(_) => BrokerError::RabbitMqConnectTimeout { node: redacted(node).to_owned() },
            };
            if nodes.len() > 1 {
                tracing::warn!(node = redacted(node), error = %failed, "rabbitmq node unreachable; trying the next");
            }
        }
        Err(failed)
    }

    /// The URLs of the nodes to connect to, in the order given.
    pub fn nodes(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).filter(|node| !node.is_empty()).collect()
    }

    /// Declares a durable queue of the configured type (idempotent). Every
    /// queue clima needs is declared so: a classic queue lives on one node,
    /// and while that node is down nobody can declare or use it.
    pub async fn declare_queue(&self, channel: &Channel, queue: &str) -> Result<(), BrokerError> {
        let mut arguments = FieldTable::default();
        let queue_type = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        arguments.insert("x-queue-type".into(), AMQPValue::LongString(queue_type.into()));
        channel.queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments).await?;
        Ok(())
    }

    /// Declares the exchange, the queue and their binding (idempotent).
    pub async fn declare_topology(&self, channel: &Channel) -> Result<(), BrokerError> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare(self.exchange.as_str().into(), ExchangeKind::Direct, durable, FieldTable::default())
            .await?;
        self.declare_queue(channel, &self.queue).await?;
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

/// A node's URL without its credentials, for logs.
fn redacted(url: &str) -> &str {
    url.rsplit_once('@').map_or(url, |(_, host)| host)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_url_lists_a_clusters_nodes() {
        let config = RabbitMqConfig {
            url: "amqp://u:p@a:5672/%2f, amqp://u:p@b:5672/%2f,".to_owned(),
            ..RabbitMqConfig::default()
        };
        assert_eq!(config.nodes(), ["amqp://u:p@a:5672/%2f", "amqp://u:p@b:5672/%2f"]);
        assert_eq!(RabbitMqConfig::default().nodes(), [DEFAULT_URL]);
        assert_eq!(redacted("amqp://u:p@a:5672/%2f"), "a:5672/%2f");
    }
}
