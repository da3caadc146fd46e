//! TLS and mutual TLS on the API → writer gRPC hop, with certificates this
//! test generates (rcgen): a CA, a writer certificate for 127.0.0.1 and
//! localhost, and an API client certificate.

use std::path::Path;

use clima_api::ApiConfig;
use clima_broker::rabbitmq::{QueueType, RabbitMqArgs};
use clima_testkit::{TestPki, amqp_url};
use clima_writer::{
    ServerConfig,
    sinks::{RabbitMqSink, rabbitmq::RabbitMqSinkConfig},
};
use tokio::net::TcpListener;

use crate::helpers::{TestStack, post_json};

const TWEET: &str = r#"{"description":"Sol","country":"GT","weather":"Soleado"}"#;

fn writer_and_api_certificates() -> TestPki {
    let pki = TestPki::new();
    pki.issue("writer", &["127.0.0.1", "localhost"], false);
    pki.issue("api", &["clima-api"], true);
    pki
}

/// A RabbitMQ writer for `stack`'s exchange that requires TLS and client certificates.
async fn mutual_tls_writer(stack: &TestStack, pki: &TestPki) -> String {
    let broker = RabbitMqArgs {
        url: amqp_url(),
        exchange: stack.name.clone(),
        queue: stack.name.clone(),
        queue_type: QueueType::Quorum,
    };
    let config = ServerConfig {
        tls_cert: Some(pki.path("writer.pem")),
        tls_key: Some(pki.path("writer.key")),
        tls_client_ca: Some(pki.path("ca.pem")),
        ..ServerConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let sink = RabbitMqSink::new(broker, RabbitMqSinkConfig::default());
    tokio::spawn(clima_writer::serve(listener, sink, config, std::future::pending()));
    format!("https://localhost:{}", address.port())
}

async fn api(config: ApiConfig) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(clima_api::serve(listener, config, std::future::pending()));
    format!("http://{address}/input")
}

fn with_client_tls(writer: &str, ca: &Path, identity: Option<(&Path, &Path)>) -> ApiConfig {
    ApiConfig {
        writer_tls_ca: Some(ca.to_owned()),
        writer_tls_cert: identity.map(|(cert, _)| cert.to_owned()),
        writer_tls_key: identity.map(|(_, key)| key.to_owned()),
        ..ApiConfig::with_writers(vec![writer.to_owned()])
    }
}

#[tokio::test]
async fn the_api_reaches_a_writer_over_mutual_tls_and_nothing_else_gets_in() {
    let stack = TestStack::spawn().await;
    let pki = writer_and_api_certificates();
    let writer = mutual_tls_writer(&stack, &pki).await;
    let client = reqwest::Client::new();

    let trusted =
        api(with_client_tls(&writer, &pki.path("ca.pem"), Some((&pki.path("api.pem"), &pki.path("api.key"))))).await;
    let (status, answer) = post_json(&client, &trusted, TWEET).await;
    assert_eq!(status, 202, "{answer}");

    // No client certificate: the writer refuses the handshake.
    let anonymous = api(with_client_tls(&writer, &pki.path("ca.pem"), None)).await;
    assert_eq!(post_json(&client, &anonymous, TWEET).await.0, 503);
    // Plain text against a TLS port.
    let plain = api(ApiConfig::with_writers(vec![writer.replace("https://", "http://")])).await;
    assert_eq!(post_json(&client, &plain, TWEET).await.0, 503);
    // A client that does not trust the writer's CA.
    let other = writer_and_api_certificates();
    let untrusting =
        api(with_client_tls(&writer, &other.path("ca.pem"), Some((&pki.path("api.pem"), &pki.path("api.key"))))).await;
    assert_eq!(post_json(&client, &untrusting, TWEET).await.0, 503);

    // Only the one tweet that came over mutual TLS was published (to RabbitMQ, so Valkey).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while stack.valkey.read_counts(1).await.unwrap().total < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the tweet was not counted");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(stack.valkey.read_counts(1).await.unwrap().total, 1);
}
