//! Kafka → store: a consumer group; offsets are committed after the store counted the batch
//! (before it with `--ack before-store`).

use std::collections::BTreeMap;

use clima_broker::kafka::{KafkaArgs, trace_headers};
use clima_proto::v1::TweetRecord;
use clima_store::{CounterStore, LogPosition};
use clima_tweet::envelope;
use rdkafka::{
    ClientContext, Message, Offset, Statistics, TopicPartitionList,
    consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer},
    message::{BorrowedMessage, Header, Headers, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use tokio_util::sync::CancellationToken;
use tracing::Span;

use crate::{
    AckTiming, BatchConfig, ConsumerError, DEAD_LETTER_REASON_HEADER, Source, count_until_stored, dead_letter_reason,
    process_spans, record_received, retry_until_ok,
};

/// librdkafka settings of the consumer that `--kafka-option` may override.
///
/// `fetch.wait.max.ms`: librdkafka's 500 ms bounds POST→counted at low load,
/// because a fetch with too little data waits that long (on tansu it always
/// does). 50 ms took the Redis side's POST→counted p50 from 300–500 ms to about
/// 70 ms (issue 15) for at most 20 fetches a second per broker at idle. An earlier
/// trial with 20 or 100 ms starved tansu's consumer groups; that was on the
/// unindexed database (ci/infra-up), and the 30-minute soak held at 50 ms.
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[("fetch.wait.max.ms", "50")];

#[derive(Debug, Clone, clap::Args)]
pub struct KafkaSourceConfig {
    /// Consumer group id; consumers of one group share the topic's partitions.
    #[arg(long = "kafka-group", env = "CLIMA_KAFKA_GROUP", default_value = "clima-consumer")]
    pub group: String,
}

/// Publishes librdkafka's per-partition consumer lag as a gauge.
struct LagReporter;

impl ClientContext for LagReporter {
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for (partition, stats) in &topic.partitions {
                // -1 is librdkafka's internal "unassigned" partition; lag -1 means unknown yet.
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    metrics::gauge!("clima_consumer_lag_messages", "source" => "kafka", "partition" => partition.to_string())
                        .set(stats.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for LagReporter {}

type TweetConsumer = StreamConsumer<LagReporter>;

/// One polled batch: the records to count with their process spans and
/// positions in the topic and, per partition, the offset to commit after.
#[derive(Default)]
struct Batch {
    records: Vec<TweetRecord>,
    spans: Vec<Span>,
    positions: Vec<LogPosition>,
    next_offsets: BTreeMap<(String, i32), i64>,
    rejected: Vec<Rejected>,
    /// Partitions whose messages were below the store's next offset: the
    /// consumer seeks there instead of reading what was counted already.
    behind: BTreeMap<i32, i64>,
}

/// Each partition's next offset not counted yet, as last read from or
/// written to the store. Only a shortcut: the store's script is what skips
/// a message that was counted, even when this is stale.
type Counted = BTreeMap<i32, i64>;

/// A message that is not a valid clima record, on its way to the dead-letter topic.
struct Rejected {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// The original headers, kept so the dead letter can be inspected as sent.
    headers: Option<OwnedHeaders>,
    reason: String,
}

/// Consumes until `shutdown`; the batch in hand is counted and committed first.
pub async fn run(
    broker: &KafkaArgs,
    source: &KafkaSourceConfig,
    batching: &BatchConfig,
    store: &CounterStore,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let admin = broker.admin()?;
    let dead_letters = KafkaArgs { topic: broker.dead_letter_topic(), ..broker.clone() };
    let topics_ready = || async {
        broker.ensure_topic(&admin).await?;
        dead_letters.ensure_topic(&admin).await
    };
    if retry_until_ok("creating the kafka topics", &shutdown, topics_ready).await.is_none() {
        return Ok(());
    }
    let dead_letter_producer: FutureProducer =
        broker.client_config().set("acks", "all").set("enable.idempotence", "true").create()?;
    let consumer: TweetConsumer = broker
        .client_config_with_defaults(CONSUMER_DEFAULTS)
        .set("group.id", &source.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // librdkafka's default session timeout (45 s) on purpose: with 10 s,
        // tansu's group coordinator (sqlite) missed heartbeats under load and
        // rebalanced over and over after a consumer restart (ci/faults).
        .set("statistics.interval.ms", "5000")
        .create_with_context(LagReporter)?;
    consumer.subscribe(&[&broker.topic])?;
    let committed = committed_offsets(&consumer, &broker.topic);
    let positions = || async {
        store.adopt_log_positions(&broker.topic, &committed).await?;
        store.log_positions(&broker.topic).await
    };
    let Some(mut counted) = retry_until_ok("reading the counted offsets", &shutdown, positions).await else {
        return Ok(());
    };
    forget_offsets_beyond_the_log(&consumer, &broker.topic, store, &mut counted).await;
    tracing::info!(topic = %broker.topic, group = %source.group, ?counted, "kafka consumer started");

    let mut last_commit = None;
    loop {
        let batch = tokio::select! {
            batch = next_batch(&consumer, batching, &counted) => batch,
            () = shutdown.cancelled() => break,
        };
        let offsets = next_offsets(&batch);
        if batching.ack == AckTiming::BeforeStore {
            commit(&consumer, &offsets, CommitMode::Sync);
            // Committed: leaving now (shutdown) must not commit an older batch's offsets back.
            last_commit = Some(offsets.clone());
        }
        let log = Some(crate::Batch::Log(&broker.topic, &batch.positions));
        if !dead_letter(&dead_letter_producer, &dead_letters.topic, &batch.rejected, &shutdown).await
            || !count_until_stored(store, &batch.records, log, &batch.spans, Source::Kafka, &shutdown).await
        {
            break;
        }
        for position in &batch.positions {
            let next = counted.entry(position.partition).or_default();
            *next = (*next).max(position.offset + 1);
        }
        skip_counted(&consumer, &broker.topic, &batch, &counted);
        if batching.ack == AckTiming::AfterStore {
            commit(&consumer, &offsets, CommitMode::Async);
            last_commit = Some(offsets);
        }
    }
    // Async commits may still be queued: make the last one durable before leaving.
    if let Some(offsets) = last_commit {
        commit(&consumer, &offsets, CommitMode::Sync);
    }
    tracing::info!("kafka consumer stopped");
    Ok(())
}

/// Waits for at least one message, then takes more for up to the linger time.
///
/// Errors that `recv` reports (all brokers down, a broker restarting, a
/// rebalance) are transient: librdkafka reconnects by itself, so they are
/// logged and waited out, never allowed to stop the consumer.
async fn next_batch(consumer: &TweetConsumer, batching: &BatchConfig, counted: &Counted) -> Batch {
    let mut batch = Batch::default();
    loop {
        match consumer.recv().await {
            Ok(first) => {
                add(&mut batch, &first, counted);
                break;
            }
            Err(error) => {
                tracing::warn!(%error, "kafka consumer error; waiting for the broker");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
    let deadline = tokio::time::Instant::now() + batching.linger;
    while batch.records.len() < batching.max_records {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => add(&mut batch, &message, counted),
            Ok(Err(error)) => {
                tracing::warn!(%error, "kafka consumer error; counting the batch so far");
                break;
            }
            Err(_elapsed) => break,
        }
    }
    batch
}

fn add(batch: &mut Batch, message: &BorrowedMessage<'_>, counted: &Counted) {
    batch.next_offsets.insert((message.topic().to_owned(), message.partition()), message.offset() + 1);
    if let Some(&next) = counted.get(&message.partition())
        && message.offset() < next
    {
        // Counted before (a renamed group, a reset or expired offset): not even decoded.
        metrics::counter!("clima_skipped_counted_messages_total", "source" => "kafka").increment(1);
        batch.behind.insert(message.partition(), next);
        return;
    }
    let decoded = decode(message);
    record_received(Source::Kafka, decoded.as_ref().ok().map(Vec::len));
    match decoded {
        Ok(records) => {
            let spans = match message.headers() {
                Some(headers) => process_spans("kafka", message.topic(), &records, &trace_headers::Extract(headers)),
                None => process_spans("kafka", message.topic(), &records, &std::collections::HashMap::new()),
            };
            batch.spans.extend(spans);
            batch.positions.push(LogPosition {
                partition: message.partition(),
                offset: message.offset(),
                records: records.len(),
            });
            batch.records.extend(records);
        }
        Err(error) => {
            tracing::warn!(%error, partition = message.partition(), offset = message.offset(), "invalid message; dead-lettering it");
            batch.rejected.push(Rejected {
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().unwrap_or_default().to_vec(),
                headers: message.headers().map(|headers| headers.detach()),
                reason: dead_letter_reason(&error),
            });
        }
    }
}

/// The group's committed offset of every partition of `topic` that has one.
/// Empty if the broker cannot say (then only offsets written by the count
/// script are known, which is the case for every store clima counted from
/// the start).
fn committed_offsets(consumer: &TweetConsumer, topic: &str) -> Counted {
    let timeout = std::time::Duration::from_secs(10);
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), timeout) else { return Counted::new() };
    let mut partitions = TopicPartitionList::new();
    for partition in metadata.topics().iter().filter(|t| t.name() == topic).flat_map(|t| t.partitions()) {
        partitions.add_partition(topic, partition.id());
    }
    let Ok(committed) = consumer.committed_offsets(partitions, timeout) else { return Counted::new() };
    committed
        .elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => Some((element.partition(), offset)),
            _ => None,
        })
        .collect()
}

/// A stored next offset above a partition's end means the topic was deleted
/// and created again (offsets start over): the old offsets would skip the new
/// messages, so they are dropped, and the dedupe markers alone guard that
/// partition until it is counted again.
async fn forget_offsets_beyond_the_log(
    consumer: &TweetConsumer,
    topic: &str,
    store: &CounterStore,
    counted: &mut Counted,
) {
    let timeout = std::time::Duration::from_secs(10);
    let mut stale = Vec::new();
    for (&partition, &next) in counted.iter() {
        if let Ok((_, high)) = consumer.fetch_watermarks(topic, partition, timeout)
            && next > high
        {
            tracing::warn!(
                partition,
                next,
                end = high,
                "stored offset is past the partition's end: the topic was recreated"
            );
            stale.push(partition);
        }
    }
    if stale.is_empty() {
        return;
    }
    if let Err(error) = store.forget_log_positions(topic, &stale).await {
        tracing::warn!(%error, "could not drop the recreated topic's offsets");
        return;
    }
    for partition in stale {
        counted.remove(&partition);
    }
}

/// The tweets of a Kafka message, decoded by its content-type header.
pub fn decode(message: &BorrowedMessage<'_>) -> Result<Vec<TweetRecord>, envelope::EnvelopeError> {
    let content_type = message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|header| header.key == envelope::HEADER_CONTENT_TYPE)?
            .value
            .and_then(|v| std::str::from_utf8(v).ok())
    });
    envelope::decode(content_type, message.payload().unwrap_or_default())
}

/// Moves each partition that was only behind in this batch (none of its
/// messages were new) to the store's next offset, so what was counted already
/// is not fetched again. A failed seek costs only reading.
fn skip_counted(consumer: &TweetConsumer, topic: &str, batch: &Batch, counted: &Counted) {
    for (&partition, &behind) in &batch.behind {
        if batch.positions.iter().any(|position| position.partition == partition) {
            continue;
        }
        let next = counted.get(&partition).map_or(behind, |&counted| counted.max(behind));
        tracing::info!(partition, next, "skipping messages the store counted already");
        if let Err(error) = consumer.seek(topic, partition, Offset::Offset(next), std::time::Duration::from_secs(1)) {
            tracing::debug!(%error, partition, "seek failed; counted messages are read and skipped instead");
        }
    }
}

/// Publishes every rejected message to the dead-letter topic (retrying until
/// Kafka acknowledges); false only on shutdown, so the batch is not committed.
async fn dead_letter(
    producer: &FutureProducer,
    topic: &str,
    rejected: &[Rejected],
    shutdown: &CancellationToken,
) -> bool {
    for message in rejected {
        let send = || async {
            let headers = message
                .headers
                .clone()
                .unwrap_or_else(OwnedHeaders::new)
                .insert(Header { key: DEAD_LETTER_REASON_HEADER, value: Some(message.reason.as_str()) });
            let mut record = FutureRecord::to(topic).payload(&message.payload).headers(headers);
            if let Some(key) = &message.key {
                record = record.key(key);
            }
            producer.send(record, std::time::Duration::from_secs(10)).await.map(drop).map_err(|(error, _)| error)
        };
        if retry_until_ok("dead-lettering a kafka message", shutdown, send).await.is_none() {
            return false;
        }
        metrics::counter!("clima_dead_lettered_messages_total", "source" => "kafka").increment(1);
    }
    true
}

fn next_offsets(batch: &Batch) -> TopicPartitionList {
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), offset) in &batch.next_offsets {
        offsets
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .expect("an offset from a received message is valid");
    }
    offsets
}

fn commit(consumer: &TweetConsumer, offsets: &TopicPartitionList, mode: CommitMode) {
    // A failed commit (e.g. during a rebalance) only means redelivery, which
    // the store's dedupe absorbs.
    if let Err(error) = consumer.commit(offsets, mode) {
        tracing::warn!(%error, "offset commit failed; the batch may be redelivered (and not recounted)");
    }
}
