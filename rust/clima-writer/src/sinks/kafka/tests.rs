//! Against the real Kafka-protocol broker of the local stack.

use std::time::Duration;

use clima_broker::kafka::KafkaArgs;
use clima_proto::v1::Weather;
use clima_testkit::{kafka_brokers, record, unique_name};
use clima_tweet::envelope;
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
    message::Headers,
};

use super::{KafkaSink, KafkaSinkConfig};
use crate::Sink;

fn broker(topic: &str) -> KafkaArgs {
    KafkaArgs {
        brokers: kafka_brokers(),
        topic: topic.to_owned(),
        partitions: 2,
        replication_factor: 1,
        options: Vec::new(),
    }
}

#[tokio::test]
async fn published_records_are_on_the_topic_keyed_by_country_with_headers() {
    let topic = unique_name("kafka-sink");
    let sink = KafkaSink::new(broker(&topic), KafkaSinkConfig::default()).unwrap();
    let records = vec![record("GT", Weather::Lluvioso), record("MX", Weather::Soleado), record("GT", Weather::Nublado)];
    sink.publish(&records).await.unwrap();

    let consumer: StreamConsumer = broker(&topic)
        .client_config()
        .set("group.id", unique_name("kafka-sink-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut seen = Vec::new();
    while seen.len() < records.len() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("records arrive within 30 s")
            .unwrap();
        let decoded = envelope::decode(message.payload().unwrap()).unwrap();
        let country = decoded.tweet.as_ref().unwrap().country.clone();
        assert_eq!(message.key(), Some(country.as_bytes()));
        let headers = message.headers().expect("headers are set");
        let header = |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(<[u8]>::to_vec);
        assert_eq!(header(envelope::HEADER_TWEET_ID), Some(decoded.id.clone().into_bytes()));
        assert_eq!(header(envelope::HEADER_CONTENT_TYPE), Some(envelope::CONTENT_TYPE.as_bytes().to_vec()));
        seen.push(decoded);
    }
    seen.sort_by(|a, b| a.id.cmp(&b.id));
    let mut expected = records;
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(seen, expected);
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
