//! Group commit of `POST /input` requests.
//!
//! Concurrent requests share writer calls: each request hands its records to
//! one dispatcher, which sends whatever has queued up as one `Publish` call per
//! writer (so one broker message per broker) and answers every request of the
//! batch with that call's result. There is no timer: with a free call slot a
//! lone request goes at once, and only while every slot is busy do requests
//! wait, and then they leave together. So batches grow with the load and
//! latency does not pay for them at low load.
//!
//! A request's records never straddle two batches, unless the request alone
//! holds more than a batch may (a big array): then it is cut into batches of
//! its own. A request is answered 202 only when every one of its batches was
//! acknowledged by both brokers; otherwise 503, and some of its tweets may
//! have been published, which a retry with the same `Idempotency-Key` makes
//! safe (the ids repeat, the stores count each once).

use std::{sync::Arc, time::Instant};

use clima_proto::v1::TweetRecord;
use clima_telemetry::events::{ApiStage, api_request_stage};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Span;

use crate::{ApiError, Writers};

/// Hands requests' records to the dispatcher task.
pub(crate) struct Batcher {
    queue: mpsc::Sender<Pending>,
    max_tweets: usize,
}

/// One request's records, waiting for its batch to be confirmed.
struct Pending {
    records: Vec<TweetRecord>,
    /// The request's span: the batch's gRPC spans are its children (first
    /// request) or link to it (the others).
    span: Span,
    /// When it was handed to the dispatcher.
    queued: Instant,
    /// Whether its stages are timed: not for the parts of a request cut into
    /// several batches, which run side by side (their stages would not add
    /// up to the request's time).
    timed: bool,
    done: oneshot::Sender<Answer>,
}

/// The batch's result, and when it was sent (the request measures its wake-up).
struct Answer {
    result: Result<(), String>,
    sent: Instant,
}

impl Batcher {
    /// Starts the dispatcher: batches of at most `max_tweets` records, at most
    /// `max_in_flight` of them being published at once.
    pub(crate) fn start(writers: Arc<Writers>, max_tweets: usize, max_in_flight: usize) -> Self {
        // Bounded by the request concurrency limit in practice; the bound
        // only keeps a misconfiguration from growing it without limit.
        let (queue, pending) = mpsc::channel(64 * 1024);
        let max_tweets = max_tweets.max(1);
        tokio::spawn(dispatch(pending, writers, max_tweets, max_in_flight.max(1)));
        Self { queue, max_tweets }
    }

    /// Publishes the records with whichever requests are waiting too; `Ok`
    /// once every writer confirmed them. More records than a batch holds go as
    /// several batches, all of which must be confirmed.
    pub(crate) async fn publish(&self, mut records: Vec<TweetRecord>) -> Result<(), ApiError> {
        if records.len() <= self.max_tweets {
            return self.publish_batch(records, true).await;
        }
        let mut parts = Vec::with_capacity(records.len().div_ceil(self.max_tweets));
        while !records.is_empty() {
            let rest = records.split_off(records.len().min(self.max_tweets));
            parts.push(self.publish_batch(std::mem::replace(&mut records, rest), false));
        }
        futures::future::try_join_all(parts).await.map(drop)
    }

    async fn publish_batch(&self, records: Vec<TweetRecord>, timed: bool) -> Result<(), ApiError> {
        let (done, answer) = oneshot::channel();
        let pending = Pending { records, span: Span::current(), queued: Instant::now(), timed, done };
        self.queue.send(pending).await.map_err(|_| ApiError::Unavailable("the API is shutting down".into()))?;
        match answer.await {
            Ok(Answer { result, sent }) => {
                if timed {
                    api_request_stage(ApiStage::Wake, sent.elapsed());
                }
                result.map_err(ApiError::Unavailable)
            }
            Err(_) => Err(ApiError::Unavailable("the batch was abandoned; retry the request".into())),
        }
    }
}

async fn dispatch(
    mut pending: mpsc::Receiver<Pending>,
    writers: Arc<Writers>,
    max_tweets: usize,
    max_in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    // A request that did not fit into the last batch starts the next one.
    let mut carried: Option<Pending> = None;
    loop {
        // Waiting for a slot first is what lets the queue fill up into a batch.
        let slot = Arc::clone(&slots).acquire_owned().await.expect("the semaphore is never closed");
        let first = match carried.take() {
            Some(first) => first,
            None => match pending.recv().await {
                Some(first) => first,
                None => break,
            },
        };
        let mut tweets = first.records.len();
        let mut batch = vec![first];
        while tweets < max_tweets {
            match pending.try_recv() {
                Ok(next) if tweets + next.records.len() <= max_tweets => {
                    tweets += next.records.len();
                    batch.push(next);
                }
                Ok(next) => {
                    carried = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        let writers = Arc::clone(&writers);
        tokio::spawn(async move {
            publish_batch(&writers, batch, tweets).await;
            drop(slot);
        });
    }
}

async fn publish_batch(writers: &Writers, batch: Vec<Pending>, tweets: usize) {
    clima_telemetry::events::api_batch_sent(tweets, batch.len());
    let mut records = Vec::with_capacity(tweets);
    let mut spans = Vec::with_capacity(batch.len());
    let mut answers = Vec::with_capacity(batch.len());
    for request in batch {
        if request.timed {
            api_request_stage(ApiStage::Queue, request.queued.elapsed());
        }
        records.extend(request.records);
        spans.push(request.span);
        answers.push((request.done, request.timed));
    }
    let started = Instant::now();
    let result = writers.publish(&records, &spans).await.map_err(|error| error.to_string());
    let sent = Instant::now();
    for (answer, timed) in answers {
        if timed {
            api_request_stage(ApiStage::Writers, sent - started);
        }
        // A request whose client went away no longer listens; nothing to tell it.
        let _ = answer.send(Answer { result: result.clone(), sent });
    }
}
