use std::sync::atomic::{AtomicBool, Ordering};

use clima_broker::kafka::{KafkaConfig, trace_headers};
use clima_proto::v1::TweetRecord;
use clima_tweet::envelope;
use futures::future::try_join_all;
use rdkafka::{
    admin::AdminClient,
    client::DefaultClientContext,
    error::RDKafkaErrorCode,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
    util::Timeout,
};

use tracing::Instrument;

use super::KafkaSinkConfig;
use crate::{Sink, SinkError, sinks::Broker};

/// Publishes batches to a Kafka topic (acks=all), creating it if missing.
pub struct KafkaSink {
    broker: KafkaConfig,
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
    pub fn new(broker: KafkaConfig, config: KafkaSinkConfig) -> Result<Self, SinkError> {
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

    /// Produces one message holding `records` and waits for its acknowledgement.
    async fn publish_message(&self, records: &[TweetRecord]) -> Result<(), SinkError> {
        let topic = &self.broker.topic;
        let span = crate::sinks::publish_span(Broker::Kafka, topic, records);
        let payload = envelope::encode(records);
        let count = records.len().to_string();
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header { key: envelope::HEADER_CONTENT_TYPE, value: Some(envelope::CONTENT_TYPE) })
            .insert(Header { key: envelope::HEADER_TWEET_COUNT, value: Some(count.as_str()) });
        let mut headers = trace_headers::Inject(headers);
        clima_telemetry::propagation::inject(&span, &mut headers);
        // No key: counting needs no order, so librdkafka spreads messages over
        // the partitions (and so over the consumers of the group).
        let message = FutureRecord::<(), _>::to(topic).payload(&payload).headers(headers.0);
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
                if matches!(
                    source.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition)
                ) {
                    // Deleted under us: the next publish creates it again.
                    self.topic_ready.store(false, Ordering::Release);
                }
                Err(SinkError::KafkaDelivery { records: records.len(), source })
            }
        }
    }
}

/// Splits records into runs whose encoded batch stays within `max_bytes`
/// (a record bigger than that on its own still gets a message).
fn chunks_within(records: &[TweetRecord], max_bytes: usize) -> Vec<&[TweetRecord]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, record) in records.iter().enumerate() {
        let size = envelope::encoded_size(record);
        if index > start && bytes + size > max_bytes {
            chunks.push(&records[start..index]);
            (start, bytes) = (index, 0);
        }
        bytes += size;
    }
    if start < records.len() {
        chunks.push(&records[start..]);
    }
    chunks
}

impl Sink for KafkaSink {
    fn broker(&self) -> Broker {
        Broker::Kafka
    }

    fn destination(&self) -> &str {
        &self.broker.topic
    }

    async fn publish(&self, records: &[TweetRecord]) -> Result<(), SinkError> {
        self.ensure_topic().await?;
        let chunks = chunks_within(records, self.config.max_message_bytes);
        try_join_all(chunks.into_iter().map(|chunk| self.publish_message(chunk))).await?;
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
