//! Figures per interval while a long load runs (`--report-every`), so a soak
//! shows how latency, throughput, POST→counted and backlog move over time.
//!
//! Requests are put in the interval in which they were *answered*: an
//! interval's line can be printed as soon as it ends. Only the main stream's
//! latencies are recorded (an `--arrays-rate` stream's requests carry
//! `--arrays-batch` times the tweets and would blur them); its tweets count in
//! `accepted`. The last interval, from the last tick to the last answer, is
//! reported but, when shorter than half an interval, kept out of the edges.

use std::{
    collections::VecDeque,
    io::Write,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{Percentiles, lag::LagProbe, latency_histogram};

/// How many intervals at each end of the run are compared (README's soak rule:
/// the last 5 minutes' p99 against the first 5 minutes').
pub(super) const EDGE_INTERVALS: usize = 5;

/// One interval's figures, as printed and as written to `--timeline`.
#[derive(Debug, Serialize)]
pub(super) struct IntervalReport {
    pub index: usize,
    pub start_s: f64,
    pub end_s: f64,
    pub accepted: u64,
    pub accepted_per_s: f64,
    pub failed: u64,
    pub request_latency_ms: Percentiles,
    /// With --verify: POST→counted of the tweets each store counted in this
    /// interval, and how many sent tweets it had not counted yet at its end.
    pub redis: Option<StoreInterval>,
    pub valkey: Option<StoreInterval>,
}

#[derive(Debug, Serialize)]
pub(super) struct StoreInterval {
    pub post_to_counted_ms: Percentiles,
    pub backlog: u64,
}

/// The main stream's latency over the first and the last [`EDGE_INTERVALS`] intervals.
#[derive(Debug, Serialize)]
pub(super) struct Edges {
    pub intervals: usize,
    pub first: Percentiles,
    pub last: Percentiles,
}

struct Current {
    started: Duration,
    latency: Histogram<u64>,
    accepted: u64,
    failed: u64,
}

struct Closed {
    reports: Vec<IntervalReport>,
    first: Histogram<u64>,
    last: VecDeque<Histogram<u64>>,
}

pub(super) struct Timeline {
    started: Instant,
    every: Duration,
    current: Mutex<Current>,
    closed: Mutex<Closed>,
    file: Option<Mutex<std::fs::File>>,
}

impl Timeline {
    pub(super) fn new(started: Instant, every: Duration, file: Option<&Path>) -> anyhow::Result<Self> {
        let file = match file {
            Some(path) => Some(Mutex::new(std::fs::File::create(path)?)),
            None => None,
        };
        Ok(Self {
            started,
            every,
            current: Mutex::new(Current::starting_at(Duration::ZERO)),
            closed: Mutex::new(Closed::empty()),
            file,
        })
    }

    /// Notes one answered request: its latency (main stream only) and how
    /// many of its tweets were accepted or failed.
    pub(super) fn record(&self, latency_micros: Option<u64>, accepted: u64, failed: u64) {
        let mut current = self.current.lock().expect("timeline lock");
        if let Some(micros) = latency_micros {
            current.latency.saturating_record(micros);
        }
        current.accepted += accepted;
        current.failed += failed;
    }

    /// Ends the running interval now: prints its line, appends it to the
    /// timeline file and starts the next one.
    pub(super) fn close_interval(&self, probe: Option<&LagProbe>) -> anyhow::Result<()> {
        // The clock is read under the lock, so two closes never overlap.
        let (interval, end) = {
            let mut current = self.current.lock().expect("timeline lock");
            let end = self.started.elapsed().max(current.started);
            (std::mem::replace(&mut *current, Current::starting_at(end)), end)
        };
        let seconds = (end - interval.started).as_secs_f64().max(f64::EPSILON);
        let [redis, valkey] = match probe {
            Some(probe) => probe.window(interval.started..end).map(|(histogram, backlog)| {
                Some(StoreInterval { post_to_counted_ms: Percentiles::of(&histogram), backlog })
            }),
            None => [None, None],
        };
        let mut closed = self.closed.lock().expect("timeline lock");
        let report = IntervalReport {
            index: closed.reports.len(),
            start_s: interval.started.as_secs_f64(),
            end_s: end.as_secs_f64(),
            accepted: interval.accepted,
            accepted_per_s: interval.accepted as f64 / seconds,
            failed: interval.failed,
            request_latency_ms: Percentiles::of(&interval.latency),
            redis,
            valkey,
        };
        println!("{}", report.line());
        if let Some(file) = &self.file {
            let mut file = file.lock().expect("timeline file lock");
            serde_json::to_writer(&mut *file, &report)?;
            file.write_all(b"\n")?;
            file.flush()?;
        }
        let tail = end - interval.started < self.every / 2;
        if !tail {
            if report.index < EDGE_INTERVALS {
                closed.first.add(&interval.latency).expect("histograms of the same precision");
            }
            closed.last.push_back(interval.latency);
            if closed.last.len() > EDGE_INTERVALS {
                closed.last.pop_front();
            }
        }
        closed.reports.push(report);
        Ok(())
    }

    /// Every interval's report, and the edges once the run had at least two
    /// edges' worth of intervals (otherwise they would overlap).
    pub(super) fn finish(&self) -> (Vec<IntervalReport>, Option<Edges>) {
        let closed = std::mem::replace(&mut *self.closed.lock().expect("timeline lock"), Closed::empty());
        let full =
            closed.reports.iter().filter(|report| report.end_s - report.start_s >= self.every.as_secs_f64() / 2.0);
        let edges = (full.count() >= 2 * EDGE_INTERVALS).then(|| {
            let mut last = latency_histogram();
            for histogram in &closed.last {
                last.add(histogram).expect("histograms of the same precision");
            }
            Edges { intervals: EDGE_INTERVALS, first: Percentiles::of(&closed.first), last: Percentiles::of(&last) }
        });
        (closed.reports, edges)
    }
}

impl Closed {
    fn empty() -> Self {
        Self { reports: Vec::new(), first: latency_histogram(), last: VecDeque::new() }
    }
}

impl Current {
    fn starting_at(started: Duration) -> Self {
        Self { started, latency: latency_histogram(), accepted: 0, failed: 0 }
    }
}

impl IntervalReport {
    fn line(&self) -> String {
        let latency = &self.request_latency_ms;
        let mut line = format!(
            "[{:>7.1} s] accepted {:>7.0}/s, failed {}; request p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.end_s, self.accepted_per_s, self.failed, latency.p50, latency.p99, latency.max
        );
        for (name, store) in [("Redis", &self.redis), ("Valkey", &self.valkey)] {
            if let Some(store) = store {
                line.push_str(&format!(
                    "; {name} POST→counted p50 {:.0} ms, p99 {:.0} ms, backlog {}",
                    store.post_to_counted_ms.p50, store.post_to_counted_ms.p99, store.backlog
                ));
            }
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_split_the_run_and_edges_compare_its_ends() {
        // Every interval here is as long as the run's test code takes: `every` is zero.
        let timeline = Timeline::new(Instant::now(), Duration::ZERO, None).expect("no file");
        for index in 0..(2 * EDGE_INTERVALS as u64) {
            // The first half answers in 1 ms, the second in 10 ms.
            let micros = if index < EDGE_INTERVALS as u64 { 1_000 } else { 10_000 };
            timeline.record(Some(micros), 3, 0);
            timeline.record(None, 100, 1);
            timeline.close_interval(None).expect("no file to write");
        }
        let (reports, edges) = timeline.finish();
        assert_eq!(reports.len(), 2 * EDGE_INTERVALS);
        assert!(reports.iter().all(|report| report.accepted == 103 && report.failed == 1));
        assert_eq!(reports[0].request_latency_ms.samples, 1, "arrays' latencies stay out");
        let edges = edges.expect("ten intervals have two edges");
        assert!((edges.first.p99 - 1.0).abs() < 0.01, "first: {:?}", edges.first);
        assert!((edges.last.p99 - 10.0).abs() < 0.01, "last: {:?}", edges.last);
    }

    #[test]
    fn a_short_tail_stays_out_of_the_edges() {
        let timeline = Timeline::new(Instant::now(), Duration::from_millis(20), None).expect("no file");
        for _ in 0..(2 * EDGE_INTERVALS) {
            timeline.record(Some(1_000), 1, 0);
            std::thread::sleep(Duration::from_millis(20));
            timeline.close_interval(None).expect("no file to write");
        }
        // The tail: a slow answer right after the last tick.
        timeline.record(Some(500_000), 1, 0);
        timeline.close_interval(None).expect("no file to write");
        let (reports, edges) = timeline.finish();
        assert_eq!(reports.len(), 2 * EDGE_INTERVALS + 1, "the tail is still reported");
        let edges = edges.expect("ten full intervals");
        assert_eq!(edges.last.samples, EDGE_INTERVALS as u64, "the tail is not one of the last intervals");
        assert!(edges.last.max < 2.0, "{:?}", edges.last);
    }

    #[test]
    fn a_short_run_has_no_edges() {
        let timeline = Timeline::new(Instant::now(), Duration::ZERO, None).expect("no file");
        timeline.record(Some(1_000), 1, 0);
        timeline.close_interval(None).expect("no file to write");
        let (reports, edges) = timeline.finish();
        assert_eq!(reports.len(), 1);
        assert!(edges.is_none());
    }
}
