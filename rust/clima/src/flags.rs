//! The command line of the libraries' settings: each struct here is the
//! flags (and env vars) of one library config, parsed at the edge and turned
//! into that config with `From`. Defaults are the libraries' `DEFAULT_*`
//! consts, so each is written once.

use std::path::PathBuf;

use clima_api::ApiConfig;
use clima_broker::{
    kafka::{self, KafkaConfig},
    rabbitmq::{self, QueueType, RabbitMqConfig},
};
use clima_consumer::{AckTiming, BatchConfig, kafka::KafkaSourceConfig, rabbitmq::RabbitMqSourceConfig};
use clima_writer::{
    ServerConfig,
    sinks::{kafka::KafkaSinkConfig, rabbitmq::RabbitMqSinkConfig},
};

/// A duration flag's type: `humantime::Duration` parses "10ms" and shows a
/// default the same way.
pub(crate) type Span = humantime::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct KafkaFlags {
    /// Kafka bootstrap servers, comma separated host:port.
    #[arg(long = "kafka-brokers", env = "CLIMA_KAFKA_BROKERS", default_value = kafka::DEFAULT_BROKERS)]
    brokers: String,

    /// Topic that carries tweets.
    #[arg(long = "kafka-topic", env = "CLIMA_KAFKA_TOPIC", default_value = kafka::DEFAULT_TOPIC)]
    pub(crate) topic: String,

    /// Partitions of the topic when clima has to create it.
    #[arg(long = "kafka-partitions", env = "CLIMA_KAFKA_PARTITIONS", default_value_t = kafka::DEFAULT_PARTITIONS)]
    partitions: i32,

    /// Replication factor of the topic when clima has to create it.
    #[arg(
        long = "kafka-replication-factor",
        env = "CLIMA_KAFKA_REPLICATION_FACTOR",
        default_value_t = kafka::DEFAULT_REPLICATION_FACTOR
    )]
    replication_factor: i32,

    /// Extra librdkafka property as key=value (repeatable; env: comma separated),
    /// e.g. security.protocol=SASL_SSL.
    #[arg(long = "kafka-option", env = "CLIMA_KAFKA_OPTIONS", hide_env_values = true, value_delimiter = ',', value_parser = kafka::parse_key_value)]
    options: Vec<(String, String)>,
}

impl From<KafkaFlags> for KafkaConfig {
    fn from(flags: KafkaFlags) -> Self {
        Self {
            brokers: flags.brokers,
            topic: flags.topic,
            partitions: flags.partitions,
            replication_factor: flags.replication_factor,
            options: flags.options,
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum QueueTypeFlag {
    /// Raft-replicated; the durable choice, and faster with confirms here.
    Quorum,
    /// Single-node classic queue.
    Classic,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RabbitMqFlags {
    /// AMQP 0.9.1 URL of RabbitMQ (credentials included; guest/guest is for local development only); the nodes of
    /// a cluster as URLs separated by commas, tried in turn.
    #[arg(
        id = "amqp_url",
        long = "amqp-url",
        value_name = "URL",
        env = "CLIMA_AMQP_URL",
        hide_env_values = true,
        default_value = rabbitmq::DEFAULT_URL,
        hide_default_value = true
    )]
    url: String,

    /// Exchange tweets are published to.
    #[arg(long = "rabbitmq-exchange", env = "CLIMA_RABBITMQ_EXCHANGE", default_value = rabbitmq::DEFAULT_EXCHANGE)]
    exchange: String,

    /// Queue bound to the exchange, consumed by the RabbitMQ consumer.
    #[arg(long = "rabbitmq-queue", env = "CLIMA_RABBITMQ_QUEUE", default_value = rabbitmq::DEFAULT_QUEUE)]
    queue: String,

    /// Type of the queue when clima declares it.
    #[arg(long = "rabbitmq-queue-type", env = "CLIMA_RABBITMQ_QUEUE_TYPE", value_enum, default_value_t = QueueTypeFlag::Quorum)]
    queue_type: QueueTypeFlag,
}

impl From<RabbitMqFlags> for RabbitMqConfig {
    fn from(flags: RabbitMqFlags) -> Self {
        let queue_type = match flags.queue_type {
            QueueTypeFlag::Quorum => QueueType::Quorum,
            QueueTypeFlag::Classic => QueueType::Classic,
        };
        Self { url: flags.url, exchange: flags.exchange, queue: flags.queue, queue_type }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AckFlag {
    /// After the store counted the batch. A crash in between means
    /// redelivery, which the store counts once: nothing lost, nothing twice.
    AfterStore,
    /// Before the store counts it, as a consumer with auto-commit or auto-ack
    /// does. A crash in between loses the batch: the broker will not deliver
    /// it again. Never for production; ci/experiments measures what it loses.
    BeforeStore,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BatchFlags {
    /// Most tweets counted in one store round trip (a message's tweets are
    /// never split, so a batch may exceed it by one message).
    #[arg(
        id = "batch_size",
        long = "batch-size",
        value_name = "TWEETS",
        env = "CLIMA_CONSUMER_BATCH_SIZE",
        default_value_t = clima_consumer::DEFAULT_BATCH_SIZE
    )]
    max_records: usize,

    /// How long to wait for more messages once a batch has its first one.
    #[arg(long = "batch-linger", env = "CLIMA_CONSUMER_BATCH_LINGER", default_value_t = Span::from(clima_consumer::DEFAULT_BATCH_LINGER))]
    linger: Span,

    /// When a batch is acknowledged to the broker: after the store counted it
    /// (exactly once), or before (at most once: a crash in between loses the
    /// batch; only for measuring that design, ci/experiments).
    #[arg(long = "ack", env = "CLIMA_CONSUMER_ACK", value_enum, default_value_t = AckFlag::AfterStore)]
    ack: AckFlag,
}

impl From<BatchFlags> for BatchConfig {
    fn from(flags: BatchFlags) -> Self {
        let ack = match flags.ack {
            AckFlag::AfterStore => AckTiming::AfterStore,
            AckFlag::BeforeStore => AckTiming::BeforeStore,
        };
        Self { max_records: flags.max_records, linger: flags.linger.into(), ack }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct KafkaSourceFlags {
    /// Consumer group id; consumers of one group share the topic's partitions.
    #[arg(long = "kafka-group", env = "CLIMA_KAFKA_GROUP", default_value = clima_consumer::kafka::DEFAULT_GROUP)]
    group: String,
}

impl From<KafkaSourceFlags> for KafkaSourceConfig {
    fn from(flags: KafkaSourceFlags) -> Self {
        Self { group: flags.group }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RabbitMqSourceFlags {
    /// Unacknowledged messages RabbitMQ may push to this consumer (basic.qos);
    /// bounds its memory. Each message is a batch of up to the writer's --max-records tweets.
    #[arg(long = "rabbitmq-prefetch", env = "CLIMA_RABBITMQ_PREFETCH", default_value_t = clima_consumer::rabbitmq::DEFAULT_PREFETCH)]
    prefetch: u16,

    /// A message delivered this many times (its quorum-queue `x-delivery-count`)
    /// goes to the dead-letter queue instead of being counted: one that keeps
    /// crashing consumers stops looping, and it is kept, where the broker's
    /// own limit (20 in RabbitMQ 4) would drop it. 0: no limit of our own.
    /// Every consumer crash or restart is a delivery of each message it held
    /// unacked, so keep room for incidents below 20.
    #[arg(
        long = "rabbitmq-max-deliveries",
        env = "CLIMA_RABBITMQ_MAX_DELIVERIES",
        default_value_t = clima_consumer::rabbitmq::DEFAULT_MAX_DELIVERIES,
        value_parser = clap::value_parser!(u64).range(0..20)
    )]
    max_deliveries: u64,
}

impl From<RabbitMqSourceFlags> for RabbitMqSourceConfig {
    fn from(flags: RabbitMqSourceFlags) -> Self {
        Self { prefetch: flags.prefetch, max_deliveries: flags.max_deliveries }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct WriterServerFlags {
    /// Most records accepted in one Publish request.
    #[arg(long = "max-records", env = "CLIMA_WRITER_MAX_RECORDS", default_value_t = clima_writer::DEFAULT_MAX_RECORDS)]
    max_records: usize,

    /// How often the broker connection is checked for the health service.
    #[arg(long = "health-interval", env = "CLIMA_WRITER_HEALTH_INTERVAL", default_value_t = Span::from(clima_writer::DEFAULT_HEALTH_INTERVAL))]
    health_interval: Span,

    /// PEM certificate chain the writer presents: serve gRPC over TLS.
    #[arg(id = "tls_cert", long = "tls-cert", env = "CLIMA_WRITER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(id = "tls_key", long = "tls-key", env = "CLIMA_WRITER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// PEM CA certificate that must have signed every client's certificate (mutual TLS).
    #[arg(long = "tls-client-ca", env = "CLIMA_WRITER_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,

    /// API key every Publish call must present (`authorization: Bearer <key>`
    /// or `x-api-key` metadata; the API's --writer-api-key); none means open.
    /// Health and reflection stay open, for probes and grpcurl.
    #[arg(long = "api-key", env = "CLIMA_WRITER_API_KEY", hide_env_values = true, conflicts_with = "api_key_file")]
    api_key: Option<String>,

    /// File holding --api-key (e.g. a mounted Kubernetes Secret).
    #[arg(id = "api_key_file", long = "api-key-file", env = "CLIMA_WRITER_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
}

impl From<WriterServerFlags> for ServerConfig {
    fn from(flags: WriterServerFlags) -> Self {
        Self {
            max_records: flags.max_records,
            health_interval: flags.health_interval.into(),
            tls_cert: flags.tls_cert,
            tls_key: flags.tls_key,
            tls_client_ca: flags.tls_client_ca,
            api_key: flags.api_key,
            api_key_file: flags.api_key_file,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct KafkaSinkFlags {
    /// How long the producer waits to fill a batch (librdkafka linger.ms). Each
    /// message already holds a batch of tweets, so a long linger only adds latency.
    #[arg(long = "kafka-linger", env = "CLIMA_KAFKA_LINGER", default_value_t = Span::from(clima_writer::sinks::kafka::DEFAULT_LINGER))]
    linger: Span,

    /// How long a record may wait for the broker's acknowledgement before the
    /// publish fails (librdkafka message.timeout.ms).
    #[arg(long = "kafka-delivery-timeout", env = "CLIMA_KAFKA_DELIVERY_TIMEOUT", default_value_t = Span::from(clima_writer::sinks::kafka::DEFAULT_DELIVERY_TIMEOUT))]
    delivery_timeout: Span,

    /// Idempotent producer: broker-side dedupe of the producer's own retries.
    /// clima's exactly-once counting does not depend on it (consumers count each
    /// tweet id once); turn it off only for brokers that mishandle it (see
    /// ARCHITECTURE.md on tansu 0.6).
    #[arg(long = "kafka-idempotence", env = "CLIMA_KAFKA_IDEMPOTENCE", default_value_t = true, action = clap::ArgAction::Set)]
    idempotence: bool,

    /// Compression codec (none, gzip, lz4, zstd; snappy where the broker supports it).
    #[arg(long = "kafka-compression", env = "CLIMA_KAFKA_COMPRESSION", default_value = clima_writer::sinks::kafka::DEFAULT_COMPRESSION)]
    compression: String,

    /// Largest message body the writer produces; bigger batches are split.
    /// Keep it below the topic's max.message.bytes (Kafka's default: 1 MiB).
    #[arg(long = "kafka-max-message-bytes", env = "CLIMA_KAFKA_MAX_MESSAGE_BYTES", default_value_t = clima_writer::sinks::kafka::DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
}

impl From<KafkaSinkFlags> for KafkaSinkConfig {
    fn from(flags: KafkaSinkFlags) -> Self {
        Self {
            linger: flags.linger.into(),
            delivery_timeout: flags.delivery_timeout.into(),
            idempotence: flags.idempotence,
            compression: flags.compression,
            max_message_bytes: flags.max_message_bytes,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RabbitMqSinkFlags {
    /// How long to wait for RabbitMQ's publisher confirms of one request.
    #[arg(long = "rabbitmq-confirm-timeout", env = "CLIMA_RABBITMQ_CONFIRM_TIMEOUT", default_value_t = Span::from(clima_writer::sinks::rabbitmq::DEFAULT_CONFIRM_TIMEOUT))]
    confirm_timeout: Span,
}

impl From<RabbitMqSinkFlags> for RabbitMqSinkConfig {
    fn from(flags: RabbitMqSinkFlags) -> Self {
        Self { confirm_timeout: flags.confirm_timeout.into() }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ApiFlags {
    /// gRPC endpoint of a writer (repeatable; env: comma separated). Every
    /// accepted tweet is sent to every writer. `http://a:50051|http://b:50051`
    /// names replicas of one writer: calls go to them in turn, skipping one
    /// that cannot be reached.
    #[arg(
        long = "writer",
        env = "CLIMA_WRITERS",
        value_delimiter = ',',
        default_values_t = clima_api::DEFAULT_WRITERS.map(str::to_owned)
    )]
    writers: Vec<String>,

    /// PEM CA certificate that signed the writers' certificates: talk to the
    /// writers over TLS (give https:// endpoints).
    #[arg(long = "writer-tls-ca", env = "CLIMA_WRITER_TLS_CA")]
    writer_tls_ca: Option<PathBuf>,

    /// PEM client certificate presented to the writers (mutual TLS).
    #[arg(id = "writer_tls_cert", long = "writer-tls-cert", env = "CLIMA_WRITER_TLS_CLIENT_CERT", requires_all = ["writer_tls_key", "writer_tls_ca"])]
    writer_tls_cert: Option<PathBuf>,

    /// PEM private key of --writer-tls-cert.
    #[arg(
        id = "writer_tls_key",
        long = "writer-tls-key",
        env = "CLIMA_WRITER_TLS_CLIENT_KEY",
        requires = "writer_tls_cert"
    )]
    writer_tls_key: Option<PathBuf>,

    /// API key the writers require (their --api-key): sent as
    /// `Authorization: Bearer <key>` on every writer call.
    #[arg(
        long = "writer-api-key",
        env = "CLIMA_WRITER_API_KEY",
        hide_env_values = true,
        conflicts_with = "writer_api_key_file"
    )]
    writer_api_key: Option<String>,

    /// File holding --writer-api-key (e.g. a mounted Kubernetes Secret).
    #[arg(id = "writer_api_key_file", long = "writer-api-key-file", env = "CLIMA_WRITER_API_KEY_FILE")]
    writer_api_key_file: Option<PathBuf>,

    /// How long a writer may take to confirm before the request fails with 503.
    #[arg(long = "writer-timeout", env = "CLIMA_WRITER_TIMEOUT", default_value_t = Span::from(clima_api::DEFAULT_WRITER_TIMEOUT))]
    writer_timeout: Span,

    /// Largest request body accepted, in bytes (413 above): room for an array
    /// of --max-tweets tweets of about 400 bytes each.
    #[arg(long = "max-body-bytes", env = "CLIMA_MAX_BODY_BYTES", default_value_t = clima_api::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,

    /// Requests handled at once; more are answered 503 at once (load shedding)
    /// instead of queueing without bound.
    #[arg(long = "max-concurrent-requests", env = "CLIMA_MAX_CONCURRENT_REQUESTS", default_value_t = clima_api::DEFAULT_MAX_CONCURRENT_REQUESTS)]
    max_concurrent_requests: usize,

    /// Longest a request may take, body upload included (408 after).
    #[arg(long = "request-timeout", env = "CLIMA_REQUEST_TIMEOUT", default_value_t = Span::from(clima_api::DEFAULT_REQUEST_TIMEOUT))]
    request_timeout: Span,

    /// Longest a client may take to send a request's headers; also how long
    /// an idle keep-alive connection stays open.
    #[arg(long = "header-read-timeout", env = "CLIMA_HEADER_READ_TIMEOUT", default_value_t = Span::from(clima_http::DEFAULT_HEADER_READ_TIMEOUT))]
    header_read_timeout: Span,

    /// Most client connections served at once; more wait in the listen
    /// backlog. Each open-loop `clima load` request in flight holds one.
    #[arg(long = "max-connections", env = "CLIMA_MAX_CONNECTIONS", default_value_t = clima_http::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,

    /// API key that POST /input requires (as `Authorization: Bearer <key>` or
    /// `X-Api-Key: <key>`); none means /input is open.
    #[arg(long = "api-key", env = "CLIMA_API_KEY", hide_env_values = true, conflicts_with = "api_key_file")]
    api_key: Option<String>,

    /// File holding the API key (e.g. a mounted Kubernetes Secret); surrounding whitespace is ignored.
    #[arg(id = "api_key_file", long = "api-key-file", env = "CLIMA_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,

    /// Most tweets accepted in one request (an array). Load clients of the
    /// reference design send 10,000 at once. Arrays longer than
    /// --batch-max-tweets go to the writers in several calls.
    #[arg(long = "max-tweets", env = "CLIMA_MAX_TWEETS", default_value_t = clima_api::DEFAULT_MAX_TWEETS)]
    max_tweets: usize,

    /// Most tweets in one writer call (one broker message): concurrent
    /// requests are sent together up to this many, and a bigger request is
    /// cut into calls of this many; at most the writers' --max-records.
    #[arg(long = "batch-max-tweets", env = "CLIMA_BATCH_MAX_TWEETS", default_value_t = clima_api::DEFAULT_BATCH_MAX_TWEETS)]
    batch_max_tweets: usize,

    /// Writer calls in flight at once; while all are busy, new requests wait
    /// and leave together in the next batch.
    #[arg(long = "batch-in-flight", env = "CLIMA_BATCH_IN_FLIGHT", default_value_t = clima_api::DEFAULT_BATCH_IN_FLIGHT)]
    batch_in_flight: usize,
}

impl From<ApiFlags> for ApiConfig {
    fn from(flags: ApiFlags) -> Self {
        Self {
            writers: flags.writers,
            writer_tls_ca: flags.writer_tls_ca,
            writer_tls_cert: flags.writer_tls_cert,
            writer_tls_key: flags.writer_tls_key,
            writer_api_key: flags.writer_api_key,
            writer_api_key_file: flags.writer_api_key_file,
            writer_timeout: flags.writer_timeout.into(),
            max_body_bytes: flags.max_body_bytes,
            max_concurrent_requests: flags.max_concurrent_requests,
            request_timeout: flags.request_timeout.into(),
            header_read_timeout: flags.header_read_timeout.into(),
            max_connections: flags.max_connections,
            api_key: flags.api_key,
            api_key_file: flags.api_key_file,
            max_tweets: flags.max_tweets,
            batch_max_tweets: flags.batch_max_tweets,
            batch_in_flight: flags.batch_in_flight,
        }
    }
}
