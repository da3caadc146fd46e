//! Replicas of one broker's writer behind one `--writer a|b|c`: calls go to
//! them in turn, one that is down is skipped, and every request is still
//! published exactly once.

use clima_api::ApiConfig;
use clima_broker::rabbitmq::{QueueType, RabbitMqConfig};
use clima_testkit::{amqp_url, unique_name};
use clima_writer::{
    ServerConfig,
    sinks::{RabbitMqSink, rabbitmq::RabbitMqSinkConfig},
};
use tokio::net::TcpListener;

use crate::helpers::post_json;

/// A RabbitMQ writer publishing to an exchange and queue of its own; its endpoint.
async fn writer(broker: RabbitMqConfig) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let sink = RabbitMqSink::new(broker, RabbitMqSinkConfig::default());
    tokio::spawn(clima_writer::serve(listener, sink, ServerConfig::default(), std::future::pending()));
    format!("http://{address}")
}

#[tokio::test]
async fn an_api_spreads_one_brokers_calls_over_its_writer_replicas() {
    let brokers: Vec<RabbitMqConfig> = (0..2)
        .map(|_| {
            let name = unique_name("replica");
            RabbitMqConfig { url: amqp_url(), exchange: name.clone(), queue: name, queue_type: QueueType::Quorum }
        })
        .collect();
    // A replica that is down (nothing listens there) must cost no request.
    let down = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let endpoints = [writer(brokers[0].clone()).await, format!("http://{down}"), writer(brokers[1].clone()).await];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/input", listener.local_addr().unwrap());
    let config = ApiConfig::with_writers(vec![endpoints.join("|")]);
    tokio::spawn(clima_api::serve(listener, config, std::future::pending()));

    let client = reqwest::Client::new();
    let tweet = r#"{"description":"Sol","country":"GT","weather":"Soleado"}"#;
    for _ in 0..40 {
        let (status, answer) = post_json(&client, &url, tweet).await;
        assert_eq!(status, 202, "{answer}");
    }

    // One request after another: one message each, in one replica's queue or the other's.
    let connection = brokers[0].connect("clima-test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut depths = Vec::new();
    for broker in &brokers {
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let queue = channel.queue_declare(broker.queue.as_str().into(), passive, Default::default()).await.unwrap();
        depths.push(queue.message_count());
        channel.queue_delete(broker.queue.as_str().into(), Default::default()).await.unwrap();
    }
    assert_eq!(depths.iter().sum::<u32>(), 40, "{depths:?}");
    assert!(depths.iter().all(|&depth| depth > 0), "one replica got every call: {depths:?}");
}
