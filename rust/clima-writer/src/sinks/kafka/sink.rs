use std::sync::atomic::{AtomicBool, Ordering};

use clima_broker::kafka::{KafkaArgs, trace_headers};
use clima_proto::v1::TweetRecord;
use clima_tweet::envelope;
use futures::future::try_join_all;
use rdkafka::{
    admin::AdminClient,
    client::DefaultClientContext,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
    util::Timeout,
};

use tracing::Instrument;

use super::KafkaSinkConfig;
use crate::{Sink, SinkError};

pub struct KafkaSink {
    broker: KafkaArgs,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Set once the topic is known to exist: producing to a missing topic
    /// would only fail after the delivery timeout.
    topic_ready: AtomicBool,
    config: KafkaSinkConfig,
}

impl KafkaSink {
    /// Creates the producer; it connects in the background, so this does not
    /// wait for the broker (see [`Sink::check`]).
    pub fn new(broker: KafkaArgs, config: KafkaSinkConfig) -> Result<Self, SinkError> {
        let producer = broker
            .client_config()
            // Durability: every in-sync replica has the record before it is acked,
            // and (idempotence) producer retries never duplicate or reorder it.
            .set("acks", "all")
            .set("enable.idempotence", config.idempotence.to_string())
            .set("linger.ms", config.linger.as_millis().to_string())
            .set("message.timeout.ms", config.delivery_timeout.as_millis().to_string())
            .set("compression.type", &config.compression)
            .create()
            .map_err(clima_broker::BrokerError::from)?;
        let admin = broker.admin()?;
        Ok(Self { broker, producer, admin, topic_ready: AtomicBool::new(false), config })
    }

    async fn ensure_topic(&self) -> Result<(), SinkError> {
        if !self.topic_ready.load(Ordering::Acquire) {
            self.broker.ensure_topic(&self.admin).await?;
            self.topic_ready.store(true, Ordering::Release);
        }
        Ok(())
    }

    async fn publish_one(&self, record: &TweetRecord) -> Result<(), SinkError> {
        // Keyed by country: one country's tweets stay in order on one partition.
        let key = record.tweet.as_ref().map_or("", |tweet| tweet.country.as_str());
        let topic = &self.broker.topic;
        let span = crate::sinks::publish_span("kafka", topic, &record.id);
        span.record("messaging.kafka.message.key", key);
        let payload = envelope::encode(record);
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header { key: envelope::HEADER_CONTENT_TYPE, value: Some(envelope::CONTENT_TYPE) })
            .insert(Header { key: envelope::HEADER_TWEET_ID, value: Some(record.id.as_str()) });
        // The consumer's process span becomes a child of this publish span.
        let mut headers = trace_headers::Inject(headers);
        clima_telemetry::propagation::inject(&span, &mut headers);
        let message = FutureRecord::to(topic).key(key).payload(&payload).headers(headers.0);
        let delivered =
            self.producer.send(message, Timeout::After(self.config.delivery_timeout)).instrument(span.clone()).await;
        match delivered {
            Ok(delivery) => {
                span.record("messaging.destination.partition.id", delivery.partition);
                span.record("messaging.kafka.offset", delivery.offset);
                Ok(())
            }
            Err((source, _message)) => {
                span.record("otel.status_code", "ERROR");
                Err(SinkError::KafkaDelivery { id: record.id.clone(), source })
            }
        }
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn publish(&self, records: &[TweetRecord]) -> Result<(), SinkError> {
        self.ensure_topic().await?;
        // All records are enqueued before any is awaited, so they share batches.
        try_join_all(records.iter().map(|record| self.publish_one(record))).await?;
        Ok(())
    }

    async fn check(&self) -> Result<(), SinkError> {
        if !self.topic_ready.load(Ordering::Acquire) {
            return self.ensure_topic().await;
        }
        // The topic exists: asking for its metadata proves the broker answers.
        let client = self.producer.clone();
        let topic = self.broker.topic.clone();
        tokio::task::spawn_blocking(move || {
            client.client().fetch_metadata(Some(&topic), std::time::Duration::from_secs(5)).map(drop)
        })
        .await
        .expect("metadata lookup does not panic")
        .map_err(|error| SinkError::Broker(error.into()))
    }
}
