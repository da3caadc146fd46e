//! `clima-bench`: the raw ceilings `ci/bench` sets clima's figures against,
//! and the probes `ci/experiments` uses.
//!
//! Most subcommands drive one service the way its plain client does at its
//! best (pipelined, batched, no per-message round trips) with messages the size
//! of a clima tweet, and print JSON lines: what the service can do on this
//! machine, so that clima's end-to-end rate can be read as a fraction of it.
//! `hop` compares the API→writer hop's encodings, and `order` taps clima's
//! brokers during a load.

mod dedupe_memory;
mod hop;
mod http;
mod kafka;
mod order;
mod otlp_sink;
mod rabbitmq;
mod store;

use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(name = "clima-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Kafka: produce (acks=all) then consume N messages with plain rdkafka clients.
    Kafka(kafka::Args),
    /// RabbitMQ: publish persistent messages with pipelined confirms, then consume with acks.
    Rabbitmq(rabbitmq::Args),
    /// Redis or Valkey: pipelined HINCRBY.
    Store(store::Args),
    /// Redis or Valkey: memory per dedupe marker of clima's count script.
    DedupeMemory(dedupe_memory::Args),
    /// The API→writer hop: the same Publish calls over gRPC/protobuf and over HTTP/1.1 + JSON.
    Hop(hop::Args),
    /// An HTTP hello world on clima's server stack (axum on hyper): POST /input → 202.
    HttpHello(http::Args),
    /// An OTLP/gRPC trace receiver that only counts spans (for the cost of tracing).
    OtlpSink(otlp_sink::Args),
    /// Taps clima's topic and exchange during a load: how far each broker's order departs from acceptance order.
    Order(order::Args),
}

/// One measured operation.
#[derive(Debug, Serialize)]
pub struct Rate {
    pub ceiling: String,
    pub operation: &'static str,
    pub count: u64,
    pub seconds: f64,
    pub per_second: f64,
}

impl Rate {
    pub fn new(ceiling: &str, operation: &'static str, count: u64, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        Self { ceiling: ceiling.to_owned(), operation, count, seconds, per_second: count as f64 / seconds.max(1e-9) }
    }
}

/// A body the size of a clima tweet on the brokers (a `TweetRecord` is ~100 bytes).
pub fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rates = match Cli::parse().command {
        Command::Kafka(args) => kafka::run(args).await?,
        Command::Rabbitmq(args) => rabbitmq::run(args).await?,
        Command::Store(args) => store::run(args).await?,
        Command::HttpHello(args) => return http::run(args).await,
        Command::Hop(args) => return hop::run(args).await,
        Command::DedupeMemory(args) => return dedupe_memory::run(args).await,
        Command::OtlpSink(args) => return otlp_sink::run(args).await,
        Command::Order(args) => return order::run(args).await,
    };
    for rate in rates {
        println!("{}", serde_json::to_string(&rate)?);
    }
    Ok(())
}
