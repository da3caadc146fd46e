//! The open loop: requests leave on a fixed schedule whatever the answers,
//! one or more streams at once (single objects at `--rate`, and arrays at
//! `--arrays-rate` alongside), and the run says so if it could not keep up.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;

use super::{Plan, Tally, client::Pool, send};

/// A run that sent more than 1 % slower than asked fell behind its schedule.
pub(super) const MAX_SHORTFALL: f64 = 0.01;

/// Lateness of the last request that the rule forgives: timer and scheduler
/// jitter on a busy machine, which would otherwise fail a run of a few seconds.
pub(super) const JITTER: Duration = Duration::from_millis(50);

/// One stream of requests on a fixed schedule.
pub(super) struct Stream {
    pub plan: Plan,
    /// Tweets per second.
    pub rate: f64,
}

impl Stream {
    fn requests(&self) -> u64 {
        self.plan.count.div_ceil(self.plan.batch)
    }

    fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.plan.batch as f64 / self.rate)
    }

    /// How long sending takes when the schedule is kept.
    fn schedule(&self) -> Duration {
        self.interval().mul_f64(self.requests() as f64)
    }
}

/// The default cap on requests in flight: one second's worth of every
/// stream's requests, so the cap throttles only a server that takes over a
/// second to answer (and then [`Schedule::behind`] says so).
pub(super) fn default_in_flight(streams: &[Stream]) -> usize {
    let per_second: f64 = streams.iter().map(|stream| stream.rate / stream.plan.batch as f64).sum();
    (per_second.ceil() as usize).max(1)
}

/// How well a stream kept its schedule.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Schedule {
    pub asked_tweets_per_s: f64,
    /// Tweets over the time from the start until the last request left (plus
    /// one interval, so a kept schedule gives exactly the asked rate).
    pub sent_tweets_per_s: f64,
    /// 1 − sent/asked, in percent.
    pub shortfall_pct: f64,
    /// The latest any request left after it was due (waiting for a free
    /// in-flight slot, or for the load generator's own CPU time).
    pub max_send_delay_ms: f64,
    /// More than [`MAX_SHORTFALL`] short, after [`JITTER`]: the run did not
    /// send what was asked. A stall mid-run that the schedule then caught up
    /// with is not "behind"; `max_send_delay_ms` shows it.
    pub behind: bool,
}

impl Schedule {
    /// The rule: a stream whose schedule lasts `schedule` and whose last
    /// request left `last_delay` after it was due sent at
    /// schedule / (schedule + last_delay) of the asked rate.
    pub(super) fn of(asked_tweets_per_s: f64, schedule: Duration, last_delay: Duration, max_delay: Duration) -> Self {
        let shortfall =
            |late: Duration| 1.0 - schedule.as_secs_f64() / (schedule + late).as_secs_f64().max(f64::EPSILON);
        Self {
            asked_tweets_per_s,
            sent_tweets_per_s: asked_tweets_per_s * (1.0 - shortfall(last_delay)),
            shortfall_pct: shortfall(last_delay) * 100.0,
            max_send_delay_ms: max_delay.as_secs_f64() * 1000.0,
            behind: shortfall(last_delay.saturating_sub(JITTER)) > MAX_SHORTFALL,
        }
    }
}

/// Runs every stream at once, at most `max_in_flight` requests in flight in
/// all; per stream, what its requests came to and how well it kept its schedule.
pub(super) async fn run(
    streams: Vec<Stream>,
    max_in_flight: usize,
    seed: u64,
) -> anyhow::Result<Vec<(Tally, Schedule)>> {
    let pool = Arc::new(Pool::default());
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let start = tokio::time::Instant::now();
    let schedulers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(number, stream)| {
            let (pool, slots) = (Arc::clone(&pool), Arc::clone(&slots));
            let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(number as u64));
            tokio::spawn(async move {
                let total = Arc::new(Mutex::new(Tally::new()));
                let (interval, requests) = (stream.interval(), stream.requests());
                let (mut last_delay, mut max_delay) = (Duration::ZERO, Duration::ZERO);
                for index in 0..requests {
                    let due = start + interval.mul_f64(index as f64);
                    tokio::time::sleep_until(due).await;
                    // A full house delays the send, not the clock: latency still counts from `due`.
                    let slot = Arc::clone(&slots).acquire_owned().await?;
                    last_delay = due.elapsed();
                    max_delay = max_delay.max(last_delay);
                    let (plan, pool, total) = (stream.plan.clone(), Arc::clone(&pool), Arc::clone(&total));
                    let mut rng = rng.fork();
                    tokio::spawn(async move {
                        let mut tally = Tally::new();
                        send(&plan, &pool, plan.size_of(index), due.into_std(), &mut rng, &mut tally).await;
                        total.lock().expect("tally lock").merge(&tally);
                        drop(slot);
                    });
                }
                let schedule = Schedule::of(stream.rate, stream.schedule(), last_delay, max_delay);
                anyhow::Ok((total, schedule))
            })
        })
        .collect();
    let mut sent = Vec::new();
    for scheduler in schedulers {
        sent.push(scheduler.await??);
    }
    // Every slot back means every request answered.
    let _all = slots.acquire_many(u32::try_from(max_in_flight)?).await?;
    Ok(sent
        .into_iter()
        .map(|(total, schedule)| (std::mem::replace(&mut *total.lock().expect("tally lock"), Tally::new()), schedule))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_schedule_is_not_behind() {
        let schedule =
            Schedule::of(1000.0, Duration::from_secs(60), Duration::from_millis(2), Duration::from_millis(5));
        assert!(!schedule.behind, "{schedule:?}");
        assert!((schedule.sent_tweets_per_s - 999.97).abs() < 0.01, "{schedule:?}");
    }

    #[test]
    fn a_run_over_one_percent_late_is_behind() {
        // 60 s asked, the last request left 0.7 s late: 1.15 % short (1.07 % after the jitter allowance).
        let late = Schedule::of(1000.0, Duration::from_secs(60), Duration::from_millis(700), Duration::from_secs(1));
        assert!(late.behind, "{late:?}");
        assert!((late.shortfall_pct - 1.153).abs() < 0.01, "{late:?}");
        assert!((late.max_send_delay_ms - 1000.0).abs() < 1e-9);
        // 0.65 s late is 1.07 % short, 0.61 % after the allowance: kept.
        assert!(!Schedule::of(1000.0, Duration::from_secs(60), Duration::from_millis(650), Duration::ZERO).behind);
        // A 3 s run forgives 50 ms of jitter, not 100 ms.
        let three = Duration::from_secs(3);
        assert!(!Schedule::of(1000.0, three, Duration::from_millis(50), Duration::ZERO).behind);
        assert!(Schedule::of(1000.0, three, Duration::from_millis(100), Duration::ZERO).behind);
    }

    #[test]
    fn the_default_cap_is_a_second_of_requests() {
        let plan = |batch| Plan::for_test(batch, 1000);
        assert_eq!(default_in_flight(&[Stream { plan: plan(1), rate: 5000.0 }]), 5000);
        let mixed = [Stream { plan: plan(1), rate: 2000.0 }, Stream { plan: plan(100), rate: 150.0 }];
        assert_eq!(default_in_flight(&mixed), 2002);
        assert_eq!(default_in_flight(&[Stream { plan: plan(100), rate: 1.0 }]), 1);
    }
}
