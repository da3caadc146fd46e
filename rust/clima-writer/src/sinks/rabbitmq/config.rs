use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct RabbitMqSinkConfig {
    /// How long to wait for RabbitMQ's publisher confirms of one request.
    #[arg(long = "rabbitmq-confirm-timeout", env = "CLIMA_RABBITMQ_CONFIRM_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub confirm_timeout: Duration,
}

impl Default for RabbitMqSinkConfig {
    fn default() -> Self {
        Self { confirm_timeout: Duration::from_secs(10) }
    }
}
