//! RabbitMQ → store: manual acks with bounded prefetch; a batch is acked
//! (`multiple`) after the store counted it (before it with `--ack before-store`).

use std::time::Duration;

use clima_broker::rabbitmq::{RabbitMqConfig, trace_headers};
use clima_proto::v1::TweetRecord;
use clima_store::{CounterStore, Delivered};
use clima_telemetry::{
    events::{self, Broker, Store},
    readiness::Readiness,
};
use clima_tweet::envelope;
use futures::StreamExt;
use lapin::{
    Channel,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use tokio_util::sync::CancellationToken;

use crate::{
    AckTiming, BatchConfig, ConsumerError, DEAD_LETTER_REASON_HEADER, dead_letter_reason, process_spans,
    retry_until_ok,
    source::{Content, Message, Source, Tallied, Tally},
};

/// Where invalid messages of `queue` go: the durable queue `<queue>.dead`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// The consuming channel, and a confirm-mode channel for dead letters.
struct Channels {
    consume: Channel,
    dead_letters: Channel,
    dead_letter_queue: String,
}

/// Default of --rabbitmq-max-deliveries: below RabbitMQ 4's quorum-queue
/// delivery limit of 20, past which the broker drops a message that has no
/// dead-letter exchange (`rabbit_fifo`; crashes count like requeues).
pub const DEFAULT_MAX_DELIVERIES: u64 = 10;

/// Where a dead letter keeps the broker's `x-delivery-count` it had.
pub const ORIGINAL_DELIVERY_COUNT_HEADER: &str = "clima-original-delivery-count";

/// Default of `--rabbitmq-prefetch`.
pub const DEFAULT_PREFETCH: u16 = 64;

/// The consumer's part of the RabbitMQ settings.
#[derive(Debug, Clone)]
pub struct RabbitMqSourceConfig {
    /// Unacknowledged messages RabbitMQ may push to this consumer (basic.qos).
    pub prefetch: u16,
    /// Deliveries (`x-delivery-count`) after which a message is dead-lettered
    /// instead of counted; 0: no limit of our own. Below 20 (RabbitMQ 4's own limit).
    pub max_deliveries: u64,
}

impl Default for RabbitMqSourceConfig {
    fn default() -> Self {
        Self { prefetch: DEFAULT_PREFETCH, max_deliveries: DEFAULT_MAX_DELIVERIES }
    }
}

/// How often RabbitMQ delivered this message before (quorum queues count it).
fn delivery_count(delivery: &Delivery) -> u64 {
    let headers = delivery.properties.headers().as_ref();
    match headers.and_then(|headers| headers.inner().get("x-delivery-count")) {
        Some(AMQPValue::LongLongInt(count)) => u64::try_from(*count).unwrap_or(0),
        Some(AMQPValue::LongInt(count)) => u64::try_from(*count).unwrap_or(0),
        Some(AMQPValue::LongUInt(count)) => u64::from(*count),
        Some(AMQPValue::ShortInt(count)) => u64::try_from(*count).unwrap_or(0),
        Some(AMQPValue::ShortUInt(count)) => u64::from(*count),
        _ => 0,
    }
}

/// A manual-ack consumer of the tweets queue, reconnecting after broker failures.
pub struct RabbitMqSource {
    broker: RabbitMqConfig,
    config: RabbitMqSourceConfig,
    session: Session,
}

/// One connection's channels and consumer, and the task reporting the queue's depth.
struct Session {
    _connection: lapin::Connection,
    channels: Channels,
    consumer: lapin::Consumer,
    depth: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.depth.abort();
    }
}

/// Counts RabbitMQ messages, recognising each by its message id (the unacked journal).
impl Tally<Delivered> for CounterStore {
    type Error = clima_store::StoreError;

    fn store(&self) -> Store {
        CounterStore::system(self)
    }

    async fn count(&self, records: &[TweetRecord], delivered: &[Delivered]) -> Result<Tallied, Self::Error> {
        Ok(Tallied::Counted(self.count_delivered(records, delivered).await?))
    }

    /// Acked: no redelivery can come, so the journal entries can go. Left
    /// behind (a crash right before this), they only cost memory until they expire.
    async fn forget_acked(&self, delivered: &[Delivered]) -> Result<(), Self::Error> {
        CounterStore::forget_acked(self, delivered).await
    }
}

/// Consumes until `shutdown`, reconnecting after broker failures. A batch in
/// hand then stays unacked: RabbitMQ delivers it again, and the store counts it once.
pub async fn run(
    broker: &RabbitMqConfig,
    source: &RabbitMqSourceConfig,
    batching: &BatchConfig,
    store: &CounterStore,
    shutdown: CancellationToken,
    health: &Readiness,
) -> Result<(), ConsumerError> {
    let Some(mut source) = RabbitMqSource::connect(broker, source, &shutdown).await else { return Ok(()) };
    crate::driver::run(&mut source, store, batching, &shutdown, health).await;
    Ok(())
}

impl RabbitMqSource {
    /// Connects and subscribes, retrying until RabbitMQ answers; `None` if
    /// `shutdown` came first.
    pub async fn connect(
        broker: &RabbitMqConfig,
        config: &RabbitMqSourceConfig,
        shutdown: &CancellationToken,
    ) -> Option<Self> {
        let session = Self::session(broker, config, shutdown).await?;
        Some(Self { broker: broker.clone(), config: config.clone(), session })
    }

    async fn session(
        broker: &RabbitMqConfig,
        config: &RabbitMqSourceConfig,
        shutdown: &CancellationToken,
    ) -> Option<Session> {
        let (connection, channels, consumer) =
            retry_until_ok("connecting to rabbitmq", shutdown, || subscribe(broker, config)).await?;
        tracing::info!(queue = %broker.queue, "rabbitmq consumer started");
        let depth = tokio::spawn(report_queue_depth(channels.consume.clone(), broker.queue.clone()));
        Some(Session { _connection: connection, channels, consumer, depth })
    }
}

impl Source for RabbitMqSource {
    const BROKER: Broker = Broker::RabbitMq;
    /// The delivery tag.
    type Ack = u64;
    type Position = Delivered;
    type Original = Delivery;

    async fn next(&mut self) -> Result<Message<Self>, ConsumerError> {
        let Some(delivery) = self.session.consumer.next().await else { return Err(ConsumerError::StreamEnded) };
        let delivery = delivery?;
        let ack = delivery.delivery_tag;
        let deliveries = delivery_count(&delivery);
        let max_deliveries = self.config.max_deliveries;
        if max_deliveries > 0 && deliveries >= max_deliveries {
            let reason = format!(
                "delivered {deliveries} times (--rabbitmq-max-deliveries {max_deliveries}): set aside before the \
                 broker's delivery limit drops it"
            );
            return Ok(Message { ack, content: Content::Rejected { original: delivery, reason } });
        }
        let content_type = delivery.properties.content_type().as_ref().map(|t| t.as_str());
        let content = match envelope::decode(content_type, &delivery.data) {
            Ok(records) => {
                let headers = trace_headers::Extract(delivery.properties.headers().as_ref());
                let spans = process_spans(Broker::RabbitMq, delivery.exchange.as_str(), &records, &headers);
                let message_id = delivery.properties.message_id().as_ref().map(|id| id.to_string());
                let position = Delivered { message_id, records: records.len() };
                Content::Tweets { records, spans, position }
            }
            Err(error) => Content::Rejected { reason: dead_letter_reason(&error), original: delivery },
        };
        Ok(Message { ack, content })
    }

    /// Not a clima record, or delivered too often: retrying would fail again, so it
    /// moves to the dead-letter queue (with the reason in a header, and its own
    /// properties, so it can be shovelled back as it was), and never blocks the
    /// queue. The driver acks it with its batch, after RabbitMQ confirmed the
    /// dead letter (a crash in between dead-letters it twice).
    async fn dead_letter(&mut self, delivery: &Delivery, reason: &str) -> Result<(), ConsumerError> {
        let channels = &self.session.channels;
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        // The broker's own count must not travel: shovelled back, the message would
        // arrive already "delivered too often". It is kept under our name.
        if let Some(count) = headers.inner().get("x-delivery-count").cloned() {
            headers.insert(ORIGINAL_DELIVERY_COUNT_HEADER.into(), count);
        }
        let mut headers: FieldTable = headers
            .inner()
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "x-delivery-count" | "x-acquired-count"))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into();
        headers.insert(DEAD_LETTER_REASON_HEADER.into(), AMQPValue::LongString(dead_letter_reason(&reason).into()));
        let properties = delivery.properties.clone().with_delivery_mode(2).with_headers(headers);
        let confirmation = channels
            .dead_letters
            .basic_publish(
                "".into(),
                channels.dead_letter_queue.as_str().into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &delivery.data,
                properties,
            )
            .await?
            .await?;
        if !confirmation.is_ack() || confirmation.take_message().is_some() {
            return Err(ConsumerError::DeadLetterRefused);
        }
        Ok(())
    }

    /// One `multiple` ack up to the batch's last delivery tag.
    async fn ack(&mut self, acks: &[u64], _timing: AckTiming) -> Result<(), ConsumerError> {
        if let Some(&last) = acks.iter().max() {
            self.session.channels.consume.basic_ack(last, BasicAckOptions { multiple: true }).await?;
        }
        Ok(())
    }

    async fn recover(&mut self, shutdown: &CancellationToken) -> bool {
        match Self::session(&self.broker, &self.config, shutdown).await {
            Some(session) => {
                self.session = session;
                true
            }
            None => false,
        }
    }
}

async fn subscribe(
    broker: &RabbitMqConfig,
    source: &RabbitMqSourceConfig,
) -> Result<(lapin::Connection, Channels, lapin::Consumer), ConsumerError> {
    let connection = broker.connect("clima-consumer").await?;
    let mut channel = connection.create_channel().await?;
    broker.declare_topology(&channel).await?;
    let dead_letter_queue = dead_letter_queue(&broker.queue);
    if let Err(declared) = broker.declare_queue(&channel, &dead_letter_queue).await {
        channel = replace_dead_letter_queue(broker, &connection, &dead_letter_queue, declared).await?;
    }
    let dead_letters = connection.create_channel().await?;
    dead_letters.confirm_select(ConfirmSelectOptions::default()).await?;
    channel.basic_qos(source.prefetch, BasicQosOptions::default()).await?;
    let consumer = channel
        .basic_consume(
            broker.queue.as_str().into(),
            "clima-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((connection, Channels { consume: channel, dead_letters, dead_letter_queue }, consumer))
}

/// The dead-letter queue could not be declared with the queue's type. Older
/// clima declared it a classic queue, which lives on one node: while that node
/// is down, no consumer of a cluster can declare it or subscribe. An empty one
/// is deleted and declared again with the right type; one that holds messages
/// is kept and used, with a warning that says what to do. Returns an open
/// channel (RabbitMQ closed the one whose declaration it refused).
async fn replace_dead_letter_queue(
    broker: &RabbitMqConfig,
    connection: &lapin::Connection,
    queue: &str,
    declared: clima_broker::BrokerError,
) -> Result<Channel, ConsumerError> {
    let clima_broker::BrokerError::RabbitMq(error) = &declared else { return Err(declared.into()) };
    if !precondition_failed(error) {
        return Err(declared.into());
    }
    let channel = connection.create_channel().await?;
    let empty_only = QueueDeleteOptions { if_empty: true, ..Default::default() };
    if let Err(not_deleted) = channel.queue_delete(queue.into(), empty_only).await {
        // Refused because it is not empty; anything else is an error of its own.
        if !precondition_failed(&not_deleted) {
            return Err(not_deleted.into());
        }
        tracing::warn!(
            queue,
            %error,
            %not_deleted,
            "the dead-letter queue has another queue type (an older clima declared it classic, on one node) and \
             holds messages, so it is kept: move them elsewhere (a shovel) and delete it, or a cluster that loses \
             its node stops this consumer"
        );
        return Ok(connection.create_channel().await?);
    }
    broker.declare_queue(&channel, queue).await?;
    tracing::warn!(queue, "replaced the empty dead-letter queue an older clima declared with another queue type");
    Ok(channel)
}

/// RabbitMQ refused a declaration or deletion: the queue exists with other
/// arguments, or is not empty.
fn precondition_failed(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(refusal)
            if *refusal.kind() == lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::PRECONDITIONFAILED)
    )
}

/// Publishes the queue's ready-message count (the consumer's backlog) as a gauge.
async fn report_queue_depth(channel: Channel, queue: String) {
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    loop {
        interval.tick().await;
        match channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await {
            Ok(state) => events::consumer_lag(Broker::RabbitMq, None, u64::from(state.message_count())),
            Err(error) => tracing::debug!(%error, "queue depth unavailable"),
        }
    }
}
