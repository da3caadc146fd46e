use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct KafkaSinkConfig {
    /// How long the producer waits to fill a batch (librdkafka linger.ms). Each
    /// message already holds a batch of tweets, so a long linger only adds latency.
    #[arg(long = "kafka-linger", env = "CLIMA_KAFKA_LINGER", default_value = "1ms", value_parser = humantime::parse_duration)]
    pub linger: Duration,

    /// How long a record may wait for the broker's acknowledgement before the
    /// publish fails (librdkafka message.timeout.ms).
    #[arg(long = "kafka-delivery-timeout", env = "CLIMA_KAFKA_DELIVERY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub delivery_timeout: Duration,

    /// Idempotent producer: broker-side dedupe of the producer's own retries.
    /// clima's exactly-once counting does not depend on it (consumers count each
    /// tweet id once); turn it off only for brokers that mishandle it (see
    /// ARCHITECTURE.md on tansu 0.6).
    #[arg(long = "kafka-idempotence", env = "CLIMA_KAFKA_IDEMPOTENCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub idempotence: bool,

    /// Compression codec (none, gzip, lz4, zstd; snappy where the broker supports it).
    #[arg(long = "kafka-compression", env = "CLIMA_KAFKA_COMPRESSION", default_value = "none")]
    pub compression: String,

    /// Largest message body the writer produces; bigger batches are split.
    /// Keep it below the topic's max.message.bytes (Kafka's default: 1 MiB).
    #[arg(long = "kafka-max-message-bytes", env = "CLIMA_KAFKA_MAX_MESSAGE_BYTES", default_value_t = 900 * 1024)]
    pub max_message_bytes: usize,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(1),
            delivery_timeout: Duration::from_secs(10),
            idempotence: true,
            compression: "none".into(),
            max_message_bytes: 900 * 1024,
        }
    }
}
