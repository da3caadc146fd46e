//! Kafka → store: a consumer group; offsets are committed after the store counted the batch
//! (before it with `--ack before-store`).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clima_broker::kafka::{KafkaConfig, trace_headers};
use clima_proto::v1::TweetRecord;
use clima_store::{CounterStore, LogCount, LogPosition};
use clima_telemetry::{
    events::{self, Broker, Store},
    readiness::{Condition, Readiness},
};
use clima_tweet::envelope;
use rdkafka::{
    ClientContext, Message as _, Offset, Statistics, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    message::{BorrowedMessage, Header, Headers, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    AckTiming, BatchConfig, ConsumerError, DEAD_LETTER_REASON_HEADER, dead_letter_reason, process_spans,
    retry_until_ok,
    source::{Content, Message, Source, Tallied, Tally},
};

/// librdkafka settings of the consumer that `--kafka-option` may override.
///
/// `fetch.wait.max.ms`: librdkafka's 500 ms bounds POST→counted at low load,
/// because a fetch with too little data waits that long (on tansu it always
/// does). 50 ms took the Redis side's POST→counted p50 from 300–500 ms to about
/// 70 ms (issue 15) for at most 20 fetches a second per broker at idle. An earlier
/// trial with 20 or 100 ms starved tansu's consumer groups; that was on the
/// unindexed database (ci/infra-up), and the 30-minute soak held at 50 ms.
///
/// `topic.metadata.refresh.interval.ms`: librdkafka's 5 minutes is how long a
/// consumer could take to see a deleted topic created again, and read it.
pub const CONSUMER_DEFAULTS: &[(&str, &str)] =
    &[("fetch.wait.max.ms", "50"), ("topic.metadata.refresh.interval.ms", "10000")];

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

/// How long a consumer may receive nothing before it checks whether its
/// partitions hold messages past its position (a stall).
const STALL_CHECK_AFTER: Duration = Duration::from_secs(15);

/// How often the consumer compares its partitions' ends with its positions
/// (a recreated topic ends below them).
const WATERMARK_CHECK_EVERY: Duration = Duration::from_secs(5);

/// The consumer's librdkafka callbacks: per-partition lag as a gauge, and
/// every partition assignment noted, so that the consumer positions the new
/// partitions where the store says (never where the group's offsets say).
struct KafkaContext {
    /// Bumped on every assignment.
    assignments: Arc<AtomicU64>,
    /// Wakes a consumer waiting for messages: an assignment positioned where
    /// the group says may never deliver one (at the end of a partition).
    assigned: Arc<Notify>,
}

impl ClientContext for KafkaContext {
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

impl ConsumerContext for KafkaContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let partitions: Vec<i32> = partitions.elements().iter().map(|element| element.partition()).collect();
                tracing::info!(?partitions, "partitions assigned; reading them from the store's positions");
                self.assignments.fetch_add(1, Ordering::AcqRel);
                self.assigned.notify_one();
            }
            Rebalance::Revoke(partitions) => {
                let partitions: Vec<i32> = partitions.elements().iter().map(|element| element.partition()).collect();
                tracing::info!(?partitions, "partitions revoked");
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }
}

type TweetConsumer = StreamConsumer<KafkaContext>;

/// Each partition's next offset not counted yet, as last read from or
/// written to the store. Only a shortcut: the store's script is what skips
/// a message that was counted, even when this is stale.
type Counted = BTreeMap<i32, i64>;

/// A partition positioned on the message just below the store's next
/// offset, to check that the log there is the one the store counted.
#[derive(Debug)]
struct Verification {
    /// The store's next offset.
    next: i64,
    /// The binary id of that message's first tweet, as the store kept it
    /// (empty: nothing to compare, as the store kept none for that offset).
    last_id: Vec<u8>,
}

/// A message that is not a valid clima record, on its way to the dead-letter topic.
pub struct Rejected {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// The original headers, kept so the dead letter can be inspected as sent.
    headers: Option<OwnedHeaders>,
}

/// A consumer group member on the tweets topic, with a producer for its
/// dead-letter topic. The store, not the group, says where each partition is
/// read from: on every assignment, and whenever the store or the log moved.
pub struct KafkaSource {
    consumer: TweetConsumer,
    topic: String,
    store: CounterStore,
    dead_letter_producer: FutureProducer,
    dead_letter_topic: String,
    /// The last offsets committed (async after the store): committed again,
    /// synchronously, when the consumer stops.
    last_commit: Option<TopicPartitionList>,
    /// Assignments seen by the context, and the last one positioned from the store.
    assignments: Arc<AtomicU64>,
    assigned: Arc<Notify>,
    aligned: u64,
    /// When [`KafkaSource::check_log_ends`] last ran.
    last_end_check: Instant,
    /// When the last message (or error) came, or the last stall check ran.
    last_received: Instant,
    reading: Reading,
}

/// Where the consumer reads each partition, against what the store counted.
struct Reading {
    counted: Counted,
    /// Partitions whose messages in the batch being read were below the
    /// store's next offset: after the batch the consumer seeks there instead
    /// of reading what was counted already.
    behind: BTreeMap<i32, i64>,
    /// The store moved or the log went back: read again from the store's positions.
    needs_realign: bool,
    /// Partitions positioned just below the store's next offset, not yet checked.
    verifying: BTreeMap<i32, Verification>,
    /// Partitions whose log is not the one the store counted: their stored
    /// next offset, to drop before reading them from their start.
    replaced: BTreeMap<i32, i64>,
    /// The offset last received of each partition since it was positioned.
    last_read: BTreeMap<i32, i64>,
    /// Whether the last stall check found messages the consumer did not receive.
    stalled: bool,
    health: Readiness,
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

    async fn count(&self, records: &[TweetRecord], positions: &[LogPosition]) -> Result<Tallied, Self::Error> {
        Ok(match self.store.count_log_batch(self.topic, records, positions).await? {
            LogCount::Counted(new) => Tallied::Counted(new),
            LogCount::Moved(stored) => {
                tracing::info!(?stored, "the store's next offsets are not the ones this batch was read from");
                Tallied::Moved
            }
        })
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
    let Some(mut source) = KafkaSource::connect(broker, source, store, &shutdown, health).await? else {
        return Ok(());
    };
    crate::driver::run(&mut source, &TopicTally { store, topic: &broker.topic }, batching, &shutdown, health).await;
    Ok(())
}

impl KafkaSource {
    /// Creates the topics and joins the group; `None` if `shutdown` came
    /// first. Each assignment is then read from the store's positions.
    pub async fn connect(
        broker: &KafkaConfig,
        source: &KafkaSourceConfig,
        store: &CounterStore,
        shutdown: &CancellationToken,
        health: &Readiness,
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
        let assignments = Arc::new(AtomicU64::new(0));
        let assigned = Arc::new(Notify::new());
        let consumer: TweetConsumer = broker
            .client_config_with_defaults(CONSUMER_DEFAULTS)
            .set("group.id", &source.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // librdkafka's default session timeout (45 s) on purpose: with 10 s,
            // tansu's group coordinator (sqlite) missed heartbeats under load and
            // rebalanced over and over after a consumer restart (ci/faults).
            .set("statistics.interval.ms", "5000")
            .create_with_context(KafkaContext { assignments: assignments.clone(), assigned: assigned.clone() })?;
        consumer.subscribe(&[&broker.topic])?;
        tracing::info!(topic = %broker.topic, group = %source.group, "kafka consumer started");
        Ok(Some(Self {
            consumer,
            topic: broker.topic.clone(),
            store: store.clone(),
            dead_letter_producer,
            dead_letter_topic: dead_letters.topic,
            last_commit: None,
            assignments,
            assigned,
            aligned: 0,
            last_end_check: Instant::now(),
            last_received: Instant::now(),
            reading: Reading::new(health.clone()),
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
    /// rebalance, a deleted topic) are transient: librdkafka reconnects by
    /// itself, so they are logged and waited out, never returned.
    ///
    /// Cancel-safe: a message is dropped only where the partition is then
    /// positioned again from the store.
    async fn next(&mut self) -> Result<Message<Self>, ConsumerError> {
        loop {
            let assignments = self.assignments.load(Ordering::Acquire);
            if assignments != self.aligned || self.reading.needs_realign {
                match self.realign().await {
                    Ok(()) => {
                        (self.aligned, self.reading.needs_realign) = (assignments, false);
                        self.reading.health.set(true);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not read the store's positions; retrying");
                        self.reading.health.set(false);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            if self.last_end_check.elapsed() >= WATERMARK_CHECK_EVERY {
                self.last_end_check = Instant::now();
                self.check_log_ends();
                self.check_store_positions().await;
                if self.reading.needs_realign {
                    continue;
                }
            }
            if self.last_received.elapsed() >= STALL_CHECK_AFTER {
                self.last_received = Instant::now();
                self.check_stalled();
                if self.reading.needs_realign {
                    continue;
                }
            }
            let next_check = (self.last_end_check + WATERMARK_CHECK_EVERY).min(self.last_received + STALL_CHECK_AFTER);
            let received = tokio::select! {
                received = self.consumer.recv() => received,
                () = self.assigned.notified() => continue,
                () = tokio::time::sleep_until(next_check.into()) => continue,
            };
            self.last_received = Instant::now();
            let message = match received {
                Err(error) => {
                    tracing::warn!(%error, "kafka consumer error; waiting for the broker");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Ok(message) => message,
            };
            if self.assignments.load(Ordering::Acquire) != self.aligned {
                // Fetched from where the group said: read again from the store's positions.
                continue;
            }
            self.reading.moving();
            if !self.reading.in_sequence(message.partition(), message.offset(), || first_id(&message)) {
                continue;
            }
            return Ok(classify(&self.reading.counted, &mut self.reading.behind, &message));
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
            let sent = self.dead_letter_producer.send(record, Duration::from_secs(10)).await;
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

    fn store_moved(&mut self) {
        self.reading.needs_realign = true;
    }

    fn counted(&mut self, positions: &[LogPosition]) {
        for position in positions {
            let next = self.reading.counted.entry(position.partition).or_default();
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
            let position = LogPosition {
                partition: message.partition(),
                offset: message.offset(),
                stored_next: counted.get(&message.partition()).copied(),
                records: records.len(),
            };
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
        for (partition, behind) in std::mem::take(&mut self.reading.behind) {
            if positions.iter().any(|position| position.partition == partition) {
                continue;
            }
            let next = self.reading.counted.get(&partition).map_or(behind, |&counted| counted.max(behind));
            if self.reading.position(partition) >= next {
                // Read up to there already (a rejected message past the counted ones): no seek back.
                continue;
            }
            tracing::info!(partition, next, "skipping messages the store counted already");
            let seek = self.consumer.seek(&self.topic, partition, Offset::Offset(next), Duration::from_secs(1));
            match seek {
                Ok(()) => {
                    self.reading.last_read.remove(&partition);
                }
                Err(error) => {
                    tracing::debug!(%error, partition, "seek failed; counted messages are read and skipped instead");
                }
            }
        }
    }

    /// Positions every assigned partition from the store: just below its
    /// next offset, to check the log there is the one the store counted (see
    /// [`Self::in_sequence`]), or at the log's start where the store has none.
    /// Drops first the positions of partitions whose log was replaced.
    async fn realign(&mut self) -> Result<(), ConsumerError> {
        for (&partition, &next) in &self.reading.replaced {
            if self.store.forget_log_position(&self.topic, partition, next).await? {
                tracing::warn!(partition, next, "dropped the store's position of a replaced log");
            }
        }
        self.reading.replaced.clear();
        let mut positions = self.store.log_positions(&self.topic).await?;
        let last_ids = self.store.log_last_ids(&self.topic).await?;
        let assigned = self.assigned_partitions()?;
        let mut start = TopicPartitionList::new();
        self.reading.verifying.clear();
        for partition in assigned {
            if let Some(&next) = positions.get(&partition)
                && let Some((_, end)) = self.watermarks(partition)
                && next > end
            {
                // The store counted offsets this log never had: it is a new log.
                log_replaced(partition, next, end);
                if self.store.forget_log_position(&self.topic, partition, next).await? {
                    positions.remove(&partition);
                }
            }
            match positions.get(&partition) {
                Some(&next) if next > 0 => {
                    start.add_partition_offset(&self.topic, partition, Offset::Offset(next - 1))?;
                    // Kept by an older clima, or for another offset: nothing to compare.
                    let last_id = match last_ids.get(&partition) {
                        Some((offset, id)) if *offset == next - 1 => id.clone(),
                        _ => Vec::new(),
                    };
                    self.reading.verifying.insert(partition, Verification { next, last_id });
                }
                _ => start.add_partition_offset(&self.topic, partition, Offset::Beginning)?,
            }
        }
        self.consumer.assign(&start)?;
        let assigned: Vec<i32> = start.elements().iter().map(|element| element.partition()).collect();
        tracing::info!(?assigned, ?positions, "reading from the store's next offsets");
        self.reading.counted = positions;
        self.reading.last_read.clear();
        self.reading.behind.clear();
        Ok(())
    }

    /// The partitions of the tweets topic assigned to this consumer now.
    fn assigned_partitions(&self) -> Result<Vec<i32>, ConsumerError> {
        let assignment = self.consumer.assignment()?;
        Ok(assignment.elements_for_topic(&self.topic).iter().map(|element| element.partition()).collect())
    }

    /// The partition's first and next offsets, if the broker says (it blocks
    /// up to a second: a local round trip, once per partition and check).
    fn watermarks(&self, partition: i32) -> Option<(i64, i64)> {
        self.consumer.fetch_watermarks(&self.topic, partition, Duration::from_secs(1)).ok()
    }

    /// Every [`WATERMARK_CHECK_EVERY`]: a partition whose end is below the
    /// consumer's position had its log replaced (the topic was deleted and
    /// created again); the broker may answer a fetch there with nothing at
    /// all, for ever. Read again from the store, which finds the new log.
    fn check_log_ends(&mut self) {
        let Ok(assigned) = self.assigned_partitions() else { return };
        for partition in assigned {
            let position = self.reading.position(partition);
            if let Some((_, end)) = self.watermarks(partition)
                && end < position
            {
                log_replaced(partition, position, end);
                self.reading.needs_realign = true;
            }
        }
    }

    /// Every [`WATERMARK_CHECK_EVERY`]: the store's next offsets of the
    /// assigned partitions must be the ones the consumer reads from. A store
    /// restored or emptied while no message comes would otherwise be noticed
    /// only with the next message (whose batch it refuses).
    async fn check_store_positions(&mut self) {
        let Ok(assigned) = self.assigned_partitions() else { return };
        let stored = match self.store.log_positions(&self.topic).await {
            Ok(stored) => stored,
            Err(error) => return tracing::debug!(%error, "could not read the store's positions"),
        };
        let moved: Vec<i32> = assigned
            .into_iter()
            .filter(|partition| stored.get(partition) != self.reading.counted.get(partition))
            .collect();
        if !moved.is_empty() {
            tracing::warn!(
                ?moved,
                "the store's next offsets moved under the consumer (restored, emptied, or counted by another \
                 consumer): reading again from them"
            );
            self.reading.needs_realign = true;
        }
    }

    /// Called after [`STALL_CHECK_AFTER`] without a message: if an assigned
    /// partition holds messages past the consumer's position, the consumer is
    /// stalled. It says so, is not ready, and positions itself again from the
    /// store, until messages come.
    fn check_stalled(&mut self) {
        let Ok(assigned) = self.assigned_partitions() else { return };
        let mut waiting = Vec::new();
        for partition in assigned {
            let position = self.reading.position(partition);
            if let Some((low, high)) = self.watermarks(partition)
                && high > position.max(low)
            {
                waiting.push((partition, position, high));
            }
        }
        if waiting.is_empty() {
            // Nothing waits (the partitions moved away, or their messages went): no stall.
            self.reading.moving();
        } else {
            self.reading.stalled_behind(&waiting);
        }
    }
}

impl Reading {
    /// Nothing read or counted yet: the first assignment positions every partition.
    fn new(health: Readiness) -> Self {
        Self {
            counted: Counted::new(),
            behind: BTreeMap::new(),
            needs_realign: false,
            verifying: BTreeMap::new(),
            replaced: BTreeMap::new(),
            last_read: BTreeMap::new(),
            stalled: false,
            health,
        }
    }

    /// The next offset the consumer reads of `partition`, as far as it knows.
    fn position(&self, partition: i32) -> i64 {
        match self.last_read.get(&partition) {
            Some(&last) => last + 1,
            None => self.counted.get(&partition).copied().unwrap_or(0),
        }
    }

    /// Whether `message` continues its partition's log as the store counted
    /// it. A partition just positioned by [`Self::realign`] must start with
    /// the message the store counted last: another message at that offset
    /// means a replaced log. A message below it, or one that goes back without
    /// a seek of ours, is dropped and the partition read again from the store,
    /// whose watermark check decides whether the log was replaced (a single
    /// early message, maybe fetched before the assignment, never does).
    ///
    /// `first_id` reads the message's first tweet id, only where it is compared.
    fn in_sequence(&mut self, partition: i32, offset: i64, first_id: impl FnOnce() -> Vec<u8>) -> bool {
        if let Some(check) = self.verifying.remove(&partition) {
            let expected = check.next - 1;
            // A message whose first id cannot be read (not a clima batch) proves nothing either way.
            let same_message = offset == expected && {
                let found = first_id();
                check.last_id.is_empty() || found.is_empty() || found == check.last_id
            };
            if offset < expected {
                // Below the message the store counted last: a message fetched
                // before this assignment took effect (a new group starts at the
                // log's start), or a log that no longer reaches it. Only the
                // broker's watermarks tell which, and realign reads them: a
                // stored offset past the log's end is a replaced log.
                tracing::info!(
                    partition,
                    offset,
                    expected,
                    "a message from before the store's position; reading again from it"
                );
                self.needs_realign = true;
                return false;
            }
            if offset == expected && !same_message {
                tracing::warn!(
                    partition,
                    stored_next = check.next,
                    offset,
                    "the log is not the one the store counted (the topic was deleted and created again): counting \
                     the new log from its start"
                );
                events::kafka_log_replaced(partition);
                self.replaced.insert(partition, check.next);
                self.needs_realign = true;
                return false;
            }
            if offset > check.next {
                let lost = offset - check.next;
                tracing::error!(
                    partition,
                    from = check.next,
                    to = offset,
                    "{lost} offsets the store has not counted are no longer in the log (retention deleted them, or \
                     the store was restored to before them): their tweets cannot be counted"
                );
                events::kafka_offsets_uncountable(partition, lost as u64);
            }
        } else if let Some(&last) = self.last_read.get(&partition)
            && offset <= last
        {
            tracing::warn!(
                partition,
                offset,
                last,
                "the partition went back without a seek (its log was replaced or its position reset); reading it \
                 from the store's position"
            );
            self.needs_realign = true;
            return false;
        }
        self.last_read.insert(partition, offset);
        true
    }

    /// Some assigned partitions hold messages past the consumer's position
    /// (partition, position, end) and nothing came.
    fn stalled_behind(&mut self, waiting: &[(i32, i64, i64)]) {
        if !self.stalled {
            tracing::error!(
                ?waiting,
                "receiving nothing while the topic holds messages past the consumer's position (partition, position, \
                 end); not ready, and reading again from the store's positions"
            );
        }
        self.stalled = true;
        events::consumer_stalled(Broker::Kafka, true);
        self.health.set_condition(Condition::Flowing, false);
        self.needs_realign = true;
    }

    /// A message came: a stall, if there was one, is over.
    fn moving(&mut self) {
        if self.stalled {
            tracing::info!("messages are coming again after a stall");
            self.stalled = false;
            events::consumer_stalled(Broker::Kafka, false);
            self.health.set_condition(Condition::Flowing, true);
        }
    }
}

/// Says that a partition's log is not the one the store counted.
fn log_replaced(partition: i32, position: i64, end: i64) {
    tracing::warn!(
        partition,
        position,
        end,
        "the partition ends below the position counted or read (the topic was deleted and created again): counting \
         the new log from its start"
    );
    events::kafka_log_replaced(partition);
}

/// The binary id of the first tweet of a clima message (empty if none).
fn first_id(message: &BorrowedMessage<'_>) -> Vec<u8> {
    let records = decode(message).unwrap_or_default();
    records
        .first()
        .and_then(|record| uuid::Uuid::try_parse(&record.id).ok())
        .map(|id| id.as_bytes().to_vec())
        .unwrap_or_default()
}

#[cfg(test)]
mod reading_tests {
    //! How the consumer judges the first message after positioning: the
    //! decisions that keep a rebalance from being taken for a replaced log.

    use super::*;

    const COUNTED_ID: [u8; 16] = [7; 16];

    /// Partition 1 positioned just below the store's next offset 769.
    fn positioned_at_769() -> Reading {
        let mut reading = Reading::new(Readiness::not_ready());
        reading.counted.insert(1, 769);
        reading.verifying.insert(1, Verification { next: 769, last_id: COUNTED_ID.to_vec() });
        reading
    }

    #[test]
    fn a_message_fetched_before_the_assignment_is_dropped_not_taken_for_a_replaced_log() {
        // A consumer of a new group starts at the log's start: offset 0 can
        // arrive before the seek to 768 takes effect (seen under ci/faults
        // replicas with a backlog). The store's position must survive it.
        let mut reading = positioned_at_769();
        assert!(!reading.in_sequence(1, 0, || panic!("an early message is not compared")));
        assert!(reading.replaced.is_empty(), "the store's position would be dropped: {:?}", reading.replaced);
        assert!(reading.needs_realign, "the partition is positioned again from the store");
        assert_eq!(reading.counted.get(&1), Some(&769));
    }

    #[test]
    fn another_message_at_the_counted_offset_is_a_replaced_log() {
        let mut reading = positioned_at_769();
        assert!(!reading.in_sequence(1, 768, || vec![9; 16]));
        assert_eq!(reading.replaced, BTreeMap::from([(1, 769)]));
        assert!(reading.needs_realign);
    }

    #[test]
    fn the_counted_message_continues_the_log() {
        let mut reading = positioned_at_769();
        assert!(reading.in_sequence(1, 768, || COUNTED_ID.to_vec()));
        assert!(reading.replaced.is_empty() && !reading.needs_realign);
        // The next message follows it; one that goes back without a seek does not.
        assert!(reading.in_sequence(1, 769, || unreachable!()));
        assert!(!reading.in_sequence(1, 700, || unreachable!()));
        assert!(reading.needs_realign && reading.replaced.is_empty());
    }
}
