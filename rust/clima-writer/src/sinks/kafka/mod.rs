//! Kafka sink: an idempotent producer with `acks=all`; key = country.

mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::KafkaSinkConfig;
pub use sink::KafkaSink;
