//! POST→counted latency, estimated without tagging tweets.
//!
//! While the load runs, one task notes how many tweets had been sent at each
//! moment (every 5 ms) and another reads each store's total (every 10 ms).
//! Tweets are counted roughly in the order they were sent, so the k-th tweet
//! a store counted was sent when the sent total first reached k: the time
//! between the two is that tweet's POST→counted latency, to within the two
//! sampling intervals. The result is a latency distribution per store.

use std::{
    ops::Range,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clima_store::CounterStore;
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

/// Samples of (time since start, cumulative tweets).
type Series = Vec<(Duration, u64)>;

pub(super) struct LagProbe {
    /// Tweets whose first request attempt has started; the senders add to it.
    pub sent: Arc<AtomicU64>,
    sent_series: Arc<Mutex<Series>>,
    counted_series: Arc<Mutex<[Series; 2]>>,
    stop: CancellationToken,
}

impl LagProbe {
    /// Starts sampling; store totals are reported relative to `baselines`.
    pub(super) fn start(started: Instant, stores: (CounterStore, CounterStore), baselines: (u64, u64)) -> Self {
        let sent = Arc::new(AtomicU64::new(0));
        let sent_series = Arc::new(Mutex::new(Vec::new()));
        let counted_series = Arc::new(Mutex::new([Vec::new(), Vec::new()]));
        let stop = CancellationToken::new();
        tokio::spawn(sample(Duration::from_millis(5), stop.clone(), {
            let (sent, series) = (Arc::clone(&sent), Arc::clone(&sent_series));
            move || {
                let value = sent.load(Ordering::Relaxed);
                let series = Arc::clone(&series);
                async move { series.lock().expect("series lock").push((started.elapsed(), value)) }
            }
        }));
        tokio::spawn(sample(Duration::from_millis(10), stop.clone(), {
            let series = Arc::clone(&counted_series);
            let stores = Arc::new(stores);
            move || {
                let (series, stores) = (Arc::clone(&series), Arc::clone(&stores));
                async move {
                    // A store that does not answer (restarting) is simply not sampled this time.
                    if let Ok((redis, valkey)) = tokio::try_join!(stores.0.read_total(), stores.1.read_total()) {
                        let at = started.elapsed();
                        let mut series = series.lock().expect("series lock");
                        series[0].push((at, redis.saturating_sub(baselines.0)));
                        series[1].push((at, valkey.saturating_sub(baselines.1)));
                    }
                }
            }
        }));
        Self { sent, sent_series, counted_series, stop }
    }

    /// Stops sampling; per store (Redis, Valkey): the latency histogram in
    /// microseconds and when the store had counted `expected` tweets.
    pub(super) fn finish(&self, expected: u64) -> [(Histogram<u64>, Option<Duration>); 2] {
        self.stop.cancel();
        let sent = self.sent_series.lock().expect("series lock").clone();
        let counted = self.counted_series.lock().expect("series lock").clone();
        counted.map(|series| lags(&sent, &series, expected, Duration::ZERO..Duration::MAX))
    }

    /// Per store, while sampling goes on: the POST→counted latency of the
    /// tweets counted within `window`, and the backlog at its end (tweets
    /// sent but not counted yet).
    pub(super) fn window(&self, window: Range<Duration>) -> [(Histogram<u64>, u64); 2] {
        let sent = self.sent_series.lock().expect("series lock").clone();
        let counted = self.counted_series.lock().expect("series lock").clone();
        let sent_by_end = sent.iter().take_while(|(at, _)| *at < window.end).last().map_or(0, |&(_, total)| total);
        counted.map(|series| {
            let counted_by_end =
                series.iter().take_while(|(at, _)| *at < window.end).last().map_or(0, |&(_, total)| total);
            let (histogram, _) = lags(&sent, &series, u64::MAX, window.clone());
            (histogram, sent_by_end.saturating_sub(counted_by_end))
        })
    }
}

async fn sample<F: Future<Output = ()>>(every: Duration, stop: CancellationToken, mut take: impl FnMut() -> F) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.is_cancelled() {
        interval.tick().await;
        take().await;
    }
}

/// Matches each newly counted block of tweets with the moment the same number
/// had been sent; only blocks counted within `window` go into the histogram.
fn lags(sent: &Series, counted: &Series, expected: u64, window: Range<Duration>) -> (Histogram<u64>, Option<Duration>) {
    let mut histogram = super::latency_histogram();
    let (mut previous, mut cursor, mut done) = (0, 0, None);
    for &(at, total) in counted {
        if total > previous {
            while cursor + 1 < sent.len() && sent[cursor].1 < total {
                cursor += 1;
            }
            let sent_at = sent.get(cursor).map_or(Duration::ZERO, |&(sent_at, _)| sent_at);
            if window.contains(&at) {
                let lag = at.saturating_sub(sent_at).as_micros() as u64;
                histogram.saturating_record_n(lag, total - previous);
            }
            previous = total;
        }
        if done.is_none() && total >= expected {
            done = Some(at);
        }
    }
    (histogram, done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    #[test]
    fn each_counted_block_is_matched_with_when_it_was_sent() {
        // 100 tweets sent at 10 ms, 100 more at 20 ms.
        let sent = vec![(ms(5), 0), (ms(10), 100), (ms(15), 100), (ms(20), 200), (ms(25), 200)];
        // Redis counts the first 100 at 40 ms and the rest at 100 ms.
        let counted = vec![(ms(30), 0), (ms(40), 100), (ms(50), 100), (ms(100), 200)];
        let everything = Duration::ZERO..Duration::MAX;
        let (histogram, done) = lags(&sent, &counted, 200, everything.clone());
        assert_eq!(histogram.len(), 200);
        assert_eq!(histogram.value_at_quantile(0.25) / 1000, 30, "first half: 40 - 10 ms");
        assert_eq!(histogram.value_at_quantile(0.99) / 1000, 80, "second half: 100 - 20 ms");
        assert_eq!(done, Some(ms(100)));
        let (_, never) = lags(&sent, &counted, 201, everything);
        assert_eq!(never, None);
        let (second_half, _) = lags(&sent, &counted, 200, ms(50)..ms(200));
        assert_eq!(second_half.len(), 100, "only the block counted at 100 ms");
        assert_eq!(second_half.min() / 1000, 80);
    }
}
