use std::time::Duration;

/// Default of `--kafka-linger`.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(1);
/// Default of `--kafka-delivery-timeout`.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `--kafka-compression`.
pub const DEFAULT_COMPRESSION: &str = "none";
/// Default of `--kafka-max-message-bytes`: below the 1 MiB max.message.bytes
/// of Kafka's default topic.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 900 * 1024;

/// The Kafka producer of a writer.
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    /// How long the producer waits to fill a batch (librdkafka linger.ms).
    pub linger: Duration,
    /// How long a record may wait for the broker's acknowledgement (message.timeout.ms).
    pub delivery_timeout: Duration,
    /// Idempotent producer: broker-side dedupe of the producer's own retries.
    pub idempotence: bool,
    /// Compression codec (librdkafka compression.type).
    pub compression: String,
    /// Largest message body the writer produces; bigger batches are split.
    pub max_message_bytes: usize,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        Self {
            linger: DEFAULT_LINGER,
            delivery_timeout: DEFAULT_DELIVERY_TIMEOUT,
            idempotence: true,
            compression: DEFAULT_COMPRESSION.to_owned(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}
