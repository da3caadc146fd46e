use std::{collections::BTreeSet, time::Duration};

use anyhow::Context;
use clima_store::{CounterStore, Counts, KeySchema, Retention};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StoresArgs {
    /// Redis URL (counts from Kafka).
    #[arg(
        long = "redis-url",
        env = "CLIMA_REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Valkey URL (counts from RabbitMQ).
    #[arg(
        long = "valkey-url",
        env = "CLIMA_VALKEY_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6380"
    )]
    pub valkey_url: String,

    /// Key prefix the consumers write under.
    #[arg(long = "key-prefix", env = "CLIMA_KEY_PREFIX", default_value = "clima")]
    pub key_prefix: String,
}

impl StoresArgs {
    pub(crate) async fn connect(&self) -> anyhow::Result<(CounterStore, CounterStore)> {
        let keys = KeySchema::new(&self.key_prefix);
        let redis = CounterStore::connect(&self.redis_url, keys.clone(), Retention::default())
            .await
            .context("connecting to Redis")?;
        let valkey = CounterStore::connect(&self.valkey_url, keys, Retention::default())
            .await
            .context("connecting to Valkey")?;
        Ok((redis, valkey))
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    stores: StoresArgs,

    /// Print JSON ({"redis": {...}, "valkey": {...}}) instead of a table.
    #[arg(long, env = "CLIMA_STATS_JSON")]
    json: bool,

    /// Per-minute counters to show, most recent last.
    #[arg(long, env = "CLIMA_STATS_MINUTES", default_value_t = 5)]
    minutes: usize,
}

pub(crate) async fn run(args: StatsArgs) -> anyhow::Result<()> {
    let (redis, valkey) = args.stores.connect().await?;
    let (redis, valkey) = tokio::try_join!(redis.read_counts(args.minutes), valkey.read_counts(args.minutes))?;
    if args.json {
        println!("{}", serde_json::json!({ "redis": redis, "valkey": valkey }));
    } else {
        print!("{}", side_by_side(&[("Redis (Kafka)", &redis), ("Valkey (RabbitMQ)", &valkey)]));
    }
    Ok(())
}

/// Polls both stores until each counted `expected` more tweets than its
/// `baselines` total, or `timeout` passes; returns their counts then.
pub(crate) async fn wait_for_totals(
    stores: &(CounterStore, CounterStore),
    baselines: (u64, u64),
    expected: u64,
    timeout: Duration,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<(Counts, Counts)> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // A store that is restarting is waited for, not given up on.
        match tokio::try_join!(stores.0.read_counts(1), stores.1.read_counts(1)) {
            Ok((redis, valkey)) => {
                let redis_new = redis.total.saturating_sub(baselines.0);
                let valkey_new = valkey.total.saturating_sub(baselines.1);
                progress.set_position(redis_new.min(valkey_new).min(expected));
                if (redis_new >= expected && valkey_new >= expected) || tokio::time::Instant::now() >= deadline {
                    return Ok((redis, valkey));
                }
            }
            Err(error) if tokio::time::Instant::now() >= deadline => return Err(error.into()),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A table with one row per counter and one column per store.
pub(crate) fn side_by_side(columns: &[(&str, &Counts)]) -> String {
    let mut rows: Vec<(String, Vec<u64>)> = vec![("total".into(), columns.iter().map(|(_, c)| c.total).collect())];
    let mut section = |title: &str, pick: fn(&Counts) -> &std::collections::BTreeMap<String, u64>| {
        let keys: BTreeSet<&String> = columns.iter().flat_map(|(_, counts)| pick(counts).keys()).collect();
        for key in keys {
            let values = columns.iter().map(|(_, counts)| pick(counts).get(key).copied().unwrap_or(0)).collect();
            rows.push((format!("{title} {key}"), values));
        }
    };
    section("weather", |c| &c.by_weather);
    section("country", |c| &c.by_country);
    section("country×weather", |c| &c.by_country_weather);

    let label_width = rows.iter().map(|(label, _)| label.chars().count()).max().unwrap_or(0).max(8);
    let widths: Vec<usize> = columns.iter().map(|(name, _)| name.chars().count().max(8)).collect();
    let mut out = format!("{:label_width$}", "");
    for ((name, _), width) in columns.iter().zip(&widths) {
        out.push_str(&format!("  {name:>width$}"));
    }
    out.push('\n');
    for (label, values) in rows {
        let padding = label_width - label.chars().count();
        out.push_str(&label);
        out.push_str(&" ".repeat(padding));
        for (value, width) in values.iter().zip(&widths) {
            out.push_str(&format!("  {value:>width$}"));
        }
        out.push('\n');
    }
    out
}
