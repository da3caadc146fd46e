//! Kafka sink: an idempotent producer with `acks=all`; one message per batch
//! of records (split only at the message size limit), without a key.

mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::{
    DEFAULT_COMPRESSION, DEFAULT_DELIVERY_TIMEOUT, DEFAULT_LINGER, DEFAULT_MAX_MESSAGE_BYTES, KafkaSinkConfig,
};
pub use sink::KafkaSink;
