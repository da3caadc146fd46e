use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clima_store::Counts;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::json;

use super::stats::{StoresArgs, side_by_side, wait_for_totals};

/// Countries the reference load generators use.
const COUNTRIES: &[&str] = &["GT", "MX", "US", "CA", "BR", "AR", "CO", "PE", "CL", "ES", "SV", "HN"];
const WEATHERS: &[(&str, &[&str])] = &[
    ("Lluvioso", &["Está lloviendo", "Llueve a cántaros", "Lluvia ligera por la tarde"]),
    ("Nublado", &["Está nublado", "Cielo gris todo el día", "Nubes densas, sin sol"]),
    ("Soleado", &["Hace sol", "Día despejado y caluroso", "Sol radiante en la ciudad"]),
];

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// URL of the API's POST /input.
    #[arg(long, env = "CLIMA_LOAD_URL", default_value = "http://127.0.0.1:8080/input")]
    url: String,

    /// Tweets to send.
    #[arg(long, env = "CLIMA_LOAD_COUNT", default_value_t = 10_000)]
    count: u64,

    /// Requests in flight at once (closed loop: each sends its next request when the last is answered).
    #[arg(long, env = "CLIMA_LOAD_CONCURRENCY", default_value_t = 32)]
    concurrency: usize,

    /// Tweets per request: 1 sends single objects, more sends JSON arrays.
    #[arg(long, env = "CLIMA_LOAD_BATCH", default_value_t = 1)]
    batch: u64,

    /// Attempts per request: a 5xx answer or a network error is retried with the
    /// same Idempotency-Key, so a retry never counts a tweet twice.
    #[arg(long, env = "CLIMA_LOAD_ATTEMPTS", default_value_t = 5)]
    attempts: usize,

    /// Seed of the country/weather mix, for a reproducible run.
    #[arg(long, env = "CLIMA_LOAD_SEED")]
    seed: Option<u64>,

    /// Then wait until Redis and Valkey counted every accepted tweet, print this
    /// run's counts beside the expected ones, and fail if they differ.
    #[arg(long, env = "CLIMA_LOAD_VERIFY")]
    verify: bool,

    /// How long --verify waits for the consumers to catch up.
    #[arg(long, env = "CLIMA_LOAD_VERIFY_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    verify_timeout: Duration,

    #[command(flatten)]
    stores: StoresArgs,
}

/// What one sender task saw.
#[derive(Default)]
struct Tally {
    accepted: Counts,
    rejected: u64,
    failed: u64,
    retries: u64,
    latencies: Vec<Duration>,
    first_error: Option<String>,
}

#[derive(Deserialize)]
struct Accepted {
    accepted: u64,
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.concurrency == 0 {
        bail!("--batch and --concurrency must be at least 1");
    }
    let stores = if args.verify { Some(args.stores.connect().await?) } else { None };
    let before = match &stores {
        Some((redis, valkey)) => Some(tokio::try_join!(redis.read_counts(1), valkey.read_counts(1))?),
        None => None,
    };

    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let remaining = Arc::new(AtomicU64::new(args.count));
    let progress = progress_bar(args.count, "sending");
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let started = Instant::now();
    let senders: Vec<_> = (0..args.concurrency as u64)
        .map(|task| {
            let (client, url, remaining, progress) =
                (client.clone(), args.url.clone(), Arc::clone(&remaining), progress.clone());
            let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(task));
            let (batch, attempts) = (args.batch, args.attempts.max(1));
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while let Some(size) = claim(&remaining, batch) {
                    send(&client, &url, size, batch > 1, attempts, &mut rng, &mut tally).await;
                    progress.inc(size);
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for sender in senders {
        let tally = sender.await?;
        total.accepted.merge(&tally.accepted);
        total.rejected += tally.rejected;
        total.failed += tally.failed;
        total.retries += tally.retries;
        total.latencies.extend(tally.latencies);
        total.first_error = total.first_error.or(tally.first_error);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    report(&args, &total, elapsed);

    if let (Some(stores), Some((redis_before, valkey_before))) = (stores, before) {
        let draining = progress_bar(total.accepted.total, "counted");
        let (redis_after, valkey_after) = wait_for_totals(
            &stores,
            (redis_before.total, valkey_before.total),
            total.accepted.total,
            args.verify_timeout,
            &draining,
        )
        .await?;
        draining.finish_and_clear();
        let redis = redis_after.since(&redis_before);
        let valkey = valkey_after.since(&valkey_before);
        println!("\nThis run's tweets, as counted:");
        print!(
            "{}",
            side_by_side(&[
                ("accepted (202)", &total.accepted),
                ("Redis (Kafka)", &redis),
                ("Valkey (RabbitMQ)", &valkey)
            ])
        );
        if redis != total.accepted || valkey != total.accepted {
            bail!("the stores' counts differ from the accepted tweets (see the table above)");
        }
        println!("\nEvery accepted tweet was counted exactly once in Redis and in Valkey.");
    }
    if total.failed > 0 {
        bail!("{} tweets were not accepted (first error: {})", total.failed, total.first_error.unwrap_or_default());
    }
    Ok(())
}

/// Takes up to `batch` tweets from the shared budget.
fn claim(remaining: &AtomicU64, batch: u64) -> Option<u64> {
    remaining
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| (left > 0).then(|| left - left.min(batch)))
        .ok()
        .map(|left| left.min(batch))
}

/// What one request attempt came to.
enum Outcome {
    Accepted(u64),
    Rejected(String),
    Failed(String),
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    size: u64,
    array: bool,
    attempts: usize,
    rng: &mut fastrand::Rng,
    tally: &mut Tally,
) {
    let tweets: Vec<(&str, &str, &str)> = (0..size)
        .map(|_| {
            let country = COUNTRIES[rng.usize(..COUNTRIES.len())];
            let (weather, descriptions) = WEATHERS[rng.usize(..WEATHERS.len())];
            (country, weather, descriptions[rng.usize(..descriptions.len())])
        })
        .collect();
    let objects: Vec<_> = tweets
        .iter()
        .map(|(country, weather, description)| json!({"description": description, "country": country, "weather": weather}))
        .collect();
    let body = if array { json!(objects) } else { objects[0].clone() }.to_string();
    let idempotency_key = uuid::Uuid::new_v4().to_string();

    let mut outcome = Outcome::Failed("no attempt".into());
    for attempt in 0..attempts {
        if attempt > 0 {
            tally.retries += 1;
            tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
        }
        let started = Instant::now();
        outcome = attempt_once(client, url, &body, &idempotency_key).await;
        tally.latencies.push(started.elapsed());
        if !matches!(outcome, Outcome::Failed(_)) {
            break;
        }
    }
    match outcome {
        Outcome::Accepted(accepted) if accepted == size => {
            for (country, weather, _) in tweets {
                tally.accepted.add(country, weather);
            }
        }
        Outcome::Accepted(accepted) => {
            tally.failed += size;
            tally.first_error.get_or_insert_with(|| format!("202 with {accepted} of {size} tweets"));
        }
        Outcome::Rejected(error) => {
            tally.rejected += size;
            tally.first_error.get_or_insert(error);
        }
        Outcome::Failed(error) => {
            tally.failed += size;
            tally.first_error.get_or_insert(error);
        }
    }
}

async fn attempt_once(client: &reqwest::Client, url: &str, body: &str, idempotency_key: &str) -> Outcome {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("idempotency-key", idempotency_key)
        .body(body.to_owned())
        .send()
        .await;
    match response {
        Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
            match response.json::<Accepted>().await.context("reading the 202 body") {
                Ok(accepted) => Outcome::Accepted(accepted.accepted),
                Err(error) => Outcome::Failed(format!("{error:#}")),
            }
        }
        Ok(response) => {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if status.is_client_error() {
                Outcome::Rejected(format!("{status}: {text}"))
            } else {
                Outcome::Failed(format!("{status}: {text}"))
            }
        }
        Err(error) => Outcome::Failed(format!("{error:#}")),
    }
}

fn report(args: &LoadArgs, tally: &Tally, elapsed: Duration) {
    let mut latencies = tally.latencies.clone();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies.get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied().unwrap_or_default()
    };
    let sent = tally.accepted.total + tally.rejected + tally.failed;
    println!(
        "sent {sent} tweets in {} attempts of {} tweets to {} in {:.2} s ({:.0} tweets/s)",
        latencies.len(),
        args.batch,
        args.url,
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
    );
    println!(
        "accepted {}, rejected (4xx) {}, failed after retries (5xx or network) {}, retried requests {}; \
         latency of attempts p50 {:?}, p99 {:?}, max {:?}",
        tally.accepted.total,
        tally.rejected,
        tally.failed,
        tally.retries,
        percentile(0.50),
        percentile(0.99),
        latencies.last().copied().unwrap_or_default()
    );
}

fn progress_bar(length: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(length).with_message(message);
    bar.set_style(
        ProgressStyle::with_template("{msg:>8} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}
