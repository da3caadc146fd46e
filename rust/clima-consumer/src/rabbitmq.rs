//! RabbitMQ → store: manual acks with bounded prefetch; a batch is acked
//! (`multiple`) after the store counted it.

use clima_broker::rabbitmq::RabbitMqArgs;
use clima_store::CounterStore;
use clima_tweet::envelope;
use futures::StreamExt;
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio_util::sync::CancellationToken;

use crate::{BatchConfig, ConsumerError, connect_until_ready, count_until_stored};

#[derive(Debug, Clone, clap::Args)]
pub struct RabbitMqSourceConfig {
    /// Unacknowledged messages RabbitMQ may push to this consumer (basic.qos);
    /// bounds its memory. At least the batch size.
    #[arg(long = "rabbitmq-prefetch", env = "CLIMA_RABBITMQ_PREFETCH", default_value_t = 1000)]
    pub prefetch: u16,
}

impl Default for RabbitMqSourceConfig {
    fn default() -> Self {
        Self { prefetch: 1000 }
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
        let Some((_connection, channel, consumer)) =
            connect_until_ready("connecting to rabbitmq", &shutdown, || subscribe(broker, source)).await
        else {
            break;
        };
        tracing::info!(queue = %broker.queue, "rabbitmq consumer started");
        if let Err(error) = consume(&channel, consumer, batching, store, &shutdown).await {
            tracing::warn!(%error, "rabbitmq consumer lost its channel; reconnecting");
        }
    }
    tracing::info!("rabbitmq consumer stopped");
    Ok(())
}

async fn subscribe(
    broker: &RabbitMqArgs,
    source: &RabbitMqSourceConfig,
) -> Result<(lapin::Connection, Channel, lapin::Consumer), ConsumerError> {
    let connection = broker.connect("clima-consumer").await?;
    let channel = connection.create_channel().await?;
    broker.declare_topology(&channel).await?;
    channel.basic_qos(source.prefetch, BasicQosOptions::default()).await?;
    let consumer = channel
        .basic_consume(
            broker.queue.as_str().into(),
            "clima-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((connection, channel, consumer))
}

async fn consume(
    channel: &Channel,
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
        let mut deliveries = vec![first?];
        let deadline = tokio::time::Instant::now() + batching.linger;
        while deliveries.len() < batching.max_records {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(delivery)) => deliveries.push(delivery?),
                Ok(None) | Err(_) => break,
            }
        }
        let mut records = Vec::with_capacity(deliveries.len());
        let mut last_valid_tag = None;
        for delivery in &deliveries {
            match envelope::decode(&delivery.data) {
                Ok(record) => {
                    records.push(record);
                    last_valid_tag = Some(delivery.delivery_tag);
                }
                Err(error) => reject(channel, delivery, &error).await?,
            }
        }
        if !count_until_stored(store, &records, shutdown).await {
            // Shutting down with the batch uncounted: unacked, RabbitMQ redelivers it.
            return Ok(());
        }
        if let Some(tag) = last_valid_tag {
            channel.basic_ack(tag, BasicAckOptions { multiple: true }).await?;
        }
    }
}

/// Not a clima record: never retried (it would fail again), so it does not
/// block the queue.
async fn reject(channel: &Channel, delivery: &Delivery, error: &envelope::EnvelopeError) -> Result<(), ConsumerError> {
    tracing::warn!(%error, delivery_tag = delivery.delivery_tag, "invalid message rejected");
    channel
        .basic_nack(delivery.delivery_tag, BasicNackOptions { multiple: false, requeue: false })
        .await?;
    Ok(())
}
