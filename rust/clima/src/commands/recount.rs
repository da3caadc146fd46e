//! `clima recount`: rebuilds the Kafka side's counts from the topic's retained
//! log into fresh keys, then compares them with the live counts. This is the
//! use of Kafka's log that RabbitMQ, which deletes what was acked, cannot offer.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context;
use clima_broker::kafka::KafkaArgs;
use clima_proto::v1::TweetRecord;
use clima_store::{CounterStore, Counts, KeySchema, LogPosition, Retention};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};

#[derive(Debug, clap::Args)]
pub struct RecountArgs {
    #[command(flatten)]
    kafka: KafkaArgs,

    /// The store the Kafka consumer counts into (Redis).
    #[arg(
        long = "store-url",
        env = "CLIMA_STORE_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    store_url: String,

    /// Key prefix of the live counts.
    #[arg(long = "key-prefix", env = "CLIMA_KEY_PREFIX", default_value = "clima")]
    key_prefix: String,

    /// Read the topic from its first retained offset (the only mode: a recount
    /// compares the whole retained log with the live counts).
    #[arg(long = "from-beginning", env = "CLIMA_RECOUNT_FROM_BEGINNING", required = true)]
    from_beginning: bool,

    /// Prefix of the rebuilt counts [default: <key-prefix>:recount:<unix seconds>].
    #[arg(long = "into-prefix", env = "CLIMA_RECOUNT_INTO_PREFIX")]
    into_prefix: Option<String>,

    /// Print JSON instead of a table.
    #[arg(long, env = "CLIMA_RECOUNT_JSON")]
    json: bool,
}

const TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(args: RecountArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let topic = args.kafka.topic.clone();
    let into = args.into_prefix.clone().unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        format!("{}:recount:{}", args.key_prefix, now.as_secs())
    });
    let live = CounterStore::connect(&args.store_url, KeySchema::new(&args.key_prefix), Retention::default())
        .await
        .context("connecting to the store")?;
    // A day-long dedupe window: the whole log is read in one go, so a retried
    // tweet is recognised wherever it is in the log.
    let window = Retention { dedupe_window: Duration::from_secs(24 * 3600), ..Retention::default() };
    let rebuilt = CounterStore::connect(&args.store_url, KeySchema::new(into.as_str()), window).await?;

    // A consumer of no group: assigned every partition from its start, it
    // commits nothing and leaves the consumers' offsets alone.
    let consumer: BaseConsumer = args
        .kafka
        .client_config()
        .set("group.id", format!("clima-recount-{}", uuid::Uuid::now_v7().simple()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&topic), TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions (does it exist?)");
    let mut remaining = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        let (low, high) = consumer.fetch_watermarks(&topic, partition, TIMEOUT)?;
        if high > low {
            remaining.insert(partition, high);
            assignment.add_partition_offset(&topic, partition, Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;

    let (mut messages, mut invalid) = (0u64, 0u64);
    while !remaining.is_empty() {
        let mut records: Vec<TweetRecord> = Vec::new();
        let mut positions = Vec::new();
        while records.len() < 5000 && !remaining.is_empty() {
            let Some(message) = consumer.poll(TIMEOUT) else {
                anyhow::bail!("no message for {TIMEOUT:?} with partitions {remaining:?} unread to their end")
            };
            let message = message?;
            let partition = message.partition();
            if remaining.get(&partition).is_some_and(|&end| message.offset() + 1 >= end) {
                remaining.remove(&partition);
            }
            messages += 1;
            match clima_consumer::kafka::decode(&message) {
                Ok(decoded) => {
                    positions.push(LogPosition { partition, offset: message.offset(), records: decoded.len() });
                    records.extend(decoded);
                }
                // The consumer dead-letters these; they are counted nowhere.
                Err(_) => invalid += 1,
            }
        }
        rebuilt.count_log_batch(&topic, &records, &positions).await?;
    }

    let (live_counts, rebuilt_counts) = tokio::try_join!(live.read_counts(1), rebuilt.read_counts(1))?;
    report(&args, &into, &live_counts, &rebuilt_counts, messages, invalid, started.elapsed())
}

fn report(
    args: &RecountArgs,
    into: &str,
    live: &Counts,
    rebuilt: &Counts,
    messages: u64,
    invalid: u64,
    took: Duration,
) -> anyhow::Result<()> {
    let agree = live.total == rebuilt.total
        && live.by_country == rebuilt.by_country
        && live.by_weather == rebuilt.by_weather
        && live.by_country_weather == rebuilt.by_country_weather;
    if args.json {
        let report = serde_json::json!({
            "topic": args.kafka.topic, "messages": messages, "invalid_messages": invalid, "into_prefix": into,
            "seconds": took.as_secs_f64(), "agree": agree, "live": live, "recount": rebuilt,
        });
        println!("{report}");
    } else {
        println!(
            "recount of {} ({messages} messages, {invalid} invalid) into {into} in {:.1} s",
            args.kafka.topic,
            took.as_secs_f64()
        );
        println!("{:<14} {:>12} {:>12}", "", "live", "from the log");
        println!("{:<14} {:>12} {:>12}", "total", live.total, rebuilt.total);
        let countries: std::collections::BTreeSet<&String> =
            live.by_country.keys().chain(rebuilt.by_country.keys()).collect();
        for country in countries {
            let (a, b) = (
                live.by_country.get(country).copied().unwrap_or(0),
                rebuilt.by_country.get(country).copied().unwrap_or(0),
            );
            println!("{:<14} {a:>12} {b:>12}{}", country, if a == b { "" } else { "  ≠" });
        }
        println!(
            "{}",
            if agree { "the live counts agree with the log" } else { "the live counts DIFFER from the log" }
        );
    }
    anyhow::ensure!(agree, "the live counts differ from a recount of the log");
    Ok(())
}
