//! Every metric clima emits, one typed function each (Vector's
//! `internal_events` idea): a metric's name, kind and labels are written once,
//! here, and ARCHITECTURE.md's metrics table lists the same names. Callers
//! say what happened; they never spell a metric.

use std::time::Duration;

/// A broker tweets travel through (the `broker` and `source` labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Broker {
    /// Kafka (Strimzi on Kubernetes, tansu locally).
    Kafka,
    /// RabbitMQ.
    RabbitMq,
}

impl Broker {
    /// The label value, and the OpenTelemetry `messaging.system`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Kafka => "kafka",
            Self::RabbitMq => "rabbitmq",
        }
    }
}

/// A store tweets are counted in (the `store` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Store {
    /// Redis, counting from Kafka.
    Redis,
    /// Valkey, counting from RabbitMQ.
    Valkey,
}

impl Store {
    /// The label value, and the OpenTelemetry `db.system`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Valkey => "valkey",
        }
    }
}

// --- HTTP and gRPC (RED) ---------------------------------------------------

/// One HTTP request served (`http_server_requests_total`, `http_server_request_duration_seconds`).
pub fn http_request_served(method: &str, route: &str, status: u16, took: Duration) {
    let labels = [("method", method.to_owned()), ("route", route.to_owned()), ("status", status.to_string())];
    metrics::counter!("http_server_requests_total", &labels).increment(1);
    metrics::histogram!("http_server_request_duration_seconds", &labels).record(took.as_secs_f64());
}

/// One gRPC call served (`grpc_server_requests_total`, `grpc_server_request_duration_seconds`).
pub fn grpc_request_served(service: &str, method: &str, code: tonic::Code, took: Duration) {
    let labels = [("service", service.to_owned()), ("method", method.to_owned()), ("code", format!("{code:?}"))];
    metrics::counter!("grpc_server_requests_total", &labels).increment(1);
    metrics::histogram!("grpc_server_request_duration_seconds", &labels).record(took.as_secs_f64());
}

/// One gRPC call made to `target` (`grpc_client_requests_total`, `grpc_client_request_duration_seconds`).
pub fn grpc_request_made(service: &str, method: &str, target: &str, code: tonic::Code, took: Duration) {
    let labels = [
        ("service", service.to_owned()),
        ("method", method.to_owned()),
        ("target", target.to_owned()),
        ("code", format!("{code:?}")),
    ];
    metrics::counter!("grpc_client_requests_total", &labels).increment(1);
    metrics::histogram!("grpc_client_request_duration_seconds", &labels).record(took.as_secs_f64());
}

// --- API ---------------------------------------------------------------------

/// Tweets of a request the writers confirmed (`clima_tweets_accepted_total`).
pub fn tweets_accepted(tweets: usize) {
    metrics::counter!("clima_tweets_accepted_total").increment(tweets as u64);
}

/// A request answered with an error, by its JSON `error` code (`clima_input_errors_total`).
pub fn input_rejected(code: &'static str) {
    metrics::counter!("clima_input_errors_total", "error" => code).increment(1);
}

/// One writer call of the group commit: its tweets and the requests sharing
/// it (`clima_api_batch_tweets`, `clima_api_batch_requests`).
pub fn api_batch_sent(tweets: usize, requests: usize) {
    metrics::histogram!("clima_api_batch_tweets").record(tweets as f64);
    metrics::histogram!("clima_api_batch_requests").record(requests as f64);
}

/// A stage of a `POST /input` request in the API (the `stage` label of
/// `clima_api_request_stage_seconds`): where a request's time goes, stage by
/// stage, so that their means add up to the handler's (ARCHITECTURE.md,
/// "Where a request's time goes"). A request cut into several batches (an
/// array over --batch-max-tweets) times only its body and decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiStage {
    /// Reading the body off the connection.
    Body,
    /// JSON decoding, validation, ids and trace context.
    Decode,
    /// Waiting for a free batch slot, until its batch left.
    Queue,
    /// Its batch's calls to every writer, until the last one confirmed.
    Writers,
    /// From the batch's answer until the request's handler ran again.
    Wake,
}

impl ApiStage {
    /// The `stage` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Body => "body",
            Self::Decode => "decode",
            Self::Queue => "queue",
            Self::Writers => "writers",
            Self::Wake => "wake",
        }
    }
}

/// One stage of one request took this long (`clima_api_request_stage_seconds`).
pub fn api_request_stage(stage: ApiStage, took: Duration) {
    metrics::histogram!("clima_api_request_stage_seconds", "stage" => stage.as_str()).record(took.as_secs_f64());
}

// --- writer ------------------------------------------------------------------

/// A publish the broker confirmed (`clima_published_tweets_total`, `clima_publish_duration_seconds`).
pub fn published(broker: Broker, tweets: usize, took: Duration) {
    metrics::histogram!("clima_publish_duration_seconds", "broker" => broker.as_str()).record(took.as_secs_f64());
    metrics::counter!("clima_published_tweets_total", "broker" => broker.as_str()).increment(tweets as u64);
}

/// A publish that failed (`clima_publish_failures_total`, `clima_publish_duration_seconds`).
pub fn publish_failed(broker: Broker, took: Duration) {
    metrics::histogram!("clima_publish_duration_seconds", "broker" => broker.as_str()).record(took.as_secs_f64());
    metrics::counter!("clima_publish_failures_total", "broker" => broker.as_str()).increment(1);
}

// --- consumer ----------------------------------------------------------------

/// A broker message with `tweets` valid tweets (`clima_consumed_messages_total`, `clima_consumed_tweets_total`).
pub fn message_consumed(source: Broker, tweets: usize) {
    metrics::counter!("clima_consumed_messages_total", "source" => source.as_str()).increment(1);
    metrics::counter!("clima_consumed_tweets_total", "source" => source.as_str()).increment(tweets as u64);
}

/// A broker message that is not a valid batch (`clima_consumed_messages_total`, `clima_rejected_messages_total`).
pub fn message_rejected(source: Broker) {
    metrics::counter!("clima_consumed_messages_total", "source" => source.as_str()).increment(1);
    metrics::counter!("clima_rejected_messages_total", "source" => source.as_str()).increment(1);
}

/// A message below the store's next offset, skipped undecoded (`clima_skipped_counted_messages_total`).
pub fn counted_message_skipped(source: Broker) {
    metrics::counter!("clima_skipped_counted_messages_total", "source" => source.as_str()).increment(1);
}

/// A rejected message the dead-letter destination took (`clima_dead_lettered_messages_total`).
pub fn dead_lettered(source: Broker) {
    metrics::counter!("clima_dead_lettered_messages_total", "source" => source.as_str()).increment(1);
}

/// A store write that failed and will be retried (`clima_store_write_failures_total`).
pub fn store_write_failed(store: Store) {
    metrics::counter!("clima_store_write_failures_total", "store" => store.as_str()).increment(1);
}

/// A batch the store counted: `new` tweets counted, `duplicates` recognised
/// as counted before (`clima_counted_tweets_total`, `clima_duplicate_tweets_total`,
/// `clima_store_write_duration_seconds`, retries included).
pub fn batch_counted(source: Broker, store: Store, new: u64, duplicates: u64, took: Duration) {
    metrics::histogram!("clima_store_write_duration_seconds", "store" => store.as_str()).record(took.as_secs_f64());
    let labels = [("source", source.as_str()), ("store", store.as_str())];
    metrics::counter!("clima_counted_tweets_total", &labels).increment(new);
    metrics::counter!("clima_duplicate_tweets_total", &labels).increment(duplicates);
}

/// Messages waiting for the consumer in one Kafka partition, or in the whole
/// RabbitMQ queue (`partition` None: "all") (`clima_consumer_lag_messages`).
pub fn consumer_lag(source: Broker, partition: Option<i32>, messages: u64) {
    let partition = partition.map_or_else(|| "all".to_owned(), |partition| partition.to_string());
    metrics::gauge!("clima_consumer_lag_messages", "source" => source.as_str(), "partition" => partition)
        .set(messages as f64);
}

/// A batch the store refused because its positions were not the ones the
/// consumer read from: the store was restored or emptied, or another
/// consumer counted there (`clima_store_positions_moved_total`).
pub fn store_moved(source: Broker, store: Store) {
    metrics::counter!("clima_store_positions_moved_total", "source" => source.as_str(), "store" => store.as_str())
        .increment(1);
}

/// A Kafka partition whose log is not the one the store counted (the topic
/// was deleted and created again): its stored position was dropped and the
/// new log is counted from its start (`clima_kafka_log_replaced_total`).
pub fn kafka_log_replaced(partition: i32) {
    metrics::counter!("clima_kafka_log_replaced_total", "partition" => partition.to_string()).increment(1);
}

/// Offsets of a Kafka partition that the store had not counted and the log no
/// longer holds (retention deleted them before the store caught up, or the
/// store was restored to before them): their tweets cannot be counted
/// (`clima_kafka_uncountable_offsets_total`).
pub fn kafka_offsets_uncountable(partition: i32, offsets: u64) {
    metrics::counter!("clima_kafka_uncountable_offsets_total", "partition" => partition.to_string()).increment(offsets);
}

/// Whether a consumer receives nothing while its broker holds messages past
/// its position (`clima_consumer_stalled`, 1 while stalled).
pub fn consumer_stalled(source: Broker, stalled: bool) {
    metrics::gauge!("clima_consumer_stalled", "source" => source.as_str()).set(if stalled { 1.0 } else { 0.0 });
}

/// Whether the store was refused for counting because it may evict keys
/// (`clima_store_refused`, 1 while refused).
pub fn store_refused(store: Store, refused: bool) {
    metrics::gauge!("clima_store_refused", "store" => store.as_str()).set(if refused { 1.0 } else { 0.0 });
}
