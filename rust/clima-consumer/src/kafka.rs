//! Kafka → store: a consumer group; offsets are committed after the store counted the batch
//! (before it with `--ack before-store`).

use std::collections::BTreeMap;

use clima_broker::kafka::{KafkaConfig, trace_headers};
use clima_proto::v1::TweetRecord;
use clima_store::{CounterStore, LogPosition};
use clima_telemetry::{
    events::{self, Broker, Store},
    readiness::Readiness,
};
use clima_tweet::envelope;
use rdkafka::{
    ClientContext, Message as _, Offset, Statistics, TopicPartitionList,
    consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer},
    message::{BorrowedMessage, Header, Headers, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use tokio_util::sync::CancellationToken;

use crate::{
    AckTiming, BatchConfig, ConsumerError, DEAD_LETTER_REASON_HEADER, dead_letter_reason, process_spans,
    retry_until_ok,
    source::{Content, Message, Source, Tally},
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

/// Default of `--kafka-group`.
pub const DEFAULT_GROUP: &str = "clima-consumer";

/// The consumer's part of the Kafka settings.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    /// Consumer group id; consumers of one group share the topic's partitions.
    pub group: String,
}

impl Default for KafkaSourceConfig {
    fn default() -> Self {
        Self { group: DEFAULT_GROUP.to_owned() }
    }
}

/// Publishes librdkafka's per-partition consumer lag as a gauge.
struct LagReporter;

impl ClientContext for LagReporter {
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for (partition, stats) in &topic.partitions {
                // -1 is librdkafka's internal "unassigned" partition; lag -1 means unknown yet.
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    events::consumer_lag(Broker::Kafka, Some(*partition), stats.consumer_lag as u64);
                }
            }
        }
    }
}

impl ConsumerContext for LagReporter {}

type TweetConsumer = StreamConsumer<LagReporter>;

/// Each partition's next offset not counted yet, as last read from or
/// written to the store. Only a shortcut: the store's script is what skips
/// a message that was counted, even when this is stale.
type Counted = BTreeMap<i32, i64>;

/// A message that is not a valid clima record, on its way to the dead-letter topic.
pub struct Rejected {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// The original headers, kept so the dead letter can be inspected as sent.
    headers: Option<OwnedHeaders>,
}

/// A consumer group member on the tweets topic, with a producer for its
/// dead-letter topic.
pub struct KafkaSource {
    consumer: TweetConsumer,
    topic: String,
    dead_letter_producer: FutureProducer,
    dead_letter_topic: String,
    counted: Counted,
    /// Partitions whose messages in the batch being read were below the
    /// store's next offset: after the batch the consumer seeks there instead
    /// of reading what was counted already.
    behind: BTreeMap<i32, i64>,
    /// The last offsets committed (async after the store): committed again,
    /// synchronously, when the consumer stops.
    last_commit: Option<TopicPartitionList>,
}

/// The store, counting the messages of one topic (keyed by partition and offset).
pub struct TopicTally<'a> {
    /// The store that counts.
    pub store: &'a CounterStore,
    /// The topic the positions are in.
    pub topic: &'a str,
}

impl Tally<LogPosition> for TopicTally<'_> {
    type Error = clima_store::StoreError;

    fn store(&self) -> Store {
        self.store.system()
    }

    async fn count(&self, records: &[TweetRecord], positions: &[LogPosition]) -> Result<u64, Self::Error> {
        self.store.count_log_batch(self.topic, records, positions).await
    }
}

/// Consumes until `shutdown`. A batch in hand then stays uncommitted: the
/// group delivers it again, and the store counts it once.
pub async fn run(
    broker: &KafkaConfig,
    source: &KafkaSourceConfig,
    batching: &BatchConfig,
    store: &CounterStore,
    shutdown: CancellationToken,
    health: &Readiness,
) -> Result<(), ConsumerError> {
    let Some(mut source) = KafkaSource::connect(broker, source, store, &shutdown).await? else { return Ok(()) };
    crate::driver::run(&mut source, &TopicTally { store, topic: &broker.topic }, batching, &shutdown, health).await;
    Ok(())
}

impl KafkaSource {
    /// Creates the topics, joins the group and reads from the store where
    /// counting left off; `None` if `shutdown` came first.
    pub async fn connect(
        broker: &KafkaConfig,
        source: &KafkaSourceConfig,
        store: &CounterStore,
        shutdown: &CancellationToken,
    ) -> Result<Option<Self>, ConsumerError> {
        let admin = broker.admin()?;
        let dead_letters = KafkaConfig { topic: broker.dead_letter_topic(), ..broker.clone() };
        let topics_ready = || async {
            broker.ensure_topic(&admin).await?;
            dead_letters.ensure_topic(&admin).await
        };
        if retry_until_ok("creating the kafka topics", shutdown, topics_ready).await.is_none() {
            return Ok(None);
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
        let Some(mut counted) = retry_until_ok("reading the counted offsets", shutdown, positions).await else {
            return Ok(None);
        };
        forget_offsets_beyond_the_log(&consumer, &broker.topic, store, &mut counted).await;
        tracing::info!(topic = %broker.topic, group = %source.group, ?counted, "kafka consumer started");
        Ok(Some(Self {
            consumer,
            topic: broker.topic.clone(),
            dead_letter_producer,
            dead_letter_topic: dead_letters.topic,
            counted,
            behind: BTreeMap::new(),
            last_commit: None,
        }))
    }

    fn commit(&self, offsets: &TopicPartitionList, mode: CommitMode) {
        // A failed commit (e.g. during a rebalance) only means redelivery, which
        // the store's dedupe absorbs.
        if let Err(error) = self.consumer.commit(offsets, mode) {
            tracing::warn!(%error, "offset commit failed; the batch may be redelivered (and not recounted)");
        }
    }
}

impl Source for KafkaSource {
    const BROKER: Broker = Broker::Kafka;
    /// Partition and the offset after the message.
    type Ack = (i32, i64);
    type Position = LogPosition;
    type Original = Rejected;

    /// Errors that `recv` reports (all brokers down, a broker restarting, a
    /// rebalance) are transient: librdkafka reconnects by itself, so they are
    /// logged and waited out, never returned.
    async fn next(&mut self) -> Result<Message<Self>, ConsumerError> {
        loop {
            match self.consumer.recv().await {
                Ok(message) => return Ok(classify(&self.counted, &mut self.behind, &message)),
                Err(error) => {
                    tracing::warn!(%error, "kafka consumer error; waiting for the broker");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Publishes to the dead-letter topic, retrying until Kafka acknowledges:
    /// the producer is apart from the consumer, so its failures are waited out.
    async fn dead_letter(&mut self, original: &Rejected, reason: &str) -> Result<(), ConsumerError> {
        let send = || async {
            let headers = original
                .headers
                .clone()
                .unwrap_or_default()
                .insert(Header { key: DEAD_LETTER_REASON_HEADER, value: Some(reason) });
            let mut record = FutureRecord::to(&self.dead_letter_topic).payload(&original.payload).headers(headers);
            if let Some(key) = &original.key {
                record = record.key(key);
            }
            let sent = self.dead_letter_producer.send(record, std::time::Duration::from_secs(10)).await;
            sent.map(drop).map_err(|(error, _)| error)
        };
        let never = CancellationToken::new();
        retry_until_ok("dead-lettering a kafka message", &never, send).await;
        Ok(())
    }

    async fn ack(&mut self, acks: &[(i32, i64)], timing: AckTiming) -> Result<(), ConsumerError> {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for &(partition, offset) in acks {
            let entry = next.entry(partition).or_default();
            *entry = (*entry).max(offset);
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, offset) in next {
            offsets.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        }
        // Before the store the commit must be durable before counting starts: that
        // is the design being measured. After it, async: a lost commit is a redelivery.
        let mode = if timing == AckTiming::BeforeStore { CommitMode::Sync } else { CommitMode::Async };
        self.commit(&offsets, mode);
        self.last_commit = Some(offsets);
        Ok(())
    }

    fn counted(&mut self, positions: &[LogPosition]) {
        for position in positions {
            let next = self.counted.entry(position.partition).or_default();
            *next = (*next).max(position.offset + 1);
        }
        self.skip_counted(positions);
    }

    /// librdkafka reconnects by itself, and nothing here returns an error
    /// that needs more.
    async fn recover(&mut self, shutdown: &CancellationToken) -> bool {
        !shutdown.is_cancelled()
    }

    /// Async commits may still be queued: makes the last one durable.
    async fn close(&mut self) {
        if let Some(offsets) = self.last_commit.take() {
            self.commit(&offsets, CommitMode::Sync);
        }
    }
}

/// What the driver should do with `message`; notes in `behind` a partition
/// read below the store's next offset.
fn classify(counted: &Counted, behind: &mut BTreeMap<i32, i64>, message: &BorrowedMessage<'_>) -> Message<KafkaSource> {
    let ack = (message.partition(), message.offset() + 1);
    if let Some(&next) = counted.get(&message.partition())
        && message.offset() < next
    {
        // Counted before (a renamed group, a reset or expired offset): not even decoded.
        behind.insert(message.partition(), next);
        return Message { ack, content: Content::CountedBefore };
    }
    let content = match decode(message) {
        Ok(records) => {
            let spans = match message.headers() {
                Some(headers) => {
                    process_spans(Broker::Kafka, message.topic(), &records, &trace_headers::Extract(headers))
                }
                None => process_spans(Broker::Kafka, message.topic(), &records, &std::collections::HashMap::new()),
            };
            let position =
                LogPosition { partition: message.partition(), offset: message.offset(), records: records.len() };
            Content::Tweets { records, spans, position }
        }
        Err(error) => Content::Rejected {
            original: Rejected {
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().unwrap_or_default().to_vec(),
                headers: message.headers().map(|headers| headers.detach()),
            },
            reason: dead_letter_reason(&format_args!(
                "{error} (partition {}, offset {})",
                message.partition(),
                message.offset()
            )),
        },
    };
    Message { ack, content }
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

impl KafkaSource {
    /// Moves each partition that was only behind in this batch (none of its
    /// messages were new) to the store's next offset, so what was counted already
    /// is not fetched again. A failed seek costs only reading.
    fn skip_counted(&mut self, positions: &[LogPosition]) {
        for (partition, behind) in std::mem::take(&mut self.behind) {
            if positions.iter().any(|position| position.partition == partition) {
                continue;
            }
            let next = self.counted.get(&partition).map_or(behind, |&counted| counted.max(behind));
            tracing::info!(partition, next, "skipping messages the store counted already");
            let seek =
                self.consumer.seek(&self.topic, partition, Offset::Offset(next), std::time::Duration::from_secs(1));
            if let Err(error) = seek {
                tracing::debug!(%error, partition, "seek failed; counted messages are read and skipped instead");
            }
        }
    }
}
