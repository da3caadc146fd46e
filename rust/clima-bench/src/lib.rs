//! The raw ceilings `ci/bench` sets clima's figures against, and the probes
//! `ci/experiments` uses; `clima bench <ceiling>` runs them (the flags live
//! in the binary, as every other crate's).
//!
//! Most subcommands drive one service the way its plain client does at its
//! best (pipelined, batched, no per-message round trips) with messages the size
//! of a clima tweet, and print JSON lines: what the service can do on this
//! machine, so that clima's end-to-end rate can be read as a fraction of it.
//! `hop` compares the API→writer hop's encodings, and `order` taps clima's
//! brokers during a load.

pub mod dedupe_memory;
pub mod hop;
/// An axum hello world: the HTTP stack's ceiling.
pub mod http;
/// Plain rdkafka: produce (acks=all), then consume.
pub mod kafka;
pub mod order;
/// An OTLP receiver that only counts spans.
pub mod otlp_sink;
/// Plain lapin: publish with confirms, then consume.
pub mod rabbitmq;
/// Plain redis: pipelined `HINCRBY`s, as the count script does.
pub mod store;

use std::time::Duration;

use serde::Serialize;

/// One measured operation.
#[derive(Debug, Serialize)]
pub struct Rate {
    /// What was measured: `kafka`, `rabbitmq`, `redis`, ...
    pub ceiling: String,
    /// The operation: `produce`, `consume`, `HINCRBY (pipelined)`, ...
    pub operation: &'static str,
    /// Operations done.
    pub count: u64,
    /// How long they took.
    pub seconds: f64,
    /// `count / seconds`.
    pub per_second: f64,
}

impl Rate {
    /// `count` operations done in `elapsed`.
    pub fn new(ceiling: &str, operation: &'static str, count: u64, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        Self { ceiling: ceiling.to_owned(), operation, count, seconds, per_second: count as f64 / seconds.max(1e-9) }
    }
}

/// A body the size of a clima tweet on the brokers (a `TweetRecord` is ~100 bytes).
pub fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}
