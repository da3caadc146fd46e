use std::sync::atomic::{AtomicU64, Ordering};

use clima_broker::rabbitmq::{ROUTING_KEY, RabbitMqConfig, trace_headers};
use clima_proto::v1::TweetRecord;
use clima_tweet::envelope;
use lapin::{
    BasicProperties, Channel, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
};
use tokio::sync::Mutex;
use tracing::Instrument;

use super::RabbitMqSinkConfig;
use crate::{Sink, SinkError, sinks::Broker};

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// Publishes batches to a RabbitMQ exchange with publisher confirms,
/// persistent and mandatory, declaring the exchange and its queue.
pub struct RabbitMqSink {
    broker: RabbitMqConfig,
    config: RabbitMqSinkConfig,
    /// The open connection and its confirm-mode channel; replaced after a
    /// failure, on the next publish or health check.
    link: Mutex<Option<Link>>,
    /// Links opened so far: the next one's generation.
    links_opened: AtomicU64,
}

struct Link {
    connection: Connection,
    channel: Channel,
    /// Which link this is: a nack replaces only the link that nacked.
    generation: u64,
}

impl RabbitMqSink {
    /// Does not connect yet: the first publish or [`Sink::check`] does.
    pub fn new(broker: RabbitMqConfig, config: RabbitMqSinkConfig) -> Self {
        Self { broker, config, link: Mutex::new(None), links_opened: AtomicU64::new(0) }
    }

    /// The confirm-mode channel and its link's generation, (re)connecting
    /// and declaring the topology if needed.
    async fn channel(&self) -> Result<(Channel, u64), SinkError> {
        let mut link = self.link.lock().await;
        if let Some(open) = link.as_ref()
            && open.connection.status().connected()
            && open.channel.status().connected()
        {
            return Ok((open.channel.clone(), open.generation));
        }
        *link = None;
        let generation = self.links_opened.fetch_add(1, Ordering::Relaxed);
        let connection = self.broker.connect("clima-writer").await?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        self.broker.declare_topology(&channel).await?;
        *link = Some(Link { connection, channel: channel.clone(), generation });
        Ok((channel, generation))
    }

    /// Publishes the records as one persistent message and waits for its confirm.
    async fn publish_confirmed(&self, channel: &Channel, records: &[TweetRecord]) -> Result<(), SinkError> {
        let exchange = &self.broker.exchange;
        let span = crate::sinks::publish_span(Broker::RabbitMq, exchange, records);
        span.record("messaging.rabbitmq.destination.routing_key", ROUTING_KEY);
        let mut headers = FieldTable::default();
        headers.insert(envelope::HEADER_TWEET_COUNT.into(), AMQPValue::LongLongInt(records.len() as i64));
        // The consumer's batch span links here; each tweet's own trace travels in its record.
        clima_telemetry::propagation::inject(&span, &mut trace_headers::Inject(&mut headers));
        // A message id of its own lets consumers recognise a redelivery of it
        // after they counted it (the store's unacked-message journal).
        let properties = BasicProperties::default()
            .with_message_id(uuid::Uuid::now_v7().to_string().into())
            .with_delivery_mode(PERSISTENT)
            .with_content_type(envelope::CONTENT_TYPE.into())
            .with_headers(headers);
        let payload = envelope::encode(records);
        // mandatory: a message no queue takes comes back instead of vanishing.
        let mandatory = BasicPublishOptions { mandatory: true, ..Default::default() };
        let confirmed = async {
            let confirm = channel
                .basic_publish(exchange.as_str().into(), ROUTING_KEY.into(), mandatory, &payload, properties)
                .await?;
            confirm_of(records.len(), confirm.await?)
        }
        .instrument(span.clone())
        .await;
        if confirmed.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        confirmed
    }
}

/// A publish is confirmed when RabbitMQ acked it without returning it: a
/// returned message means no queue took it.
fn confirm_of(records: usize, confirmation: lapin::Confirmation) -> Result<(), SinkError> {
    if !confirmation.is_ack() {
        return Err(SinkError::RabbitMqNack { records });
    }
    match confirmation.take_message() {
        Some(returned) => Err(SinkError::RabbitMqUnroutable {
            records,
            reply: format!("{} {}", returned.reply_code, returned.reply_text),
        }),
        None => Ok(()),
    }
}

impl Sink for RabbitMqSink {
    fn broker(&self) -> Broker {
        Broker::RabbitMq
    }

    fn destination(&self) -> &str {
        &self.broker.exchange
    }

    async fn publish(&self, records: &[TweetRecord]) -> Result<(), SinkError> {
        let timeout = self.config.confirm_timeout;
        let mut used = None;
        let publish = async {
            let (channel, generation) = self.channel().await?;
            used = Some(generation);
            self.publish_confirmed(&channel, records).await
        };
        let result = match tokio::time::timeout(timeout, publish).await {
            Ok(result) => result,
            Err(_) => Err(SinkError::Timeout { broker: Broker::RabbitMq.as_str(), timeout }),
        };
        if matches!(result, Err(SinkError::RabbitMqNack { .. })) {
            // A channel whose queue lost its leader node keeps refusing after
            // the cluster elected another (about 10 s on RabbitMQ 3.10, seen
            // under ci/faults rabbitmq-cluster): the next publish connects anew.
            // Only if the link is still the one that nacked: other publishes'
            // nacks from it must not drop its successor.
            let mut link = self.link.lock().await;
            if link.as_ref().is_some_and(|open| Some(open.generation) == used) {
                *link = None;
            }
        }
        result
    }

    async fn check(&self) -> Result<(), SinkError> {
        self.channel().await.map(drop)
    }
}
