//! The five clima services as real processes of the `clima` binary, with a
//! fresh topic, queue, consumer group and key prefix, and an OTLP/gRPC
//! collector inside the test receiving their spans.

use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use clima_store::{CounterStore, KeySchema, Retention};
use clima_testkit::{amqp_url, kafka_brokers, redis_url, unique_name, valkey_url};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use tokio::{net::TcpListener, process::Child};

/// Every span received, with the `service.name` of the process that sent it.
#[derive(Clone, Default)]
pub(crate) struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
                .map(|value| match value {
                    Value::StringValue(name) => name.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                spans.extend(scope_spans.spans.into_iter().map(|span| (service.clone(), span)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// A collector serving OTLP/gRPC on a free port, and that port.
    pub(crate) async fn serve() -> (Self, SocketAddr) {
        let collector = Self::default();
        let otlp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = otlp.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(otlp)),
        );
        (collector, address)
    }

    /// Every span received from `service`.
    pub(crate) fn spans_of_service(&self, service: &str) -> Vec<Span> {
        self.spans.lock().unwrap().iter().filter(|(name, _)| name == service).map(|(_, span)| span.clone()).collect()
    }

    pub(crate) fn spans_of_trace(&self, trace_id: &[u8]) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().iter().filter(|(_, span)| span.trace_id == trace_id).cloned().collect()
    }
}

pub(crate) struct ProcessStack {
    pub api: String,
    /// Admin (/metrics) address of each service, by OpenTelemetry service name.
    pub admin: Vec<(&'static str, SocketAddr)>,
    pub redis: CounterStore,
    pub valkey: CounterStore,
    pub collector: Collector,
    children: Vec<Child>,
}

pub(crate) async fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

impl ProcessStack {
    pub(crate) async fn spawn() -> Self {
        let name = unique_name("proc");
        let (collector, otlp_address) = Collector::serve().await;

        let (kafka_writer, rabbitmq_writer, api) = (free_port().await, free_port().await, free_port().await);
        let mut admin = Vec::new();
        for service in [
            "clima-api",
            "clima-writer-kafka",
            "clima-writer-rabbitmq",
            "clima-consumer-kafka",
            "clima-consumer-rabbitmq",
        ] {
            admin.push((service, free_port().await));
        }
        let admin_of = |service: &str| admin.iter().find(|(name, _)| *name == service).unwrap().1.to_string();
        let logs = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&logs).unwrap();

        let spawn = |service: &str, args: Vec<String>| {
            let log = std::fs::File::create(logs.join(format!("{service}.log"))).unwrap();
            tokio::process::Command::new(env!("CARGO_BIN_EXE_clima"))
                .args(args)
                .arg("--admin-listen")
                .arg(admin_of(service))
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("RUST_LOG", "info")
                .env("CLIMA_LOG_FORMAT", "json")
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp_address}"))
                .env("OTEL_BSP_SCHEDULE_DELAY", "100")
                .env("CLIMA_KAFKA_BROKERS", kafka_brokers())
                .env("CLIMA_KAFKA_TOPIC", &name)
                .env("CLIMA_KAFKA_GROUP", &name)
                .env("CLIMA_AMQP_URL", amqp_url())
                .env("CLIMA_RABBITMQ_EXCHANGE", &name)
                .env("CLIMA_RABBITMQ_QUEUE", &name)
                .env("CLIMA_KEY_PREFIX", &name)
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .unwrap()
        };
        let children = vec![
            spawn(
                "clima-writer-kafka",
                args(&["writer", "kafka", "--health-interval", "200ms", "--listen", &kafka_writer.to_string()]),
            ),
            spawn(
                "clima-writer-rabbitmq",
                // The deprecated spelling, kept for one release: it must still run the same writer.
                args(&[
                    "writer",
                    "--sink",
                    "rabbitmq",
                    "--health-interval",
                    "200ms",
                    "--listen",
                    &rabbitmq_writer.to_string(),
                ]),
            ),
            spawn("clima-consumer-kafka", args(&["consumer", "kafka", "--store-url", &redis_url()])),
            spawn("clima-consumer-rabbitmq", args(&["consumer", "rabbitmq", "--store-url", &valkey_url()])),
            spawn(
                "clima-api",
                args(&[
                    "api",
                    "--listen",
                    &api.to_string(),
                    "--writer",
                    &format!("http://{kafka_writer}"),
                    "--writer",
                    &format!("http://{rabbitmq_writer}"),
                ]),
            ),
        ];

        let keys = KeySchema::new(&name);
        let mut stack = Self {
            api: format!("http://{api}"),
            admin,
            redis: CounterStore::connect(&redis_url(), keys.clone(), Retention::default()).await.unwrap(),
            valkey: CounterStore::connect(&valkey_url(), keys, Retention::default()).await.unwrap(),
            collector,
            children,
        };
        stack.wait_ready(&logs).await;
        stack
    }

    /// Waits until the API and every service's admin `/readyz` answer 200 (a
    /// consumer's once it is connected to its broker and its store).
    async fn wait_ready(&mut self, logs: &Path) {
        let client = reqwest::Client::new();
        let mut probes = vec![format!("{}/readyz", self.api)];
        probes.extend(self.admin.iter().map(|(_, address)| format!("http://{address}/readyz")));
        let children = std::sync::Mutex::new(&mut self.children);
        let ready = clima_testkit::eventually(Duration::from_secs(60), || async {
            for child in children.lock().unwrap().iter_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("a clima process exited with {status}; logs in {}", logs.display());
                }
            }
            for probe in &probes {
                let ready = client.get(probe).send().await;
                if !ready.is_ok_and(|response| response.status().is_success()) {
                    return None;
                }
            }
            Some(())
        })
        .await;
        assert!(ready.is_some(), "clima processes not ready in 60 s; logs in {}", logs.display());
    }

    /// Waits until both stores counted `total` tweets.
    pub(crate) async fn wait_counted(&self, total: u64) {
        let counted = clima_testkit::eventually(Duration::from_secs(60), || async {
            let both =
                (self.redis.read_counts(1).await.unwrap().total, self.valkey.read_counts(1).await.unwrap().total);
            (both.0 >= total && both.1 >= total).then_some(())
        })
        .await;
        assert!(counted.is_some(), "tweets not counted in 60 s");
    }

    pub(crate) async fn metrics(&self, service: &str) -> String {
        let address = self.admin.iter().find(|(name, _)| *name == service).unwrap().1;
        reqwest::get(format!("http://{address}/metrics")).await.unwrap().text().await.unwrap()
    }
}

fn args(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| (*value).to_owned()).collect()
}

/// The sum of the samples of `name` whose labels include all of `labels`,
/// from Prometheus text format.
pub(crate) fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, label_text) = match series.split_once('{') {
                Some((metric_name, rest)) => (metric_name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = metric_name == name
                && labels
                    .iter()
                    .all(|(key, wanted)| label_text.split(',').any(|pair| pair == format!("{key}=\"{wanted}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
