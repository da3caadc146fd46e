use std::{net::SocketAddr, time::Duration};

use clima_api::ApiConfig;
use clima_broker::{
    kafka::KafkaConfig,
    rabbitmq::{QueueType, RabbitMqConfig},
};
use clima_consumer::{BatchConfig, kafka::KafkaSourceConfig, rabbitmq::RabbitMqSourceConfig};
use clima_store::{CounterStore, Counts, KeySchema, Retention};
use clima_testkit::{amqp_url, eventually, kafka_brokers, redis_url, unique_name, valkey_url};
use clima_writer::{
    ServerConfig,
    sinks::{KafkaSink, RabbitMqSink, kafka::KafkaSinkConfig, rabbitmq::RabbitMqSinkConfig},
};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The whole pipeline with names (topic, queue, key prefix) of its own.
pub(crate) struct TestStack {
    pub api: String,
    /// Key prefix (and topic, queue, group name) of this stack.
    pub name: String,
    pub kafka_writer: SocketAddr,
    pub rabbitmq_writer: SocketAddr,
    pub redis: CounterStore,
    pub valkey: CounterStore,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for TestStack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

fn writer_config() -> ServerConfig {
    ServerConfig { health_interval: Duration::from_millis(200), ..ServerConfig::default() }
}

impl TestStack {
    pub(crate) async fn spawn() -> Self {
        clima_testkit::test_log();
        let name = unique_name("e2e");
        let kafka = KafkaConfig {
            brokers: kafka_brokers(),
            topic: name.clone(),
            partitions: 3,
            replication_factor: 1,
            options: Vec::new(),
        };
        let rabbitmq = RabbitMqConfig {
            url: amqp_url(),
            exchange: name.clone(),
            queue: name.clone(),
            queue_type: QueueType::Quorum,
        };
        let keys = KeySchema::new(name.clone());
        let redis = CounterStore::connect(&redis_url(), keys.clone(), Retention::default()).await.unwrap();
        let valkey = CounterStore::connect(&valkey_url(), keys, Retention::default()).await.unwrap();
        let shutdown = CancellationToken::new();
        let stopped = |token: &CancellationToken| {
            let token = token.clone();
            async move { token.cancelled().await }
        };

        let (kafka_listener, kafka_writer) = listener().await;
        let sink = KafkaSink::new(kafka.clone(), KafkaSinkConfig::default()).unwrap();
        tokio::spawn(clima_writer::serve(kafka_listener, sink, writer_config(), stopped(&shutdown)));
        let (rabbitmq_listener, rabbitmq_writer) = listener().await;
        let sink = RabbitMqSink::new(rabbitmq.clone(), RabbitMqSinkConfig::default());
        tokio::spawn(clima_writer::serve(rabbitmq_listener, sink, writer_config(), stopped(&shutdown)));

        tokio::spawn({
            let (store, shutdown, kafka) = (redis.clone(), shutdown.clone(), kafka.clone());
            let source = KafkaSourceConfig { group: name.clone() };
            let health = clima_telemetry::readiness::Readiness::not_ready();
            async move {
                clima_consumer::kafka::run(&kafka, &source, &BatchConfig::default(), &store, shutdown, &health).await
            }
        });
        tokio::spawn({
            let (store, shutdown) = (valkey.clone(), shutdown.clone());
            async move {
                let source = RabbitMqSourceConfig::default();
                let health = clima_telemetry::readiness::Readiness::not_ready();
                clima_consumer::rabbitmq::run(&rabbitmq, &source, &BatchConfig::default(), &store, shutdown, &health)
                    .await
            }
        });

        let (api_listener, api) = listener().await;
        let config =
            ApiConfig::with_writers(vec![format!("http://{kafka_writer}"), format!("http://{rabbitmq_writer}")]);
        tokio::spawn(clima_api::serve(api_listener, config, stopped(&shutdown)));

        let stack = Self {
            api: format!("http://{api}"),
            name,
            kafka_writer,
            rabbitmq_writer,
            redis,
            valkey,
            client: reqwest::Client::new(),
            shutdown,
        };
        stack.wait_ready().await;
        stack
    }

    async fn wait_ready(&self) {
        let ready = clima_testkit::eventually(Duration::from_secs(30), || async {
            let ready = self.client.get(format!("{}/readyz", self.api)).send().await;
            ready.is_ok_and(|response| response.status().is_success()).then_some(())
        })
        .await;
        assert!(ready.is_some(), "the stack did not become ready in 30 s");
    }

    /// POSTs a JSON body to /input; returns the status and the JSON answer.
    pub(crate) async fn post_input(&self, body: &str) -> (u16, Value) {
        post_json(&self.client, &format!("{}/input", self.api), body).await
    }

    /// Waits until both stores counted `total` tweets, then a little longer
    /// (so that an extra, wrong count would show), and returns their counts.
    pub(crate) async fn counted(&self, total: u64) -> (Counts, Counts) {
        eventually(Duration::from_secs(60), || async {
            let (redis, valkey) = (self.redis.read_counts(1).await.unwrap(), self.valkey.read_counts(1).await.unwrap());
            (redis.total >= total && valkey.total >= total).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        (self.redis.read_counts(1).await.unwrap(), self.valkey.read_counts(1).await.unwrap())
    }

    /// Waits until Valkey counted `total` tweets (then a little longer), and returns its counts.
    pub(crate) async fn valkey_counted(&self, total: u64) -> Counts {
        let counted = || async { (self.valkey.read_counts(1).await.unwrap().total >= total).then_some(()) };
        eventually(Duration::from_secs(60), counted).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.valkey.read_counts(1).await.unwrap()
    }
}

pub(crate) async fn post_json(client: &reqwest::Client, url: &str, body: &str) -> (u16, Value) {
    let response =
        client.post(url).header("content-type", "application/json").body(body.to_owned()).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("answer is not JSON: {text}")))
}
