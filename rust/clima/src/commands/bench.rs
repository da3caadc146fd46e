//! `clima bench <ceiling>`: the raw ceilings `ci/bench` sets clima's figures
//! against (plain rdkafka, lapin and redis clients at their best, an axum hello
//! world, an OTLP sink that counts spans) and the probes of `ci/experiments`.
//! The measurements live in the `clima-bench` crate; this is their CLI. Run
//! from a pod with the services' env, `order` reaches the same cluster.

use std::{net::SocketAddr, path::PathBuf};

use clima_bench::Rate;
use clima_broker::kafka;

use crate::flags::{KafkaFlags, RabbitMqFlags, Span};

#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    ceiling: Ceiling,
}

#[derive(Debug, clap::Subcommand)]
enum Ceiling {
    /// Kafka: produce (acks=all) then consume N messages with plain rdkafka clients, on a scratch topic.
    Kafka(KafkaCeilingArgs),
    /// RabbitMQ: publish persistent messages with pipelined confirms, then consume with acks, on a scratch queue.
    Rabbitmq(RabbitMqCeilingArgs),
    /// Redis or Valkey: pipelined HINCRBY.
    Store(StoreCeilingArgs),
    /// Redis or Valkey: memory per dedupe marker of clima's count script.
    DedupeMemory(DedupeMemoryArgs),
    /// The API→writer hop: the same Publish calls over gRPC/protobuf and over HTTP/1.1 + JSON.
    Hop(HopArgs),
    /// An HTTP hello world on clima's server stack (axum on hyper): POST /input → 202.
    HttpHello(HttpHelloArgs),
    /// An OTLP/gRPC trace receiver that only counts spans (for the cost of tracing).
    OtlpSink(OtlpSinkArgs),
    /// Taps clima's topic and exchange during a load: how far each broker's order departs from acceptance order.
    Order(OrderArgs),
}

#[derive(Debug, clap::Args)]
struct KafkaCeilingArgs {
    /// Kafka bootstrap servers, comma separated host:port.
    #[arg(long = "kafka-brokers", env = "CLIMA_KAFKA_BROKERS", default_value = clima_broker::kafka::DEFAULT_BROKERS)]
    brokers: String,
    /// librdkafka setting (key=value, repeatable) to reach a SASL/TLS cluster,
    /// as the services' --kafka-option; only security.protocol, sasl.* and
    /// ssl.* apply (the bench keeps its own client settings).
    #[arg(long = "kafka-option", env = "CLIMA_KAFKA_OPTIONS", hide_env_values = true, value_delimiter = ',', value_parser = kafka::parse_key_value)]
    options: Vec<(String, String)>,
    /// Messages to produce, then consume.
    #[arg(long, env = "CLIMA_BENCH_MESSAGES", default_value_t = 200_000)]
    messages: u64,
    /// Bytes per message.
    #[arg(long, env = "CLIMA_BENCH_MESSAGE_SIZE", default_value_t = 100)]
    size: usize,
    /// Partitions of the scratch topic.
    #[arg(long, env = "CLIMA_BENCH_PARTITIONS", default_value_t = 3)]
    partitions: i32,
}

#[derive(Debug, clap::Args)]
struct RabbitMqCeilingArgs {
    /// AMQP 0.9.1 URL of RabbitMQ.
    #[arg(long = "amqp-url", env = "CLIMA_AMQP_URL", hide_env_values = true,
          default_value = clima_broker::rabbitmq::DEFAULT_URL, hide_default_value = true)]
    url: String,
    /// Messages to publish, then consume.
    #[arg(long, env = "CLIMA_BENCH_MESSAGES", default_value_t = 50_000)]
    messages: u64,
    /// Bytes per message.
    #[arg(long, env = "CLIMA_BENCH_MESSAGE_SIZE", default_value_t = 100)]
    size: usize,
    /// classic or quorum (clima's queue is a quorum queue).
    #[arg(long, env = "CLIMA_BENCH_QUEUE_TYPE", default_value = "quorum")]
    queue_type: String,
    /// Publishes awaiting their confirm at once.
    #[arg(long, env = "CLIMA_BENCH_CONFIRM_WINDOW", default_value_t = 1000)]
    window: u64,
}

#[derive(Debug, clap::Args)]
struct StoreCeilingArgs {
    /// Redis or Valkey URL.
    #[arg(long, env = "CLIMA_BENCH_STORE_URL", hide_env_values = true, default_value = "redis://127.0.0.1:6379")]
    url: String,
    /// A name for the report: redis or valkey.
    #[arg(long, env = "CLIMA_BENCH_STORE_NAME", default_value = "redis")]
    name: String,
    /// HINCRBY commands to send.
    #[arg(long, env = "CLIMA_BENCH_OPERATIONS", default_value_t = 1_000_000)]
    operations: u64,
    /// Commands per pipeline.
    #[arg(long, env = "CLIMA_BENCH_PIPELINE", default_value_t = 1000)]
    pipeline: u64,
}

#[derive(Debug, clap::Args)]
struct DedupeMemoryArgs {
    /// Redis or Valkey URL (the script runs there; its keys are deleted after).
    #[arg(long, env = "CLIMA_BENCH_STORE_URL", hide_env_values = true, default_value = "redis://127.0.0.1:6379")]
    url: String,
    /// Distinct tweets to count.
    #[arg(long, env = "CLIMA_BENCH_TWEETS", default_value_t = 1_000_000)]
    tweets: u64,
    /// Tweets per count script call (the consumer's --batch-size).
    #[arg(long, env = "CLIMA_BENCH_BATCH", default_value_t = 500)]
    batch: u64,
}

#[derive(Debug, clap::Args)]
struct HopArgs {
    /// Records per Publish call.
    #[arg(long, env = "CLIMA_BENCH_RECORDS", default_value_t = 100)]
    records: usize,
    /// Publish calls per encoding.
    #[arg(long, env = "CLIMA_BENCH_CALLS", default_value_t = 10_000)]
    calls: u64,
    /// Calls in flight at once (the API's --batch-in-flight is 8).
    #[arg(long, env = "CLIMA_BENCH_CONCURRENCY", default_value_t = 8)]
    concurrency: u64,
}

#[derive(Debug, clap::Args)]
struct HttpHelloArgs {
    /// Where to listen; `clima load --url http://<this>/input` measures it.
    #[arg(long, env = "CLIMA_BENCH_LISTEN", default_value = "127.0.0.1:8099")]
    listen: String,
}

#[derive(Debug, clap::Args)]
struct OtlpSinkArgs {
    /// Where to take OTLP/gRPC trace exports.
    #[arg(long, env = "CLIMA_BENCH_LISTEN", default_value = "127.0.0.1:4317")]
    listen: SocketAddr,
}

#[derive(Debug, clap::Args)]
struct OrderArgs {
    #[command(flatten)]
    kafka: KafkaFlags,
    #[command(flatten)]
    rabbitmq: RabbitMqFlags,
    /// Stop once this many tweets came from each broker.
    #[arg(long, env = "CLIMA_BENCH_TWEETS")]
    tweets: u64,
    /// Give up after this long (the report then says how many came).
    #[arg(long, env = "CLIMA_BENCH_TIMEOUT", default_value = "300s")]
    timeout: Span,
    /// Created once both taps listen: start the load after it exists.
    #[arg(long, env = "CLIMA_BENCH_READY_FILE")]
    ready_file: PathBuf,
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let rates = match args.ceiling {
        Ceiling::Kafka(args) => {
            let KafkaCeilingArgs { brokers, options, messages, size, partitions } = args;
            clima_bench::kafka::run(clima_bench::kafka::Config { brokers, options, messages, size, partitions }).await?
        }
        Ceiling::Rabbitmq(args) => {
            let RabbitMqCeilingArgs { url, messages, size, queue_type, window } = args;
            clima_bench::rabbitmq::run(clima_bench::rabbitmq::Config { url, messages, size, queue_type, window })
                .await?
        }
        Ceiling::Store(args) => {
            let StoreCeilingArgs { url, name, operations, pipeline } = args;
            clima_bench::store::run(clima_bench::store::Config { url, name, operations, pipeline }).await?
        }
        Ceiling::DedupeMemory(DedupeMemoryArgs { url, tweets, batch }) => {
            return clima_bench::dedupe_memory::run(clima_bench::dedupe_memory::Config { url, tweets, batch }).await;
        }
        Ceiling::Hop(HopArgs { records, calls, concurrency }) => {
            return clima_bench::hop::run(clima_bench::hop::Config { records, calls, concurrency }).await;
        }
        Ceiling::HttpHello(HttpHelloArgs { listen }) => {
            return clima_bench::http::run(clima_bench::http::Config { listen }).await;
        }
        Ceiling::OtlpSink(OtlpSinkArgs { listen }) => {
            return clima_bench::otlp_sink::run(clima_bench::otlp_sink::Config { listen }).await;
        }
        Ceiling::Order(OrderArgs { kafka, rabbitmq, tweets, timeout, ready_file }) => {
            let (kafka, rabbitmq) = (kafka.into(), rabbitmq.into());
            let config = clima_bench::order::Config { kafka, rabbitmq, tweets, timeout: timeout.into(), ready_file };
            return clima_bench::order::run(config).await;
        }
    };
    print_rates(&rates)
}

/// One JSON line per measured operation (what ci/bench.py reads).
fn print_rates(rates: &[Rate]) -> anyhow::Result<()> {
    for rate in rates {
        println!("{}", serde_json::to_string(rate)?);
    }
    Ok(())
}
