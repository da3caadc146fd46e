//! The driver on an in-memory source and store: what it counts, dead-letters
//! and acknowledges, and in which order, with no broker. (The Kafka and
//! RabbitMQ sources are tested against real brokers in `crate::tests`.)

use std::{
    collections::{HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use clima_proto::v1::TweetRecord;
use clima_telemetry::{
    events::{Broker, Store},
    readiness::Readiness,
};
use tokio_util::sync::CancellationToken;

use crate::{
    AckTiming, BatchConfig, ConsumerError,
    source::{Content, Message, Source, Tallied, Tally},
};

/// What happened, in order, across the source and the store. Messages are
/// numbered; `Counted` lists the messages whose tweets one store call counted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    DeadLettered(u64),
    Counted(Vec<u64>),
    Acked(Vec<u64>, AckTiming),
    Recovered,
    /// The source was told the store's positions moved.
    StoreMoved,
}

type Journal = Arc<Mutex<Vec<Event>>>;

/// A broker whose deliveries are scripted: each item of `inbox` is what one
/// `next` returns; once it is empty, `next` waits forever like an idle queue.
struct MemorySource {
    inbox: VecDeque<Result<Message<Self>, ConsumerError>>,
    journal: Journal,
    /// How many dead letters fail before they succeed.
    dead_letter_failures: usize,
    /// What each `counted` call was told (Kafka seeks past counted messages from there).
    told: Arc<Mutex<Vec<Vec<u64>>>>,
}

impl Source for MemorySource {
    const BROKER: Broker = Broker::Kafka;
    type Ack = u64;
    type Position = u64;
    type Original = u64;

    async fn next(&mut self) -> Result<Message<Self>, ConsumerError> {
        match self.inbox.pop_front() {
            Some(message) => message,
            None => std::future::pending().await,
        }
    }

    async fn dead_letter(&mut self, original: &u64, _reason: &str) -> Result<(), ConsumerError> {
        if self.dead_letter_failures > 0 {
            self.dead_letter_failures -= 1;
            return Err(ConsumerError::DeadLetterRefused);
        }
        self.journal.lock().unwrap().push(Event::DeadLettered(*original));
        Ok(())
    }

    async fn ack(&mut self, acks: &[u64], timing: AckTiming) -> Result<(), ConsumerError> {
        self.journal.lock().unwrap().push(Event::Acked(acks.to_vec(), timing));
        Ok(())
    }

    fn counted(&mut self, positions: &[u64]) {
        self.told.lock().unwrap().push(positions.to_vec());
    }

    fn store_moved(&mut self) {
        self.journal.lock().unwrap().push(Event::StoreMoved);
    }

    async fn recover(&mut self, _shutdown: &CancellationToken) -> bool {
        self.journal.lock().unwrap().push(Event::Recovered);
        true
    }
}

/// A store that counts each tweet id once, fails its first `failures` calls,
/// and then answers its next `moves` calls that its positions moved.
struct MemoryTally {
    journal: Journal,
    failures: AtomicUsize,
    moves: AtomicUsize,
    calls: AtomicUsize,
    seen: Mutex<HashSet<String>>,
}

impl Tally<u64> for MemoryTally {
    type Error = &'static str;

    fn store(&self) -> Store {
        Store::Redis
    }

    async fn count(&self, records: &[TweetRecord], positions: &[u64]) -> Result<Tallied, Self::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.failures.load(Ordering::SeqCst) > 0 {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            return Err("store unreachable");
        }
        if self.moves.load(Ordering::SeqCst) > 0 {
            self.moves.fetch_sub(1, Ordering::SeqCst);
            return Ok(Tallied::Moved);
        }
        let mut seen = self.seen.lock().unwrap();
        let new = records.iter().filter(|record| seen.insert(record.id.clone())).count();
        self.journal.lock().unwrap().push(Event::Counted(positions.to_vec()));
        Ok(Tallied::Counted(new as u64))
    }
}

fn tweets(message: u64, ids: &[&str]) -> Result<Message<MemorySource>, ConsumerError> {
    let records = ids.iter().map(|id| TweetRecord { id: (*id).to_owned(), ..Default::default() }).collect();
    Ok(Message { ack: message, content: Content::Tweets { records, spans: Vec::new(), position: message } })
}

fn rejected(message: u64) -> Result<Message<MemorySource>, ConsumerError> {
    Ok(Message { ack: message, content: Content::Rejected { original: message, reason: "not a batch".to_owned() } })
}

fn counted_before(message: u64) -> Result<Message<MemorySource>, ConsumerError> {
    Ok(Message { ack: message, content: Content::CountedBefore })
}

struct Run {
    events: Vec<Event>,
    told: Vec<Vec<u64>>,
    store_calls: usize,
    counted_ids: usize,
    /// The consumer's readiness when the run ended.
    ready: bool,
}

/// Runs the driver over `inbox` until `done` holds for the journal (on a
/// paused clock, so lingers and retry backoffs take no real time), then shuts
/// it down.
async fn drive(
    inbox: Vec<Result<Message<MemorySource>, ConsumerError>>,
    batching: BatchConfig,
    store_failures: usize,
    dead_letter_failures: usize,
    store_moves: usize,
    done: impl Fn(&[Event], usize) -> bool,
) -> Run {
    clima_testkit::test_log();
    let journal = Journal::default();
    let told = Arc::default();
    let mut source =
        MemorySource { inbox: inbox.into(), journal: journal.clone(), dead_letter_failures, told: Arc::clone(&told) };
    let tally = MemoryTally {
        journal: journal.clone(),
        failures: AtomicUsize::new(store_failures),
        moves: AtomicUsize::new(store_moves),
        calls: AtomicUsize::new(0),
        seen: Mutex::default(),
    };
    let shutdown = CancellationToken::new();
    let health = Readiness::not_ready();
    let watch = async {
        let finished = clima_testkit::eventually(Duration::from_secs(600), || async {
            done(&journal.lock().unwrap(), tally.calls.load(Ordering::SeqCst)).then_some(())
        })
        .await;
        shutdown.cancel();
        finished
    };
    let ((), finished) = tokio::join!(super::run(&mut source, &tally, &batching, &shutdown, &health), watch);
    let events = journal.lock().unwrap().clone();
    assert!(finished.is_some(), "the driver never got there: {events:?}");
    let told = told.lock().unwrap().clone();
    Run {
        events,
        told,
        store_calls: tally.calls.load(Ordering::SeqCst),
        counted_ids: tally.seen.lock().unwrap().len(),
        ready: health.is_ready(),
    }
}

fn acked(events: &[Event]) -> usize {
    events.iter().filter(|event| matches!(event, Event::Acked(..))).count()
}

#[tokio::test(start_paused = true)]
async fn a_batch_is_acked_only_after_the_store_counted_it() {
    let inbox = vec![tweets(1, &["a", "b"]), tweets(2, &["c"]), tweets(3, &["b", "d"])];
    let run = drive(inbox, BatchConfig::default(), 0, 0, 0, |events, _| acked(events) == 1).await;
    assert_eq!(run.events, [Event::Counted(vec![1, 2, 3]), Event::Acked(vec![1, 2, 3], AckTiming::AfterStore)]);
    assert_eq!(run.counted_ids, 4, "b came twice and counts once");
    assert_eq!(run.told, [vec![1, 2, 3]]);
    assert!(run.ready, "ready while the source and the store work");
}

#[tokio::test(start_paused = true)]
async fn acking_before_the_store_acks_a_batch_before_counting_it() {
    let batching = BatchConfig { ack: AckTiming::BeforeStore, ..BatchConfig::default() };
    let inbox = vec![tweets(1, &["a"]), tweets(2, &["b"])];
    let run = drive(inbox, batching, 0, 0, 0, |events, _| events.len() == 2).await;
    assert_eq!(run.events, [Event::Acked(vec![1, 2], AckTiming::BeforeStore), Event::Counted(vec![1, 2])]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_is_retried_until_it_counts_and_only_then_acked() {
    let inbox = vec![tweets(1, &["a"]), tweets(2, &["b"])];
    let run = drive(inbox, BatchConfig::default(), 3, 0, 0, |events, _| acked(events) == 1).await;
    assert_eq!(run.store_calls, 4, "three failed calls, then the one that counted");
    assert_eq!(run.events, [Event::Counted(vec![1, 2]), Event::Acked(vec![1, 2], AckTiming::AfterStore)]);
    assert!(run.ready, "ready again once the store counted");
}

/// The store's positions moved under the source (a restore, another
/// consumer): the batch is neither acknowledged nor told counted, and the
/// source is told to read again from the store. What it reads then counts.
#[tokio::test(start_paused = true)]
async fn a_batch_the_store_refuses_as_moved_is_dropped_unacked_and_the_source_told() {
    let inbox = vec![tweets(1, &["a"]), tweets(2, &["b"])];
    let run =
        drive(inbox, BatchConfig { max_records: 1, ..BatchConfig::default() }, 0, 0, 1, |events, _| acked(events) == 1)
            .await;
    assert_eq!(run.events, [Event::StoreMoved, Event::Counted(vec![2]), Event::Acked(vec![2], AckTiming::AfterStore)]);
    assert_eq!(run.told, [vec![2]], "a refused batch is not told counted");
    assert!(run.ready);
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_the_store_fails_leaves_the_batch_unacked() {
    let inbox = vec![tweets(1, &["a"])];
    let run = drive(inbox, BatchConfig::default(), usize::MAX, 0, 0, |_, calls| calls >= 3).await;
    assert_eq!(run.events, [], "nothing counted, so nothing acked: the broker delivers it again");
    assert!(!run.ready, "not ready while the store refuses writes");
}

#[tokio::test(start_paused = true)]
async fn a_rejected_message_is_dead_lettered_and_acked_with_its_batch_but_never_counted() {
    let inbox = vec![tweets(1, &["a"]), rejected(2), tweets(3, &["b"])];
    let run = drive(inbox, BatchConfig::default(), 0, 0, 0, |events, _| acked(events) == 1).await;
    assert_eq!(
        run.events,
        [Event::DeadLettered(2), Event::Counted(vec![1, 3]), Event::Acked(vec![1, 2, 3], AckTiming::AfterStore)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_with_nothing_new_to_count_is_acked_without_the_store() {
    let inbox = vec![rejected(1), counted_before(2)];
    let run = drive(inbox, BatchConfig::default(), 0, 0, 0, |events, _| acked(events) == 1).await;
    assert_eq!(run.events, [Event::DeadLettered(1), Event::Acked(vec![1, 2], AckTiming::AfterStore)]);
    assert_eq!(run.store_calls, 0);
    assert_eq!(run.told, [Vec::<u64>::new()], "still told, so Kafka can seek past what was counted");
}

#[tokio::test(start_paused = true)]
async fn a_broker_failure_drops_the_batch_in_hand_unacked_and_reconnects() {
    let inbox = vec![tweets(1, &["a"]), Err(ConsumerError::StreamEnded), tweets(2, &["b"])];
    let run = drive(inbox, BatchConfig::default(), 0, 0, 0, |events, _| acked(events) == 1).await;
    assert_eq!(
        run.events,
        [Event::Recovered, Event::Counted(vec![2]), Event::Acked(vec![2], AckTiming::AfterStore)],
        "message 1 was neither counted nor acked: its broker delivers it again after the reconnect"
    );
    assert!(run.ready, "ready again after the reconnect");
}

#[tokio::test(start_paused = true)]
async fn a_failed_dead_letter_leaves_its_batch_uncounted_and_unacked() {
    let inbox = vec![tweets(1, &["a"]), rejected(2)];
    let run = drive(inbox, BatchConfig::default(), 0, 1, 0, |events, _| events.contains(&Event::Recovered)).await;
    assert_eq!(run.events, [Event::Recovered]);
    assert_eq!(run.store_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn batches_close_at_their_size_without_splitting_a_message() {
    let batching = BatchConfig { max_records: 3, ..BatchConfig::default() };
    let inbox = vec![tweets(1, &["a", "b"]), tweets(2, &["c", "d"]), tweets(3, &["e"])];
    let run = drive(inbox, batching, 0, 0, 0, |events, _| acked(events) == 2).await;
    assert_eq!(
        run.events,
        [
            Event::Counted(vec![1, 2]),
            Event::Acked(vec![1, 2], AckTiming::AfterStore),
            Event::Counted(vec![3]),
            Event::Acked(vec![3], AckTiming::AfterStore)
        ]
    );
}
