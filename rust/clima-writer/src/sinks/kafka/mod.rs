//! Kafka sink: an idempotent producer with `acks=all`; one message per batch
//! of records (split only at the message size limit), without a key.

mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::KafkaSinkConfig;
pub use sink::KafkaSink;
