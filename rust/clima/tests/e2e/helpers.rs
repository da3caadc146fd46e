use std::{net::SocketAddr, time::Duration};

use clima::Service;
use clima_store::{CounterStore, Counts, KeySchema, Retention};
use clima_testkit::{amqp_url, eventually, kafka_brokers, redis_url, unique_name, valkey_url};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The whole pipeline with names (topic, queue, key prefix) of its own, each
/// service started in this process by the binary's own startup code
/// ([`clima::Service::build`]) from a command line, on ports the OS picks.
pub(crate) struct TestStack {
    pub api: String,
    /// Key prefix (and topic, queue, group name) of this stack.
    pub name: String,
    pub kafka_writer: SocketAddr,
    pub rabbitmq_writer: SocketAddr,
    pub redis: CounterStore,
    pub valkey: CounterStore,
    /// Every service's admin server (`/readyz`).
    admin: Vec<SocketAddr>,
    /// Every service's task: one that ended failed (its panic says why).
    services: Vec<JoinHandle<()>>,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for TestStack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A service of the stack, running in this process.
struct Started {
    address: Option<SocketAddr>,
    admin: SocketAddr,
    task: JoinHandle<()>,
}

/// Starts `clima <args>` in this process.
async fn start(args: &[&str], shutdown: &CancellationToken) -> Started {
    let args = [args, &["--admin-listen", "127.0.0.1:0"]].concat();
    let service =
        Service::build(&args, shutdown.clone()).await.unwrap_or_else(|error| panic!("clima {args:?}: {error:#}"));
    let (address, admin) = (service.address(), service.admin_address());
    let command = args.join(" ");
    let task = tokio::spawn(async move {
        if let Err(error) = service.run_until_stopped().await {
            panic!("clima {command} failed: {error:#}");
        }
    });
    Started { address, admin, task }
}

impl TestStack {
    pub(crate) async fn spawn() -> Self {
        clima_testkit::test_log();
        let name = unique_name("e2e");
        let (brokers, amqp, redis_url, valkey_url) = (kafka_brokers(), amqp_url(), redis_url(), valkey_url());
        let kafka = ["--kafka-brokers", &brokers, "--kafka-topic", &name, "--kafka-partitions", "3"];
        let rabbitmq = ["--amqp-url", &amqp, "--rabbitmq-exchange", &name, "--rabbitmq-queue", &name];
        let shutdown = CancellationToken::new();
        let any_port = ["--listen", "127.0.0.1:0", "--health-interval", "200ms"];

        let writer_kafka = start(&[&["writer", "kafka"][..], &any_port, &kafka].concat(), &shutdown).await;
        let writer_rabbitmq = start(&[&["writer", "rabbitmq"][..], &any_port, &rabbitmq].concat(), &shutdown).await;
        let counting = |url| ["--store-url", url, "--key-prefix", &name];
        let consumer_kafka = start(
            &[&["consumer", "kafka"][..], &counting(&redis_url), &kafka, &["--kafka-group", &name]].concat(),
            &shutdown,
        )
        .await;
        let consumer_rabbitmq =
            start(&[&["consumer", "rabbitmq"][..], &counting(&valkey_url), &rabbitmq].concat(), &shutdown).await;
        let (kafka_writer, rabbitmq_writer) = (writer_kafka.address.unwrap(), writer_rabbitmq.address.unwrap());
        let writers = format!("http://{kafka_writer},http://{rabbitmq_writer}");
        let api = start(&["api", "--listen", "127.0.0.1:0", "--writer", &writers], &shutdown).await;

        let keys = KeySchema::new(name.clone());
        let started = [writer_kafka, writer_rabbitmq, consumer_kafka, consumer_rabbitmq, api];
        let api_address = started[4].address.unwrap();
        let (admin, services) = started.into_iter().map(|service| (service.admin, service.task)).unzip();
        let stack = Self {
            api: format!("http://{api_address}"),
            name,
            kafka_writer,
            rabbitmq_writer,
            redis: CounterStore::connect(&redis_url, keys.clone(), Retention::default()).await.unwrap(),
            valkey: CounterStore::connect(&valkey_url, keys, Retention::default()).await.unwrap(),
            admin,
            services,
            client: reqwest::Client::new(),
            shutdown,
        };
        stack.wait_ready().await;
        stack
    }

    /// Waits until every service says it is ready: writers reached their
    /// broker, consumers their broker and store, the API its writers.
    async fn wait_ready(&self) {
        let urls =
            self.admin.iter().map(|admin| format!("http://{admin}/readyz")).chain([format!("{}/readyz", self.api)]);
        for url in urls {
            let ready = eventually(Duration::from_secs(30), || async {
                assert!(
                    !self.services.iter().any(JoinHandle::is_finished),
                    "a service of the stack stopped before it was ready (its panic above says why)"
                );
                let ready = self.client.get(&url).send().await;
                ready.is_ok_and(|response| response.status().is_success()).then_some(())
            })
            .await;
            assert!(ready.is_some(), "{url} did not become ready in 30 s");
        }
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
