//! Against the real RabbitMQ of the local stack.

use clima_broker::rabbitmq::{QueueType, RabbitMqConfig};
use clima_proto::v1::Weather;
use clima_testkit::{amqp_url, record, unique_name};
use clima_tweet::envelope;
use lapin::{
    options::{BasicGetOptions, QueueDeleteOptions},
    types::AMQPValue,
};

use super::{RabbitMqSink, RabbitMqSinkConfig};
use crate::{Sink, SinkError};

fn broker() -> RabbitMqConfig {
    let name = unique_name("rabbitmq-sink");
    RabbitMqConfig { url: amqp_url(), exchange: name.clone(), queue: name, queue_type: QueueType::Quorum }
}

#[tokio::test]
async fn a_publish_is_one_persistent_confirmed_message_holding_every_record() {
    let broker = broker();
    let sink = RabbitMqSink::new(broker.clone(), RabbitMqSinkConfig::default());
    let records = vec![record("AR", Weather::Soleado), record("CL", Weather::Lluvioso)];
    sink.publish(&records).await.unwrap();

    let connection = broker.connect("clima-test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let message = channel
        .basic_get(broker.queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("message is queued");
    let properties = &message.delivery.properties;
    let content_type = properties.content_type().as_ref().map(|t| t.as_str());
    assert_eq!(content_type, Some(envelope::CONTENT_TYPE));
    assert_eq!(envelope::decode(content_type, &message.delivery.data).unwrap(), records);
    assert_eq!(properties.delivery_mode(), &Some(2));
    let headers = properties.headers().as_ref().unwrap();
    assert_eq!(headers.inner().get(envelope::HEADER_TWEET_COUNT), Some(&AMQPValue::LongLongInt(2)));
    let next = channel.basic_get(broker.queue.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap();
    assert!(next.is_none(), "one message for the whole publish");
    channel.queue_delete(broker.queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
}

#[tokio::test]
async fn unroutable_records_fail_the_publish() {
    let broker = broker();
    let sink = RabbitMqSink::new(broker.clone(), RabbitMqSinkConfig::default());
    sink.check().await.unwrap();
    // Someone deletes the queue: the exchange has nowhere to route to.
    let connection = broker.connect("clima-test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.queue_delete(broker.queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();

    let error = sink.publish(&[record("PE", Weather::Nublado)]).await.unwrap_err();
    assert!(matches!(error, SinkError::RabbitMqUnroutable { .. }), "{error}");
}

#[tokio::test]
async fn unreachable_broker_fails_the_publish() {
    let mut broker = broker();
    broker.url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let sink = RabbitMqSink::new(broker, RabbitMqSinkConfig::default());
    assert!(sink.publish(&[record("PE", Weather::Nublado)]).await.is_err());
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_never_shown() {
    let mut broker = broker();
    broker.url = amqp_url().replacen(":guest@", ":not-the-password@", 1);
    assert_ne!(broker.url, amqp_url(), "the test URL carries guest's password");
    let sink = RabbitMqSink::new(broker, RabbitMqSinkConfig::default());
    let error = sink.check().await.expect_err("RabbitMQ refuses a wrong password");
    assert!(!error.to_string().contains("not-the-password"), "{error}");
}

#[tokio::test]
async fn a_cluster_url_publishes_through_a_node_that_answers() {
    // The nodes of a cluster, the first one gone (nothing listens there): every
    // (re)connection tries the next node, so a publish never waits for it.
    let live = broker();
    let gone = format!("amqp://guest:guest@127.0.0.1:{}/%2f", clima_testkit::free_port());
    let cluster = RabbitMqConfig { url: format!("{gone},{}", live.url), ..live.clone() };
    let sink = RabbitMqSink::new(cluster.clone(), RabbitMqSinkConfig::default());
    for country in ["AR", "CL", "PE"] {
        // A fresh sink connects anew each time, starting one node further.
        let sink = RabbitMqSink::new(cluster.clone(), RabbitMqSinkConfig::default());
        sink.publish(&[record(country, Weather::Soleado)]).await.unwrap();
    }
    sink.check().await.unwrap();

    let channel = live.connect("clima-test").await.unwrap().create_channel().await.unwrap();
    for _ in 0..3 {
        let message = channel.basic_get(live.queue.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap();
        assert!(message.is_some(), "each publish reached the live node");
    }
    channel.queue_delete(live.queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
}
