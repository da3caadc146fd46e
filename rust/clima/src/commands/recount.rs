//! `clima recount`: rebuilds the Kafka side's counts from the topic's retained
//! log (each tweet id once), writes them under fresh keys and compares them
//! with the live counts. This is the use of Kafka's log that RabbitMQ, which
//! deletes what was acked, cannot offer. The live store counts a client's
//! retry once only within its dedupe window, so a live count above the log's
//! means retries later than that window.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use anyhow::Context;
use clima_broker::kafka::KafkaConfig;

use crate::flags::KafkaFlags;
use clima_store::{CounterStore, Counts, KeySchema, Retention};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};

#[derive(Debug, clap::Args)]
pub(crate) struct RecountArgs {
    #[command(flatten)]
    kafka: KafkaFlags,

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

pub(crate) async fn run(args: RecountArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let kafka = KafkaConfig::from(args.kafka.clone());
    let topic = kafka.topic.clone();
    let live = CounterStore::connect(&args.store_url, KeySchema::new(&args.key_prefix), Retention::default())
        .await
        .context("connecting to the store")?;
    // A consumer of no group: assigned every partition from its start, it
    // commits nothing and leaves the consumers' offsets alone.
    let consumer: BaseConsumer = kafka
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

    // Tallied here, each tweet id once across the whole log: writing markers
    // for the log into the live store could fill it (it runs with noeviction).
    let (mut messages, mut invalid) = (0u64, 0u64);
    let mut seen: HashSet<uuid::Uuid> = HashSet::new();
    let mut rebuilt = Counts::default();
    while !remaining.is_empty() {
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
            Ok(records) => {
                for record in records {
                    let (Ok(id), Some(tweet)) = (uuid::Uuid::try_parse(&record.id), record.tweet.as_ref()) else {
                        continue;
                    };
                    if seen.insert(id) {
                        rebuilt.add(&tweet.country, clima_tweet::weather_name(tweet.weather()));
                    }
                }
            }
            // The consumer dead-letters these; they are counted nowhere.
            Err(_) => invalid += 1,
        }
    }
    let into = args.into_prefix.clone().unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        format!("{}:recount:{}", args.key_prefix, now.as_secs())
    });
    write_counters(&args.store_url, &KeySchema::new(into.as_str()), &rebuilt).await?;
    let live_counts = live.read_counts(1).await?;
    report(&args, &into, &live_counts, &rebuilt, messages, invalid, started.elapsed())
}

/// Writes the rebuilt counters (a handful of keys; no markers) under `keys`.
async fn write_counters(url: &str, keys: &KeySchema, counts: &Counts) -> anyhow::Result<()> {
    let mut connection = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let mut pipe = redis::pipe();
    pipe.set(keys.total(), counts.total).ignore();
    for (key, fields) in [
        (keys.by_country(), &counts.by_country),
        (keys.by_weather(), &counts.by_weather),
        (keys.by_country_weather(), &counts.by_country_weather),
    ] {
        pipe.del(&key).ignore();
        if !fields.is_empty() {
            pipe.hset_multiple(&key, &fields.iter().collect::<Vec<_>>()).ignore();
        }
    }
    let () = pipe.query_async(&mut connection).await?;
    Ok(())
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
