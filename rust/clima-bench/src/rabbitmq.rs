use std::time::Instant;

use futures::{StreamExt, future::try_join_all};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};

use crate::{Rate, payload};

/// What `clima bench rabbitmq` runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// AMQP URL.
    pub url: String,
    /// Messages to publish, then consume.
    pub messages: u64,
    /// Bytes per message.
    pub size: usize,
    /// classic or quorum (clima's queue is a quorum queue).
    pub queue_type: String,
    /// Publishes awaiting their confirm at once.
    pub window: u64,
}

/// Publishes `messages` to a scratch queue with confirms, then consumes them.
pub async fn run(config: Config) -> anyhow::Result<Vec<Rate>> {
    let connection = Connection::connect(&config.url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let queue = format!("clima-bench-{}", uuid::Uuid::now_v7().simple());
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString(config.queue_type.as_str().into()));
    channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), arguments).await?;

    let body = payload(config.size);
    let started = Instant::now();
    let mut sent = 0;
    while sent < config.messages {
        let window = (config.messages - sent).min(config.window);
        let mut confirms = Vec::with_capacity(window as usize);
        for _ in 0..window {
            let properties = BasicProperties::default().with_delivery_mode(2);
            let confirm = channel
                .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &body, properties)
                .await?;
            confirms.push(confirm);
        }
        for confirmation in try_join_all(confirms).await? {
            anyhow::ensure!(confirmation.is_ack(), "RabbitMQ nacked a message");
        }
        sent += window;
    }
    let published = Rate::new(
        &format!("rabbitmq-{}", config.queue_type),
        "publish (persistent, confirmed)",
        config.messages,
        started.elapsed(),
    );

    channel.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "clima-bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut received = 0;
    while received < config.messages {
        let delivery = consumer.next().await.ok_or_else(|| anyhow::anyhow!("consumer closed"))??;
        received += 1;
        // Acked in hundreds, as clima's consumer acks whole batches.
        if received % 100 == 0 || received == config.messages {
            delivery.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    let consumed =
        Rate::new(&format!("rabbitmq-{}", config.queue_type), "consume (acked)", received, started.elapsed());
    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    Ok(vec![published, consumed])
}
