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

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    #[arg(long, default_value_t = 50_000)]
    messages: u64,
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// classic or quorum (clima's queue is a quorum queue).
    #[arg(long, default_value = "quorum")]
    queue_type: String,
    /// Publishes awaiting their confirm at once.
    #[arg(long, default_value_t = 1000)]
    window: u64,
}

pub async fn run(args: Args) -> anyhow::Result<Vec<Rate>> {
    let connection = Connection::connect(&args.url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let queue = format!("clima-bench-{}", uuid::Uuid::now_v7().simple());
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString(args.queue_type.as_str().into()));
    channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), arguments).await?;

    let body = payload(args.size);
    let started = Instant::now();
    let mut sent = 0;
    while sent < args.messages {
        let window = (args.messages - sent).min(args.window);
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
        &format!("rabbitmq-{}", args.queue_type),
        "publish (persistent, confirmed)",
        args.messages,
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
    while received < args.messages {
        let delivery = consumer.next().await.ok_or_else(|| anyhow::anyhow!("consumer closed"))??;
        received += 1;
        // Acked in hundreds, as clima's consumer acks whole batches.
        if received % 100 == 0 || received == args.messages {
            delivery.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    let consumed = Rate::new(&format!("rabbitmq-{}", args.queue_type), "consume (acked)", received, started.elapsed());
    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    Ok(vec![published, consumed])
}
