//! Who gets in: TLS and mutual TLS on the API → writer gRPC hop and on the
//! dashboard, with certificates these tests generate (rcgen), and the API
//! keys that writers and the dashboard can require.

use std::{net::SocketAddr, path::Path, time::Duration};

use clima_api::ApiConfig;
use clima_broker::rabbitmq::{QueueType, RabbitMqConfig};
use clima_dashboard::{Access, StoreReader, Stores};
use clima_proto::v1::{
    GetStatsRequest, PublishRequest, Tweet, TweetRecord, Weather, stats_service_client::StatsServiceClient,
    writer_service_client::WriterServiceClient,
};
use clima_store::KeySchema;
use clima_testkit::{TestPki, amqp_url, redis_url, unique_name, valkey_url};
use clima_writer::{
    ServerConfig,
    sinks::{RabbitMqSink, rabbitmq::RabbitMqSinkConfig},
};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, ClientTlsConfig};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

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
    let config = ServerConfig {
        tls_cert: Some(pki.path("writer.pem")),
        tls_key: Some(pki.path("writer.key")),
        tls_client_ca: Some(pki.path("ca.pem")),
        ..ServerConfig::default()
    };
    let port = rabbitmq_writer(stack, config).await.port();
    format!("https://localhost:{port}")
}

/// A RabbitMQ writer for `stack`'s exchange with `config`; its address.
async fn rabbitmq_writer(stack: &TestStack, config: ServerConfig) -> SocketAddr {
    let broker = RabbitMqConfig {
        url: amqp_url(),
        exchange: stack.name.clone(),
        queue: stack.name.clone(),
        queue_type: QueueType::Quorum,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let sink = RabbitMqSink::new(broker, RabbitMqSinkConfig::default());
    tokio::spawn(clima_writer::serve(listener, sink, config, std::future::pending()));
    address
}

/// Waits until Valkey counted `total` tweets of `stack`, then checks no more arrive.
async fn valkey_counts_exactly(stack: &TestStack, total: u64) {
    let counted = clima_testkit::eventually(Duration::from_secs(30), || async {
        (stack.valkey.read_counts(1).await.unwrap().total >= total).then_some(())
    });
    assert!(counted.await.is_some(), "{total} tweets not counted in 30 s");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stack.valkey.read_counts(1).await.unwrap().total, total);
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
    valkey_counts_exactly(&stack, 1).await;
}

#[tokio::test]
async fn a_writer_with_an_api_key_publishes_only_for_callers_that_present_it() {
    let stack = TestStack::spawn().await;
    let key_file = std::env::temp_dir().join(format!("{}.writer-key", stack.name));
    std::fs::write(&key_file, "writer-s3cret\n").unwrap();
    let writer =
        rabbitmq_writer(&stack, ServerConfig { api_key_file: Some(key_file.clone()), ..ServerConfig::default() }).await;
    let endpoint = format!("http://{writer}");
    let client = reqwest::Client::new();
    let with_key = |key: Option<&str>| ApiConfig {
        writer_api_key: key.map(str::to_owned),
        ..ApiConfig::with_writers(vec![endpoint.clone()])
    };

    let (status, answer) = post_json(&client, &api(with_key(Some("writer-s3cret"))).await, TWEET).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(post_json(&client, &api(with_key(None)).await, TWEET).await.0, 503);
    assert_eq!(post_json(&client, &api(with_key(Some("writer-s3cre"))).await, TWEET).await.0, 503);

    // Straight to the writer, as grpcurl would: Publish needs the key, health does not.
    let channel = tonic::transport::Endpoint::from_shared(endpoint).unwrap().connect().await.unwrap();
    let record = TweetRecord {
        id: uuid::Uuid::new_v4().to_string(),
        tweet: Some(Tweet { description: "x".into(), country: "GT".into(), weather: Weather::Soleado.into() }),
        received_at: Some(timestamp_now()),
        ..TweetRecord::default()
    };
    let publish = WriterServiceClient::new(channel.clone()).publish(PublishRequest { records: vec![record] }).await;
    assert_eq!(publish.unwrap_err().code(), tonic::Code::Unauthenticated);
    let health = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await;
    assert!(health.is_ok(), "{health:?}");

    valkey_counts_exactly(&stack, 1).await;
    std::fs::remove_file(key_file).unwrap();
}

/// Now, as the API stamps `received_at`.
fn timestamp_now() -> pbjson_types::Timestamp {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    pbjson_types::Timestamp { seconds: now.as_secs() as i64, nanos: 0 }
}

/// `GET path` over TLS (HTTP/1.1) with the extra `headers`: the status and the response head.
async fn https_get(address: SocketAddr, ca: &Path, path: &str, headers: &str) -> std::io::Result<(u16, String)> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let stream = tokio::net::TcpStream::connect(address).await?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut stream = connector.connect(ServerName::try_from("localhost").unwrap(), stream).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    Ok((status, answer))
}

#[tokio::test]
async fn the_dashboard_serves_tls_and_asks_for_its_key() {
    use clima_http::{auth::ApiKey, tls::TlsFiles};
    let pki = TestPki::new();
    pki.issue("dashboard", &["localhost"], false);
    let serve = |client_ca: Option<std::path::PathBuf>| {
        let files = TlsFiles { cert: pki.path("dashboard.pem"), key: pki.path("dashboard.key"), client_ca };
        let access =
            Access { tls: Some(files.acceptor().unwrap()), api_key: ApiKey::load(Some("dash-s3cret"), None).unwrap() };
        async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let keys = KeySchema::new(unique_name("dash"));
            let stores = Stores::new(StoreReader::new(redis_url(), keys.clone()), StoreReader::new(valkey_url(), keys));
            tokio::spawn(clima_dashboard::serve(listener, stores, access, std::future::pending()));
            address
        }
    };
    let dashboard = serve(None).await;
    let ca = pki.path("ca.pem");

    let (status, head) = https_get(dashboard, &ca, "/api/stats", "").await.unwrap();
    assert_eq!(status, 401, "{head}");
    assert!(head.to_ascii_lowercase().contains("www-authenticate: basic"), "a browser gets a login prompt: {head}");
    for page in ["/", "/api/stats"] {
        assert_eq!(https_get(dashboard, &ca, page, "authorization: Bearer dash-s3cret\r\n").await.unwrap().0, 200);
    }
    // What a browser sends after its prompt: any user, the key as password.
    assert_eq!(
        https_get(dashboard, &ca, "/api/stats", "authorization: Basic bWU6ZGFzaC1zM2NyZXQ=\r\n").await.unwrap().0,
        200
    );
    assert_eq!(https_get(dashboard, &ca, "/healthz", "").await.unwrap().0, 200, "probes need no key");

    // gRPC over TLS: StatsService needs the key.
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(&ca).unwrap()));
    let channel = tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", dashboard.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut stats = StatsServiceClient::new(channel);
    assert_eq!(stats.get_stats(GetStatsRequest::default()).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(GetStatsRequest::default());
    request.metadata_mut().insert("authorization", "Bearer dash-s3cret".parse().unwrap());
    assert!(stats.get_stats(request).await.is_ok());

    // Plain HTTP gets no answer from a TLS port.
    let plain = reqwest::Client::new().get(format!("http://{dashboard}/healthz")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // With a client CA, a client without a certificate is turned away in the handshake.
    let mutual = serve(Some(pki.path("ca.pem"))).await;
    assert!(https_get(mutual, &ca, "/healthz", "").await.is_err(), "no client certificate, yet answered");
}
