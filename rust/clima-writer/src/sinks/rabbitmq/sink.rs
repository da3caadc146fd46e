use clima_broker::rabbitmq::{ROUTING_KEY, RabbitMqArgs, trace_headers};
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
use crate::{Sink, SinkError};

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

pub struct RabbitMqSink {
    broker: RabbitMqArgs,
    config: RabbitMqSinkConfig,
    /// The open connection and its confirm-mode channel; replaced after a
    /// failure, on the next publish or health check.
    link: Mutex<Option<Link>>,
}

struct Link {
    connection: Connection,
    channel: Channel,
}

impl RabbitMqSink {
    /// Does not connect yet: the first publish or [`Sink::check`] does.
    pub fn new(broker: RabbitMqArgs, config: RabbitMqSinkConfig) -> Self {
        Self { broker, config, link: Mutex::new(None) }
    }

    /// The confirm-mode channel, (re)connecting and declaring the topology if needed.
    async fn channel(&self) -> Result<Channel, SinkError> {
        let mut link = self.link.lock().await;
        if let Some(open) = link.as_ref() {
            if open.connection.status().connected() && open.channel.status().connected() {
                return Ok(open.channel.clone());
            }
        }
        *link = None;
        let connection = self.broker.connect("clima-writer").await?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        self.broker.declare_topology(&channel).await?;
        *link = Some(Link { connection, channel: channel.clone() });
        Ok(channel)
    }

    async fn publish_confirmed(&self, channel: &Channel, records: &[TweetRecord]) -> Result<(), SinkError> {
        let mandatory = BasicPublishOptions { mandatory: true, ..Default::default() };
        let mut confirms = Vec::with_capacity(records.len());
        // Publish everything first, then await the confirms: one round trip per request, not per tweet.
        let exchange = &self.broker.exchange;
        for record in records {
            let span = crate::sinks::publish_span("rabbitmq", exchange, &record.id);
            span.record("messaging.rabbitmq.destination.routing_key", ROUTING_KEY);
            let mut headers = FieldTable::default();
            headers.insert(envelope::HEADER_TWEET_ID.into(), AMQPValue::LongString(record.id.as_str().into()));
            // The consumer's process span becomes a child of this publish span.
            clima_telemetry::propagation::inject(&span, &mut trace_headers::Inject(&mut headers));
            let properties = BasicProperties::default()
                .with_delivery_mode(PERSISTENT)
                .with_content_type(envelope::CONTENT_TYPE.into())
                .with_message_id(record.id.as_str().into())
                .with_headers(headers);
            let payload = envelope::encode(record);
            let confirm = channel
                .basic_publish(exchange.as_str().into(), ROUTING_KEY.into(), mandatory, &payload, properties)
                .instrument(span.clone())
                .await?;
            confirms.push((record, confirm, span));
        }
        for (record, confirm, span) in confirms {
            let confirmed = confirm_of(record, confirm.instrument(span.clone()).await?);
            if confirmed.is_err() {
                span.record("otel.status_code", "ERROR");
            }
            confirmed?;
        }
        Ok(())
    }
}

/// A publish is confirmed when RabbitMQ acked it without returning it: a
/// returned message means no queue took it.
fn confirm_of(record: &TweetRecord, confirmation: lapin::Confirmation) -> Result<(), SinkError> {
    if !confirmation.is_ack() {
        return Err(SinkError::RabbitMqNack { id: record.id.clone() });
    }
    match confirmation.take_message() {
        Some(returned) => Err(SinkError::RabbitMqUnroutable {
            id: record.id.clone(),
            reply: format!("{} {}", returned.reply_code, returned.reply_text),
        }),
        None => Ok(()),
    }
}

impl Sink for RabbitMqSink {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    async fn publish(&self, records: &[TweetRecord]) -> Result<(), SinkError> {
        let timeout = self.config.confirm_timeout;
        let publish = async {
            let channel = self.channel().await?;
            self.publish_confirmed(&channel, records).await
        };
        match tokio::time::timeout(timeout, publish).await {
            Ok(result) => result,
            Err(_) => Err(SinkError::Timeout { broker: "rabbitmq", timeout }),
        }
    }

    async fn check(&self) -> Result<(), SinkError> {
        self.channel().await.map(drop)
    }
}
