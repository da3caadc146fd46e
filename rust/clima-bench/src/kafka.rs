use std::time::{Duration, Instant};

use futures::{StreamExt, future::join_all};
use rdkafka::{
    ClientConfig, Message,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};

use crate::{Rate, payload};

/// What `clima bench kafka` runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bootstrap servers.
    pub brokers: String,
    /// librdkafka settings to reach the cluster (`--kafka-option`): only
    /// those [`reaches_the_cluster`] keeps are applied, so the figure measures
    /// the same thing everywhere.
    pub options: Vec<(String, String)>,
    /// Messages to produce, then consume.
    pub messages: u64,
    /// Bytes per message.
    pub size: usize,
    /// Partitions of the scratch topic.
    pub partitions: i32,
}

/// Whether a librdkafka setting is about reaching the cluster (security
/// protocol, SASL, TLS) rather than about how a client produces or consumes.
/// `CLIMA_KAFKA_OPTIONS` is the services' too, and may hold their tuning
/// (the consumers' fetch sizes in k8s), which would change what is measured.
pub fn reaches_the_cluster(key: &str) -> bool {
    key == "security.protocol" || key.starts_with("sasl.") || key.starts_with("ssl.") || key.starts_with("ssl_")
}

/// Produces `messages` to a scratch topic (acks=all), then consumes them.
pub async fn run(ceiling: Config) -> anyhow::Result<Vec<Rate>> {
    let topic = format!("clima-bench-{}", uuid::Uuid::now_v7().simple());
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &ceiling.brokers);
    for (key, value) in &ceiling.options {
        if reaches_the_cluster(key) {
            config.set(key, value);
        } else {
            tracing::warn!(key, "--kafka-option ignored: the bench keeps its own producer and consumer settings");
        }
    }
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let created = admin
        .create_topics(&[NewTopic::new(&topic, ceiling.partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await?;
    for result in created {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code}"))?;
    }

    // acks=all as clima's writer; no idempotence (tansu 0.6, see ARCHITECTURE.md);
    // librdkafka batches everything enqueued (linger 5 ms).
    let producer: FutureProducer = config
        .clone()
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let body = payload(ceiling.size);
    let started = Instant::now();
    // In windows, so the client's queue never overflows.
    let mut sent = 0;
    while sent < ceiling.messages {
        let window = (ceiling.messages - sent).min(50_000);
        let deliveries = (0..window)
            .map(|_| producer.send(FutureRecord::<(), _>::to(&topic).payload(&body), Duration::from_secs(60)));
        for delivery in join_all(deliveries).await {
            delivery.map_err(|(error, _)| error)?;
        }
        sent += window;
    }
    let produced = Rate::new("kafka", "produce (acks=all)", ceiling.messages, started.elapsed());
    eprintln!("kafka: produced {} messages at {:.0}/s; consuming", produced.count, produced.per_second);

    let consumer: StreamConsumer = config
        .set("group.id", &topic)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let mut stream = consumer.stream();
    let mut started = None;
    let mut received = 0;
    // The clock starts at the first message: joining the group is not
    // consuming (and tansu 0.6 sometimes takes minutes to assign partitions).
    let join_deadline = Instant::now() + Duration::from_secs(120);
    while received < ceiling.messages {
        let wait = match started {
            Some(_) => Duration::from_secs(30),
            None => join_deadline.saturating_duration_since(Instant::now()),
        };
        let Ok(next) = tokio::time::timeout(wait, stream.next()).await else {
            eprintln!("kafka: no message for {wait:?} after {received}; the consume ceiling is not measured");
            return Ok(vec![produced]);
        };
        match next {
            Some(Ok(message)) if message.payload().is_some() => {
                started.get_or_insert_with(Instant::now);
                received += 1;
            }
            Some(Ok(_)) => {}
            // librdkafka reconnects by itself; tansu drops idle connections.
            Some(Err(error)) => eprintln!("kafka consumer: {error}; continuing"),
            None => anyhow::bail!("the consumer stream ended"),
        }
    }
    let started = started.unwrap_or_else(Instant::now);
    let consumed = Rate::new("kafka", "consume", received, started.elapsed());
    // The topic stays: tansu 0.6 deletes every topic on a DeleteTopics request
    // (seen here: the clima topics went with it).
    Ok(vec![produced, consumed])
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_settings_that_reach_the_cluster_are_applied() {
        let options = [
            "security.protocol",
            "sasl.mechanism",
            "ssl.ca.location",
            "fetch.max.bytes",
            "queued.max.messages.kbytes",
            "linger.ms",
        ];
        let applied: Vec<_> = options.into_iter().filter(|key| super::reaches_the_cluster(key)).collect();
        assert_eq!(applied, ["security.protocol", "sasl.mechanism", "ssl.ca.location"]);
    }
}
