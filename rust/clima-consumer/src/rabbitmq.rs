//! RabbitMQ → store: manual acks with bounded prefetch; a batch is acked
//! (`multiple`) after the store counted it (before it with `--ack before-store`).

use std::time::Duration;

use clima_broker::rabbitmq::{RabbitMqArgs, trace_headers};
use clima_store::{CounterStore, Delivered};
use clima_tweet::envelope;
use futures::StreamExt;
use lapin::{
    Channel,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use tokio_util::sync::CancellationToken;

use crate::{
    AckTiming, Batch, BatchConfig, ConsumerError, DEAD_LETTER_REASON_HEADER, Source, count_until_stored,
    dead_letter_reason, process_spans, record_received, retry_until_ok,
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
    max_deliveries: u64,
}

/// Default of --rabbitmq-max-deliveries: below RabbitMQ 4's quorum-queue
/// delivery limit of 20, past which the broker drops a message that has no
/// dead-letter exchange (`rabbit_fifo`; crashes count like requeues).
pub const DEFAULT_MAX_DELIVERIES: u64 = 10;

/// Where a dead letter keeps the broker's `x-delivery-count` it had.
pub const ORIGINAL_DELIVERY_COUNT_HEADER: &str = "clima-original-delivery-count";

#[derive(Debug, Clone, clap::Args)]
pub struct RabbitMqSourceConfig {
    /// Unacknowledged messages RabbitMQ may push to this consumer (basic.qos);
    /// bounds its memory. Each message is a batch of up to the writer's --max-records tweets.
    #[arg(long = "rabbitmq-prefetch", env = "CLIMA_RABBITMQ_PREFETCH", default_value_t = 64)]
    pub prefetch: u16,

    /// A message delivered this many times (its quorum-queue `x-delivery-count`)
    /// goes to the dead-letter queue instead of being counted: one that keeps
    /// crashing consumers stops looping, and it is kept, where the broker's
    /// own limit (20 in RabbitMQ 4) would drop it. 0: no limit of our own.
    /// Every consumer crash or restart is a delivery of each message it held
    /// unacked, so keep room for incidents below 20.
    #[arg(
        long = "rabbitmq-max-deliveries",
        env = "CLIMA_RABBITMQ_MAX_DELIVERIES",
        default_value_t = DEFAULT_MAX_DELIVERIES,
        value_parser = clap::value_parser!(u64).range(0..20)
    )]
    pub max_deliveries: u64,
}

impl Default for RabbitMqSourceConfig {
    fn default() -> Self {
        Self { prefetch: 64, max_deliveries: DEFAULT_MAX_DELIVERIES }
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

/// Consumes until `shutdown`, reconnecting after broker failures; the batch
/// in hand is counted and acked first.
pub async fn run(
    broker: &RabbitMqArgs,
    source: &RabbitMqSourceConfig,
    batching: &BatchConfig,
    store: &CounterStore,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    while !shutdown.is_cancelled() {
        let Some((_connection, channels, consumer)) =
            retry_until_ok("connecting to rabbitmq", &shutdown, || subscribe(broker, source)).await
        else {
            break;
        };
        tracing::info!(queue = %broker.queue, "rabbitmq consumer started");
        let depth = tokio::spawn(report_queue_depth(channels.consume.clone(), broker.queue.clone()));
        if let Err(error) = consume(&channels, consumer, batching, store, &shutdown).await {
            tracing::warn!(%error, "rabbitmq consumer lost its channel; reconnecting");
        }
        depth.abort();
    }
    tracing::info!("rabbitmq consumer stopped");
    Ok(())
}

async fn subscribe(
    broker: &RabbitMqArgs,
    source: &RabbitMqSourceConfig,
) -> Result<(lapin::Connection, Channels, lapin::Consumer), ConsumerError> {
    let connection = broker.connect("clima-consumer").await?;
    let channel = connection.create_channel().await?;
    broker.declare_topology(&channel).await?;
    let dead_letter_queue = dead_letter_queue(&broker.queue);
    channel
        .queue_declare(dead_letter_queue.as_str().into(), QueueDeclareOptions::durable(), FieldTable::default())
        .await?;
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
    let max_deliveries = source.max_deliveries;
    Ok((connection, Channels { consume: channel, dead_letters, dead_letter_queue, max_deliveries }, consumer))
}

async fn consume(
    channels: &Channels,
    mut consumer: lapin::Consumer,
    batching: &BatchConfig,
    store: &CounterStore,
    shutdown: &CancellationToken,
) -> Result<(), ConsumerError> {
    loop {
        let first = tokio::select! {
            delivery = consumer.next() => delivery,
            () = shutdown.cancelled() => return Ok(()),
        };
        let Some(first) = first else {
            return Err(ConsumerError::StreamEnded);
        };
        let mut records = Vec::new();
        let mut delivered = Vec::new();
        let mut spans = Vec::new();
        let mut last_valid_tag = None;
        let mut delivery = first?;
        let deadline = tokio::time::Instant::now() + batching.linger;
        loop {
            let deliveries = delivery_count(&delivery);
            if channels.max_deliveries > 0 && deliveries >= channels.max_deliveries {
                let reason = format!(
                    "delivered {deliveries} times (--rabbitmq-max-deliveries {}): set aside before the broker's \
                     delivery limit drops it",
                    channels.max_deliveries
                );
                dead_letter(channels, &delivery, &reason).await?;
                match tokio::time::timeout_at(deadline, consumer.next()).await {
                    Ok(Some(next)) => {
                        delivery = next?;
                        continue;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let content_type = delivery.properties.content_type().as_ref().map(|t| t.as_str());
            let decoded = envelope::decode(content_type, &delivery.data);
            record_received(Source::RabbitMq, decoded.as_ref().ok().map(Vec::len));
            match decoded {
                Ok(decoded) => {
                    let headers = trace_headers::Extract(delivery.properties.headers().as_ref());
                    spans.extend(process_spans("rabbitmq", delivery.exchange.as_str(), &decoded, &headers));
                    let message_id = delivery.properties.message_id().as_ref().map(|id| id.to_string());
                    delivered.push(Delivered { message_id, records: decoded.len() });
                    records.extend(decoded);
                    last_valid_tag = Some(delivery.delivery_tag);
                }
                Err(error) => dead_letter(channels, &delivery, &error.to_string()).await?,
            }
            if records.len() >= batching.max_records {
                break;
            }
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(next)) => delivery = next?,
                Ok(None) | Err(_) => break,
            }
        }
        let ack_first = batching.ack == AckTiming::BeforeStore;
        if ack_first && let Some(tag) = last_valid_tag {
            channels.consume.basic_ack(tag, BasicAckOptions { multiple: true }).await?;
        }
        if !count_until_stored(store, &records, Some(Batch::Delivered(&delivered)), &spans, Source::RabbitMq, shutdown)
            .await
        {
            // Shutting down with the batch uncounted: unacked, RabbitMQ redelivers it
            // (acked before the store, it is lost: what that design gives up).
            return Ok(());
        }
        if let Some(tag) = last_valid_tag {
            if !ack_first {
                channels.consume.basic_ack(tag, BasicAckOptions { multiple: true }).await?;
            }
            // Acked: no redelivery can come, so the journal entries can go. Left
            // behind (a crash right here), they only cost memory until they expire.
            if let Err(error) = store.forget_acked(&delivered).await {
                tracing::debug!(%error, "acked messages stay in the unacked journal until they expire");
            }
        }
    }
}

/// Not a clima record, or delivered too often: retrying would fail again, so it
/// moves to the dead-letter queue (with the reason in a header, and its own
/// properties, so it can be shovelled back as it was) and is acked, and never
/// blocks the queue. It is acked only after RabbitMQ confirmed the dead letter.
async fn dead_letter(channels: &Channels, delivery: &Delivery, reason: &str) -> Result<(), ConsumerError> {
    tracing::warn!(%reason, delivery_tag = delivery.delivery_tag, "dead-lettering a message");
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
    channels.consume.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: false }).await?;
    metrics::counter!("clima_dead_lettered_messages_total", "source" => "rabbitmq").increment(1);
    Ok(())
}

/// Publishes the queue's ready-message count (the consumer's backlog) as a gauge.
async fn report_queue_depth(channel: Channel, queue: String) {
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    loop {
        interval.tick().await;
        match channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await {
            Ok(state) => metrics::gauge!("clima_consumer_lag_messages", "source" => "rabbitmq", "partition" => "all")
                .set(f64::from(state.message_count())),
            Err(error) => tracing::debug!(%error, "queue depth unavailable"),
        }
    }
}
