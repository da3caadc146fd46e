//! Ordering as clima's brokers hold it. While a load runs, taps the tweets
//! topic (a reader of no group, from each partition's end) and the tweets
//! exchange (a private queue bound beside clima's, so clima's consumer loses
//! nothing) and measures how far each broker's order departs from the order in
//! which the API accepted the tweets (`received_at`).
//!
//! A tweet is *late* when a tweet the API accepted after it came before it;
//! its lateness is how much later that one was accepted. Counting does not
//! depend on order; this shows what a reader of the log or queue would see.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::Context;
use clima_broker::{
    kafka::KafkaConfig,
    rabbitmq::{ROUTING_KEY, RabbitMqConfig},
};
use clima_proto::v1::TweetRecord;
use futures::StreamExt;
use hdrhistogram::Histogram;
use lapin::{
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
};
use serde::Serialize;

/// What `clima bench order` runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The stack's Kafka and clima's topic on it.
    pub kafka: KafkaConfig,
    /// The stack's RabbitMQ and clima's exchange on it.
    pub rabbitmq: RabbitMqConfig,
    /// Stop once this many tweets came from each broker.
    pub tweets: u64,
    /// Give up after this long (the report then says how many came).
    pub timeout: Duration,
    /// Created once both taps listen: start the load after it exists.
    pub ready_file: PathBuf,
}

/// How far one sequence of tweets departs from acceptance order.
#[derive(Debug)]
pub struct Disorder {
    tweets: u64,
    late: u64,
    /// Lateness of the late tweets, in microseconds.
    lateness_us: Histogram<u64>,
    latest_ns: Option<i128>,
}

impl Default for Disorder {
    fn default() -> Self {
        // 1 µs to an hour: `saturating_record` clamps to the bounds (an
        // auto-resizing histogram would clamp to what it has grown to so far).
        let lateness_us = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        Self { tweets: 0, late: 0, lateness_us, latest_ns: None }
    }
}

impl Disorder {
    /// The next tweet of the sequence, accepted at `accepted_ns`.
    pub fn push(&mut self, accepted_ns: i128) {
        self.tweets += 1;
        match self.latest_ns {
            Some(latest) if accepted_ns < latest => {
                self.late += 1;
                let lateness_us = u64::try_from((latest - accepted_ns) / 1000).unwrap_or(u64::MAX);
                self.lateness_us.saturating_record(lateness_us.max(1));
            }
            _ => self.latest_ns = Some(accepted_ns),
        }
    }

    /// Adds another sequence's figures (e.g. each partition's, for the topic).
    fn merge(&mut self, other: &Self) {
        self.tweets += other.tweets;
        self.late += other.late;
        self.lateness_us.add(&other.lateness_us).expect("histograms of the same bounds add");
    }

    fn report(&self, broker: &'static str, order: &'static str, messages: u64) -> Report {
        let ms = |quantile: f64| {
            if self.late == 0 { 0.0 } else { self.lateness_us.value_at_quantile(quantile) as f64 / 1000.0 }
        };
        Report {
            broker,
            order,
            messages,
            tweets: self.tweets,
            late: self.late,
            late_share: self.late as f64 / self.tweets.max(1) as f64,
            lateness_p50_ms: ms(0.5),
            lateness_p99_ms: ms(0.99),
            lateness_max_ms: if self.late == 0 { 0.0 } else { self.lateness_us.max() as f64 / 1000.0 },
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    broker: &'static str,
    /// Which order was read: one partition's, or the topic's as one reader got it.
    order: &'static str,
    messages: u64,
    tweets: u64,
    late: u64,
    late_share: f64,
    lateness_p50_ms: f64,
    lateness_p99_ms: f64,
    lateness_max_ms: f64,
}

/// When the API accepted the tweet; writers refuse records without it.
fn accepted_ns(record: &TweetRecord) -> Option<i128> {
    record.received_at.as_ref().map(|t| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos))
}

/// Taps both brokers until `tweets` came from each (or `timeout`), then
/// prints how far each broker's order is from the order the API accepted them in.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let kafka = kafka_tap(&config.kafka).await?;
    let (_connection, rabbitmq) = rabbitmq_tap(&config.rabbitmq).await?;
    std::fs::write(&config.ready_file, b"listening\n").context("writing the ready file")?;
    let deadline = tokio::time::Instant::now() + config.timeout;
    let (kafka, rabbitmq) =
        tokio::join!(read_kafka(&kafka, config.tweets, deadline), read_rabbitmq(rabbitmq, config.tweets, deadline));
    let (kafka, rabbitmq) = (kafka?, rabbitmq?);
    for report in kafka.into_iter().chain([rabbitmq]) {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// A reader of no group on every partition of the topic, from its end now.
async fn kafka_tap(kafka: &KafkaConfig) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", format!("clima-bench-order-{}", uuid::Uuid::now_v7().simple()))
        .set("enable.auto.commit", "false")
        .create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(&kafka.topic), timeout)?;
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics().iter().filter(|t| t.name() == kafka.topic).flat_map(|t| t.partitions()) {
        let (_, end) = consumer.fetch_watermarks(&kafka.topic, partition.id(), timeout)?;
        assignment.add_partition_offset(&kafka.topic, partition.id(), Offset::Offset(end))?;
    }
    anyhow::ensure!(assignment.count() > 0, "topic {} has no partitions (is the stack up?)", kafka.topic);
    consumer.assign(&assignment)?;
    Ok(consumer)
}

async fn read_kafka(
    consumer: &StreamConsumer,
    tweets: u64,
    deadline: tokio::time::Instant,
) -> anyhow::Result<[Report; 2]> {
    let mut partitions: BTreeMap<i32, Disorder> = BTreeMap::new();
    let mut as_consumed = Disorder::default();
    let mut messages = 0;
    while as_consumed.tweets < tweets {
        let Ok(message) = tokio::time::timeout_at(deadline, consumer.recv()).await else { break };
        let message = message?;
        let records = clima_consumer::kafka::decode(&message)?;
        messages += 1;
        let partition = partitions.entry(message.partition()).or_default();
        for accepted in records.iter().filter_map(accepted_ns) {
            partition.push(accepted);
            as_consumed.push(accepted);
        }
    }
    let mut per_partition = Disorder::default();
    for partition in partitions.values() {
        per_partition.merge(partition);
    }
    Ok([
        per_partition.report("kafka", "within each partition", messages),
        as_consumed.report("kafka", "the topic, as one plain reader got it", messages),
    ])
}

/// A private queue bound to the tweets exchange with clima's routing key: it
/// gets a copy of every message, in the order the exchange routed them.
async fn rabbitmq_tap(rabbitmq: &RabbitMqConfig) -> anyhow::Result<(lapin::Connection, lapin::Consumer)> {
    let connection = rabbitmq.connect("clima-bench-order").await?;
    let channel = connection.create_channel().await?;
    rabbitmq.declare_topology(&channel).await?;
    let private = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let queue = channel.queue_declare("".into(), private, FieldTable::default()).await?;
    channel
        .queue_bind(
            queue.name().clone(),
            rabbitmq.exchange.as_str().into(),
            ROUTING_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let consumer = channel.basic_consume(queue.name().clone(), "".into(), no_ack, FieldTable::default()).await?;
    Ok((connection, consumer))
}

async fn read_rabbitmq(
    mut consumer: lapin::Consumer,
    tweets: u64,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Report> {
    let mut queue = Disorder::default();
    let mut messages = 0;
    while queue.tweets < tweets {
        let Ok(Some(delivery)) = tokio::time::timeout_at(deadline, consumer.next()).await else { break };
        let delivery = delivery?;
        let content_type = delivery.properties.content_type().as_ref().map(|t| t.as_str());
        messages += 1;
        for accepted in clima_tweet::envelope::decode(content_type, &delivery.data)?.iter().filter_map(accepted_ns) {
            queue.push(accepted);
        }
    }
    Ok(queue.report("rabbitmq", "the queue", messages))
}

#[cfg(test)]
mod tests {
    use super::Disorder;

    fn disorder(accepted_ms: &[i128]) -> Disorder {
        let mut disorder = Disorder::default();
        for &ms in accepted_ms {
            disorder.push(ms * 1_000_000);
        }
        disorder
    }

    #[test]
    fn tweets_in_acceptance_order_or_accepted_together_are_not_late() {
        let report = disorder(&[1, 2, 2, 5, 9]).report("kafka", "test", 1);
        assert_eq!((report.tweets, report.late, report.lateness_max_ms), (5, 0, 0.0));
    }

    #[test]
    fn a_tweet_after_one_accepted_later_is_late_by_the_gap() {
        // 30 came before 20 (late by 10 ms); 40 and 70 before 50 (late by 20 ms, not 10).
        let report = disorder(&[10, 30, 20, 40, 70, 50, 80]).report("kafka", "test", 1);
        assert_eq!((report.tweets, report.late), (7, 2));
        assert!((report.lateness_max_ms - 20.0).abs() < 0.1, "{report:?}");
        assert!((report.lateness_p50_ms - 10.0).abs() < 0.1, "{report:?}");
        assert!((report.late_share - 2.0 / 7.0).abs() < 1e-9);
    }

    #[test]
    fn merged_partitions_add_their_figures() {
        let mut topic = disorder(&[1, 3, 2]);
        topic.merge(&disorder(&[5, 4, 6]));
        let report = topic.report("kafka", "test", 2);
        assert_eq!((report.tweets, report.late), (6, 2));
    }
}
