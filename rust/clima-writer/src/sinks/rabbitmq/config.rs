use std::time::Duration;

/// Default of `--rabbitmq-confirm-timeout`.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// The RabbitMQ publisher of a writer.
#[derive(Debug, Clone)]
pub struct RabbitMqSinkConfig {
    /// How long to wait for RabbitMQ's publisher confirms of one request.
    pub confirm_timeout: Duration,
}

impl Default for RabbitMqSinkConfig {
    fn default() -> Self {
        Self { confirm_timeout: DEFAULT_CONFIRM_TIMEOUT }
    }
}
