//! Against the real Kafka-protocol broker of the local stack.

use std::time::Duration;

use clima_broker::kafka::KafkaConfig;
use clima_proto::v1::{TweetRecord, Weather};
use clima_testkit::{kafka_brokers, record, unique_name};
use clima_tweet::envelope;
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
    message::Headers,
};

use super::{KafkaSink, KafkaSinkConfig};
use crate::Sink;

fn broker(topic: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: kafka_brokers(),
        topic: topic.to_owned(),
        partitions: 2,
        replication_factor: 1,
        options: Vec::new(),
    }
}

/// Reads `topic` from the start until `records` records arrived; returns
/// them with the number of messages that carried them.
async fn read_back(topic: &str, records: usize) -> (Vec<TweetRecord>, usize) {
    let consumer: StreamConsumer = broker(topic)
        .client_config()
        .set("group.id", unique_name("kafka-sink-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let (mut seen, mut messages) = (Vec::new(), 0);
    while seen.len() < records {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("records arrive within 30 s")
            .unwrap();
        assert_eq!(message.key(), None, "batches have no key");
        let headers = message.headers().expect("headers are set");
        let header = |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(<[u8]>::to_vec);
        let content_type = header(envelope::HEADER_CONTENT_TYPE).map(|value| String::from_utf8(value).unwrap());
        assert_eq!(content_type.as_deref(), Some(envelope::CONTENT_TYPE));
        let decoded = envelope::decode(content_type.as_deref(), message.payload().unwrap()).unwrap();
        assert_eq!(header(envelope::HEADER_TWEET_COUNT), Some(decoded.len().to_string().into_bytes()));
        seen.extend(decoded);
        messages += 1;
    }
    seen.sort_by(|a, b| a.id.cmp(&b.id));
    (seen, messages)
}

#[tokio::test]
async fn a_publish_is_one_message_holding_every_record() {
    let topic = unique_name("kafka-sink");
    let sink = KafkaSink::new(broker(&topic), KafkaSinkConfig::default()).unwrap();
    let mut records =
        vec![record("GT", Weather::Lluvioso), record("MX", Weather::Soleado), record("GT", Weather::Nublado)];
    sink.publish(&records).await.unwrap();

    let (seen, messages) = read_back(&topic, records.len()).await;
    records.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(seen, records);
    assert_eq!(messages, 1);
}

#[tokio::test]
async fn batches_above_the_message_size_limit_are_split() {
    let topic = unique_name("kafka-sink-split");
    let one_record = envelope::encode(&[record("GT", Weather::Lluvioso)]).len();
    // Room for two records per message, not three.
    let config = KafkaSinkConfig { max_message_bytes: one_record * 2 + one_record / 2, ..KafkaSinkConfig::default() };
    let sink = KafkaSink::new(broker(&topic), config).unwrap();
    let mut records: Vec<TweetRecord> = (0..5).map(|_| record("GT", Weather::Lluvioso)).collect();
    sink.publish(&records).await.unwrap();

    let (seen, messages) = read_back(&topic, records.len()).await;
    records.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(seen, records);
    assert_eq!(messages, 3, "5 records, at most 2 per message");
}

#[tokio::test]
async fn check_creates_the_topic_and_is_idempotent() {
    let topic = unique_name("kafka-check");
    let sink = KafkaSink::new(broker(&topic), KafkaSinkConfig::default()).unwrap();
    sink.check().await.unwrap();
    sink.check().await.unwrap();
    let consumer: StreamConsumer = broker(&topic).client_config().create().unwrap();
    let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).unwrap();
    assert_eq!(metadata.topics()[0].partitions().len(), 2);
}
