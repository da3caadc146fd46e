//! RabbitMQ sink: persistent messages, `mandatory`, publisher confirms awaited.

mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::{DEFAULT_CONFIRM_TIMEOUT, RabbitMqSinkConfig};
pub use sink::RabbitMqSink;
