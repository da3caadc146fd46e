//! `clima load`: a load generator for `POST /input`.
//!
//! Closed loop (the default): `--concurrency` connections, each sending its
//! next request as soon as the last is answered; it finds the highest rate.
//! Open loop (`--rate`): requests leave on a fixed schedule whatever the
//! answers, and each latency is measured from when its request was *due*, so a
//! slow server cannot hide its queueing (no coordinated omission). A run that
//! could not keep its schedule says so and fails (see [`open_loop`]).
//! `--arrays-rate` adds a stream of JSON arrays alongside the single objects.
//!
//! Latencies go into an HDR histogram. `--verify` then waits until Redis and
//! Valkey counted every accepted tweet, checks the counts, and reports the
//! end-to-end rate and the POST→counted latency (see [`lag`]). `--json`
//! writes the figures for the benchmark (`ci/bench`); `--report-every` prints
//! the figures of each interval while the load runs ([`timeline`], `ci/soak`).

mod client;
mod lag;
mod open_loop;
mod timeline;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::bail;
use bytes::Bytes;
use clima_proto::v1::TweetInput;
use clima_store::{CounterStore, Counts};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use self::{
    client::{Outcome, Pool, Target},
    open_loop::{Schedule, Stream},
    timeline::{Edges, IntervalReport, Timeline},
};
use super::stats::{StoresArgs, side_by_side, wait_for_totals};

/// Closed loop connections unless --concurrency says otherwise.
const DEFAULT_CONNECTIONS: usize = 32;

#[derive(Debug, clap::Args)]
pub(crate) struct LoadArgs {
    /// URL of the API's POST /input (http://).
    #[arg(long, env = "CLIMA_LOAD_URL", hide_env_values = true, default_value = "http://127.0.0.1:8080/input")]
    url: String,

    /// Tweets to send.
    #[arg(long, env = "CLIMA_LOAD_COUNT", default_value_t = 10_000)]
    count: u64,

    /// Closed loop: connections, each sending its next request when the last
    /// is answered [default: 32]. Open loop (--rate): most requests in flight
    /// at once [default: one second's worth of requests, so the cap cannot
    /// throttle the asked rate unless answers take over a second; each request
    /// in flight holds a connection, so `ulimit -n` must allow as many].
    #[arg(long, env = "CLIMA_LOAD_CONCURRENCY")]
    concurrency: Option<usize>,

    /// Open loop: tweets per second, sent on a fixed schedule; latencies count
    /// from when each request was due.
    #[arg(long, env = "CLIMA_LOAD_RATE")]
    rate: Option<f64>,

    /// Tweets per request: 1 sends single objects, more sends JSON arrays.
    #[arg(long, env = "CLIMA_LOAD_BATCH", default_value_t = 1)]
    batch: u64,

    /// Open loop: also send JSON arrays of --arrays-batch tweets, at this many
    /// tweets/s, for as long as the main stream runs (its --count tweets at --rate).
    #[arg(long, env = "CLIMA_LOAD_ARRAYS_RATE", requires = "rate")]
    arrays_rate: Option<f64>,

    /// Tweets per array of the --arrays-rate stream.
    #[arg(long, env = "CLIMA_LOAD_ARRAYS_BATCH", default_value_t = 100)]
    arrays_batch: u64,

    /// While the load runs, print the figures of every interval of this
    /// length: accepted/s, request latency and, with --verify, POST→counted
    /// latency and backlog per store.
    #[arg(long, env = "CLIMA_LOAD_REPORT_EVERY", value_parser = humantime::parse_duration)]
    report_every: Option<Duration>,

    /// Also write each interval's figures to this file, one JSON object a line.
    #[arg(long, env = "CLIMA_LOAD_TIMELINE", requires = "report_every")]
    timeline: Option<PathBuf>,

    /// Attempts per request: a 5xx answer or a network error is retried with the
    /// same Idempotency-Key, so a retry never counts a tweet twice.
    #[arg(long, env = "CLIMA_LOAD_ATTEMPTS", default_value_t = 5)]
    attempts: usize,

    /// Seed of the country/weather mix, for a reproducible run.
    #[arg(long, env = "CLIMA_LOAD_SEED")]
    seed: Option<u64>,

    /// Then wait until Redis and Valkey counted every accepted tweet, print this
    /// run's counts beside the expected ones, and fail if they differ; also
    /// measures the end-to-end rate and POST→counted latency.
    #[arg(long, env = "CLIMA_LOAD_VERIFY")]
    verify: bool,

    /// How long --verify waits for the consumers to catch up.
    #[arg(long, env = "CLIMA_LOAD_VERIFY_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    verify_timeout: Duration,

    /// Also write the run's figures to this file as JSON.
    #[arg(long, env = "CLIMA_LOAD_JSON")]
    json: Option<PathBuf>,

    #[command(flatten)]
    stores: StoresArgs,
}

/// What a set of requests came to.
struct Tally {
    accepted: Counts,
    rejected: u64,
    failed: u64,
    retries: u64,
    /// Microseconds from a request's start (closed loop) or due time (open
    /// loop) to its final answer, retries included.
    latency: Histogram<u64>,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            accepted: Counts::default(),
            rejected: 0,
            failed: 0,
            retries: 0,
            latency: latency_histogram(),
            first_error: None,
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.merge_counts(other);
        self.latency.add(&other.latency).expect("histograms of the same precision");
    }

    /// Merges everything but the latencies (another stream's requests).
    fn merge_counts(&mut self, other: &Tally) {
        self.accepted.merge(&other.accepted);
        self.rejected += other.rejected;
        self.failed += other.failed;
        self.retries += other.retries;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// An HDR histogram of microseconds from 1 µs to an hour, 3 significant
/// figures (bounded: the saturating records clamp rather than resize).
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
pub(crate) struct Percentiles {
    /// The mean: unlike percentiles, the means of stages add up (ci/bench's breakdown).
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub samples: u64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            mean: histogram.mean() / 1000.0,
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p95: ms(histogram.value_at_quantile(0.95)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            samples: histogram.len(),
        }
    }
}

/// The figures of one run, as `--json` writes them.
#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    url: String,
    tweets_per_request: u64,
    concurrency: usize,
    target_tweets_per_s: Option<f64>,
    /// Open loop: how well the main stream kept its schedule.
    schedule: Option<Schedule>,
    /// With --arrays-rate: that stream's own figures.
    arrays: Option<ArraysReport>,
    sent: u64,
    accepted: u64,
    rejected: u64,
    failed: u64,
    retried_requests: u64,
    elapsed_s: f64,
    accepted_per_s: f64,
    request_latency_ms: Percentiles,
    /// With --verify only.
    counted: Option<Counted>,
    /// With --report-every: every interval, and the first against the last ones.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    timeline: Vec<IntervalReport>,
    edges: Option<Edges>,
}

#[derive(Debug, Serialize)]
struct ArraysReport {
    tweets_per_request: u64,
    requests: u64,
    accepted: u64,
    request_latency_ms: Percentiles,
    schedule: Schedule,
}

#[derive(Debug, Serialize)]
struct Counted {
    /// Both stores hold exactly the accepted tweets, once each.
    exact: bool,
    /// This run's tweets in Redis (from Kafka) and in Valkey (from RabbitMQ)
    /// when the verification ended (both reached `accepted`, or
    /// `--verify-timeout` passed): below `accepted` means not counted by then.
    redis_total: u64,
    valkey_total: u64,
    /// From the first request until both stores had counted every accepted tweet.
    elapsed_s: f64,
    /// Accepted tweets over that time: the sustained rate of the whole pipeline.
    end_to_end_per_s: f64,
    redis_post_to_counted_ms: Percentiles,
    valkey_post_to_counted_ms: Percentiles,
}

/// Both stores' counts once neither has changed for a second (up to a
/// minute): the baseline `--verify` measures this run's tweets against. A
/// store still counting what came before this run (a consumer catching up,
/// or counting a retained log again into a store that has no offsets for it)
/// would otherwise be taken for this run's tweets.
async fn quiet_counts(redis: &CounterStore, valkey: &CounterStore) -> anyhow::Result<(Counts, Counts)> {
    let waiting = Instant::now();
    let mut last = tokio::try_join!(redis.read_counts(1), valkey.read_counts(1))?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = tokio::try_join!(redis.read_counts(1), valkey.read_counts(1))?;
        let quiet = (now.0.total, now.1.total) == (last.0.total, last.1.total);
        if quiet || waiting.elapsed() >= Duration::from_secs(60) {
            if !quiet {
                eprintln!("the stores were still counting after 60 s: the baseline may include tweets of no run's");
            } else if waiting.elapsed() > Duration::from_secs(2) {
                eprintln!(
                    "waited {:.0} s for the stores to stop counting tweets sent before this run",
                    waiting.elapsed().as_secs_f64()
                );
            }
            return Ok(now);
        }
        last = now;
    }
}

pub(crate) async fn run(args: LoadArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.arrays_batch == 0 || args.concurrency == Some(0) {
        bail!("--batch, --arrays-batch and --concurrency must be at least 1");
    }
    for rate in [args.rate, args.arrays_rate].into_iter().flatten() {
        if !(rate > 0.0 && rate.is_finite()) {
            bail!("--rate and --arrays-rate must be positive numbers of tweets per second");
        }
    }
    let target = Arc::new(Target::parse(&args.url)?);
    let stores = if args.verify { Some(args.stores.connect().await?) } else { None };
    let before = match &stores {
        Some((redis, valkey)) => Some(quiet_counts(redis, valkey).await?),
        None => None,
    };

    // The arrays stream runs as long as the main stream's schedule.
    let arrays_count = match (args.rate, args.arrays_rate) {
        (Some(rate), Some(arrays_rate)) => (args.count as f64 / rate * arrays_rate).round() as u64,
        _ => 0,
    };
    let progress = match args.report_every {
        Some(_) => ProgressBar::hidden(),
        None => progress_bar(args.count + arrays_count, "sending"),
    };
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let started = Instant::now();
    let probe = match (&stores, &before) {
        (Some(stores), Some((redis, valkey))) => {
            Some(Arc::new(lag::LagProbe::start(started, stores.clone(), (redis.total, valkey.total))))
        }
        _ => None,
    };
    let timeline = match args.report_every {
        Some(every) => Some(Arc::new(Timeline::new(started, every, args.timeline.as_deref())?)),
        None => None,
    };
    let reporter = match (args.report_every, &timeline) {
        (Some(every), Some(timeline)) => Some(report_every(every, Arc::clone(timeline), probe.clone())),
        _ => None,
    };
    let plan = Plan {
        target,
        count: args.count,
        batch: args.batch,
        attempts: args.attempts.max(1),
        progress: progress.clone(),
        sent: probe.as_ref().map(|probe| Arc::clone(&probe.sent)),
        timeline: timeline.clone(),
        timed: true,
    };
    let (total, concurrency, schedule, arrays) = match args.rate {
        None => {
            let connections = args.concurrency.unwrap_or(DEFAULT_CONNECTIONS);
            (closed_loop(plan, connections, seed).await?, connections, None, None)
        }
        Some(rate) => {
            let mut streams = vec![Stream { plan: plan.clone(), rate }];
            if let Some(arrays_rate) = args.arrays_rate.filter(|_| arrays_count > 0) {
                let arrays = Plan { count: arrays_count, batch: args.arrays_batch, timed: false, ..plan };
                streams.push(Stream { plan: arrays, rate: arrays_rate });
            }
            let in_flight = args.concurrency.unwrap_or_else(|| open_loop::default_in_flight(&streams));
            let mut results = open_loop::run(streams, in_flight, seed).await?.into_iter();
            let (mut total, schedule) = results.next().expect("the main stream");
            let arrays = results.next().map(|(arrays, schedule)| {
                total.merge_counts(&arrays);
                ArraysReport {
                    tweets_per_request: args.arrays_batch,
                    requests: arrays.latency.len(),
                    accepted: arrays.accepted.total,
                    request_latency_ms: Percentiles::of(&arrays.latency),
                    schedule,
                }
            });
            (total, in_flight, Some(schedule), arrays)
        }
    };
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    if let Some(reporter) = reporter {
        reporter.abort();
        // Wait until it has stopped: a tick in progress finishes its interval first.
        let _ = reporter.await;
    }
    let (timeline, edges) = match timeline {
        Some(timeline) => {
            // The last, shorter interval: from the last tick until the last answer.
            timeline.close_interval(probe.as_deref())?;
            timeline.finish()
        }
        None => (Vec::new(), None),
    };
    let mut report = summarize(&args, &total, elapsed, concurrency, schedule, arrays);
    report.timeline = timeline;
    report.edges = edges;
    let behind = [report.schedule.as_ref(), report.arrays.as_ref().map(|arrays| &arrays.schedule)]
        .into_iter()
        .flatten()
        .any(|schedule| schedule.behind);

    if let (Some(stores), Some((redis_before, valkey_before)), Some(probe)) = (stores, before, probe) {
        // The report so far (no `counted` yet): if the stores cannot be read
        // to the end, it still says what was accepted (ci/faults reads it).
        write_json(&args, &report)?;
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
        let [(redis_lag, redis_done), (valkey_lag, valkey_done)] = probe.finish(total.accepted.total);
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
        let exact = redis == total.accepted && valkey == total.accepted;
        // The probe samples every 10 ms; fall back to now if it missed the end
        // (or a store never got there: `Option::max` would take the other's).
        let counted_after = redis_done.zip(valkey_done).map_or_else(|| started.elapsed(), |(r, v)| r.max(v));
        let counted = Counted {
            exact,
            redis_total: redis.total,
            valkey_total: valkey.total,
            elapsed_s: counted_after.as_secs_f64(),
            end_to_end_per_s: total.accepted.total as f64 / counted_after.as_secs_f64().max(f64::EPSILON),
            redis_post_to_counted_ms: Percentiles::of(&redis_lag),
            valkey_post_to_counted_ms: Percentiles::of(&valkey_lag),
        };
        let headline = if exact {
            format!(
                "Counted in both stores {:.2} s after the first request: {:.0} tweets/s end to end.",
                counted.elapsed_s, counted.end_to_end_per_s
            )
        } else {
            format!(
                "Not every accepted tweet was counted once in both stores {:.2} s after the first request.",
                counted.elapsed_s
            )
        };
        println!(
            "\n{headline}\nPOST→counted latency, Redis p50 {:.1} ms, p99 {:.1} ms; Valkey p50 {:.1} ms, p99 {:.1} ms.",
            counted.redis_post_to_counted_ms.p50,
            counted.redis_post_to_counted_ms.p99,
            counted.valkey_post_to_counted_ms.p50,
            counted.valkey_post_to_counted_ms.p99,
        );
        report.counted = Some(counted);
        write_json(&args, &report)?;
        if !exact {
            bail!("the stores' counts differ from the accepted tweets (see the table above)");
        }
        println!("Every accepted tweet was counted exactly once in Redis and in Valkey.");
    } else {
        write_json(&args, &report)?;
    }
    if total.failed > 0 {
        bail!("{} tweets were not accepted (first error: {})", total.failed, total.first_error.unwrap_or_default());
    }
    if behind {
        bail!(
            "the load fell behind its schedule by more than {} %: it sent less than asked (see above)",
            open_loop::MAX_SHORTFALL * 100.0
        );
    }
    Ok(())
}

/// Closes a timeline interval every `every`, until aborted.
fn report_every(
    every: Duration,
    timeline: Arc<Timeline>,
    probe: Option<Arc<lag::LagProbe>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // After a stall, the next interval is simply longer (no burst of empty ones).
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(error) = timeline.close_interval(probe.as_deref()) {
                eprintln!("writing the timeline failed: {error:#}");
            }
        }
    })
}

fn write_json(args: &LoadArgs, report: &Report) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)?;
    }
    Ok(())
}

/// What every sender shares.
#[derive(Clone)]
struct Plan {
    target: Arc<Target>,
    count: u64,
    batch: u64,
    attempts: usize,
    progress: ProgressBar,
    /// Tweets sent so far, for the POST→counted probe.
    sent: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// With --report-every: where each answer is noted.
    timeline: Option<Arc<Timeline>>,
    /// Whether this stream's latencies go into the timeline (the main stream's do).
    timed: bool,
}

impl Plan {
    /// How many tweets request number `index` carries (the last may be short).
    fn size_of(&self, index: u64) -> u64 {
        self.batch.min(self.count - index * self.batch)
    }

    #[cfg(test)]
    fn for_test(batch: u64, count: u64) -> Self {
        Self {
            target: Arc::new(Target::parse("http://127.0.0.1:8080/input").expect("a valid URL")),
            count,
            batch,
            attempts: 1,
            progress: ProgressBar::hidden(),
            sent: None,
            timeline: None,
            timed: true,
        }
    }

    fn note_sent(&self, tweets: u64) {
        if let Some(sent) = &self.sent {
            sent.fetch_add(tweets, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Each of `connections` tasks takes the next request number, sends it on its
/// own keep-alive connection and waits for the answer.
async fn closed_loop(plan: Plan, connections: usize, seed: u64) -> anyhow::Result<Tally> {
    let requests = plan.count.div_ceil(plan.batch);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let senders: Vec<_> = (0..connections as u64)
        .map(|task| {
            let (plan, next) = (plan.clone(), Arc::clone(&next));
            let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(task));
            tokio::spawn(async move {
                let pool = Pool::default();
                let mut tally = Tally::new();
                loop {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if index >= requests {
                        break tally;
                    }
                    let size = plan.size_of(index);
                    send(&plan, &pool, size, Instant::now(), &mut rng, &mut tally).await;
                }
            })
        })
        .collect();
    let mut total = Tally::new();
    for sender in senders {
        total.merge(&sender.await?);
    }
    Ok(total)
}

/// Sends one request of `size` random tweets, retrying failures with the same
/// Idempotency-Key, and tallies the outcome.
async fn send(plan: &Plan, pool: &Pool, size: u64, due: Instant, rng: &mut fastrand::Rng, tally: &mut Tally) {
    let sample = &*clima_tweet::sample::SAMPLE;
    let tweets: Vec<TweetInput> = (0..size)
        .map(|_| {
            let (weather, descriptions) = &sample.weathers[rng.usize(..sample.weathers.len())];
            TweetInput {
                description: descriptions[rng.usize(..descriptions.len())].to_owned(),
                country: sample.countries[rng.usize(..sample.countries.len())].to_owned(),
                weather: (*weather).to_owned(),
            }
        })
        .collect();
    // The proto's own JSON mapping: the body is what the API decodes.
    let body = if plan.batch > 1 { serde_json::to_vec(&tweets) } else { serde_json::to_vec(&tweets[0]) };
    let body = Bytes::from(body.expect("tweets serialize"));
    let idempotency_key = uuid::Uuid::from_u128(rng.u128(..)).to_string();
    plan.note_sent(size);

    let mut outcome = Outcome::Failed("no attempt".into());
    for attempt in 0..plan.attempts {
        if attempt > 0 {
            tally.retries += 1;
            tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
        }
        outcome = pool.post(&plan.target, body.clone(), &idempotency_key).await;
        if !matches!(outcome, Outcome::Failed(_)) {
            break;
        }
    }
    let latency_micros = due.elapsed().as_micros() as u64;
    tally.latency.saturating_record(latency_micros);
    if let Some(timeline) = &plan.timeline {
        let (accepted, failed) = match outcome {
            Outcome::Accepted(accepted) if accepted == size => (size, 0),
            Outcome::Rejected(_) => (0, 0),
            Outcome::Accepted(_) | Outcome::Failed(_) => (0, size),
        };
        timeline.record(plan.timed.then_some(latency_micros), accepted, failed);
    }
    match outcome {
        Outcome::Accepted(accepted) if accepted == size => {
            for tweet in &tweets {
                tally.accepted.add(&tweet.country, &tweet.weather);
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
    plan.progress.inc(size);
}

fn summarize(
    args: &LoadArgs,
    tally: &Tally,
    elapsed: Duration,
    concurrency: usize,
    schedule: Option<Schedule>,
    arrays: Option<ArraysReport>,
) -> Report {
    let sent = tally.accepted.total + tally.rejected + tally.failed;
    let latency = Percentiles::of(&tally.latency);
    let mode = if args.rate.is_some() { "open" } else { "closed" };
    let accepted_per_s = tally.accepted.total as f64 / elapsed.as_secs_f64().max(f64::EPSILON);
    println!(
        "sent {sent} tweets in {} requests of {}{} ({mode} loop{}, {concurrency} {}) to {} in {:.2} s: \
         {accepted_per_s:.0} tweets/s accepted",
        latency.samples,
        args.batch,
        arrays
            .as_ref()
            .map(|arrays| format!(" and {} arrays of {}", arrays.requests, arrays.tweets_per_request))
            .unwrap_or_default(),
        args.rate.map(|rate| format!(" at {rate} tweets/s")).unwrap_or_default(),
        if args.rate.is_some() { "requests in flight at most" } else { "connections" },
        args.url,
        elapsed.as_secs_f64(),
    );
    if let Some(arrays) = &arrays {
        println!(
            "  of which {} in arrays of {} at {} tweets/s: array request latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            arrays.accepted,
            arrays.tweets_per_request,
            arrays.schedule.asked_tweets_per_s,
            arrays.request_latency_ms.p50,
            arrays.request_latency_ms.p99,
            arrays.request_latency_ms.max,
        );
    }
    println!(
        "accepted {}, rejected (4xx) {}, failed after retries (5xx or network) {}, retried requests {}\n\
         request latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        tally.accepted.total,
        tally.rejected,
        tally.failed,
        tally.retries,
        latency.p50,
        latency.p90,
        latency.p99,
        latency.p999,
        latency.max,
    );
    for (stream, schedule) in
        [("", schedule.as_ref()), ("the arrays stream ", arrays.as_ref().map(|arrays| &arrays.schedule))]
    {
        let Some(schedule) = schedule.filter(|schedule| schedule.behind) else { continue };
        println!(
            "BEHIND SCHEDULE: {stream}sent {:.0} tweets/s of the {} asked ({:.1} % short; a request left up to \
             {:.0} ms after it was due). Raise --concurrency, or the machine cannot generate this load.",
            schedule.sent_tweets_per_s, schedule.asked_tweets_per_s, schedule.shortfall_pct, schedule.max_send_delay_ms,
        );
    }
    Report {
        mode,
        url: args.url.clone(),
        tweets_per_request: args.batch,
        concurrency,
        target_tweets_per_s: args.rate,
        schedule,
        arrays,
        sent,
        accepted: tally.accepted.total,
        rejected: tally.rejected,
        failed: tally.failed,
        retried_requests: tally.retries,
        elapsed_s: elapsed.as_secs_f64(),
        accepted_per_s,
        request_latency_ms: latency,
        counted: None,
        timeline: Vec::new(),
        edges: None,
    }
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
