//! RabbitMQ sink: persistent messages, `mandatory`, publisher confirms awaited.

mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::RabbitMqSinkConfig;
pub use sink::RabbitMqSink;
