//! The one consume loop every [`Source`] runs on: batching, dead letters, the
//! store and its retries, acknowledgements in the configured order, spans and
//! metrics.

use std::time::Instant;

use clima_proto::v1::TweetRecord;
use clima_telemetry::{events, readiness::Readiness};
use tokio_util::sync::CancellationToken;
use tracing::Span;

use crate::{
    AckTiming, BatchConfig, ConsumerError, retry_until_ok,
    source::{Content, Message, Source, Tallied, Tally},
};

/// One batch as received: what to count, dead-letter and acknowledge.
struct Batch<S: Source> {
    records: Vec<TweetRecord>,
    spans: Vec<Span>,
    positions: Vec<S::Position>,
    rejected: Vec<(S::Original, String)>,
    acks: Vec<S::Ack>,
}

impl<S: Source> Batch<S> {
    fn new() -> Self {
        Self { records: Vec::new(), spans: Vec::new(), positions: Vec::new(), rejected: Vec::new(), acks: Vec::new() }
    }

    fn add(&mut self, message: Message<S>) {
        match message.content {
            Content::Tweets { records, spans, position } => {
                events::message_consumed(S::BROKER, records.len());
                self.records.extend(records);
                self.spans.extend(spans);
                self.positions.push(position);
            }
            Content::Rejected { original, reason } => {
                events::message_rejected(S::BROKER);
                tracing::warn!(%reason, "invalid message; dead-lettering it");
                self.rejected.push((original, reason));
            }
            Content::CountedBefore => {
                events::counted_message_skipped(S::BROKER);
            }
        }
        self.acks.push(message.ack);
    }
}

/// Consumes `source` into `tally` until `shutdown`. A batch is acknowledged
/// only once it is settled: its tweets counted and its rejected messages
/// dead-lettered ([`AckTiming::BeforeStore`] acknowledges before the count, to
/// measure what that loses). Whatever is in hand at shutdown or at a broker
/// failure stays unacknowledged, for the broker to deliver again.
///
/// `health` is the consumer's readiness (`/readyz`): ready while the source
/// is connected and the store takes writes; not while it reconnects to the
/// broker or retries the store.
pub async fn run<S: Source, T: Tally<S::Position>>(
    source: &mut S,
    tally: &T,
    batching: &BatchConfig,
    shutdown: &CancellationToken,
    health: &Readiness,
) {
    health.set(true);
    loop {
        let batch = tokio::select! {
            batch = fill(source, batching) => batch,
            () = shutdown.cancelled() => break,
        };
        let settled = match batch {
            Ok(batch) => settle(source, tally, batch, batching.ack, shutdown, health).await,
            Err(error) => Err(error),
        };
        match settled {
            Ok(true) => {}
            Ok(false) => break,
            Err(error) => {
                tracing::warn!(%error, source = S::BROKER.as_str(), "broker failed; reconnecting (the batch in hand will be delivered again)");
                health.set(false);
                if !source.recover(shutdown).await {
                    break;
                }
                health.set(true);
            }
        }
    }
    source.close().await;
    tracing::info!(source = S::BROKER.as_str(), "consumer stopped");
}

/// Waits for one message, then takes more until the batch holds
/// `max_records` tweets or its linger ends (a message's tweets are never
/// split, so a batch may exceed the size by one message).
async fn fill<S: Source>(source: &mut S, batching: &BatchConfig) -> Result<Batch<S>, ConsumerError> {
    let mut batch = Batch::new();
    batch.add(source.next().await?);
    let deadline = tokio::time::Instant::now() + batching.linger;
    while batch.records.len() < batching.max_records {
        match tokio::time::timeout_at(deadline, source.next()).await {
            Ok(message) => batch.add(message?),
            Err(_linger_over) => break,
        }
    }
    Ok(batch)
}

/// Dead-letters, counts and acknowledges one batch. Ok(false) on shutdown,
/// with the batch not (or not yet) acknowledged.
async fn settle<S: Source, T: Tally<S::Position>>(
    source: &mut S,
    tally: &T,
    batch: Batch<S>,
    ack: AckTiming,
    shutdown: &CancellationToken,
    health: &Readiness,
) -> Result<bool, ConsumerError> {
    for (original, reason) in &batch.rejected {
        tokio::select! {
            sent = source.dead_letter(original, reason) => sent?,
            () = shutdown.cancelled() => return Ok(false),
        }
        events::dead_lettered(S::BROKER);
    }
    if ack == AckTiming::BeforeStore {
        source.ack(&batch.acks, ack).await?;
    }
    if !batch.positions.is_empty() {
        match count_until_stored::<S, T>(tally, &batch.records, &batch.positions, &batch.spans, shutdown, health).await
        {
            // Uncounted: unacknowledged, the broker delivers it again (acknowledged
            // before the store, it is lost: what that design gives up).
            None => return Ok(false),
            Some(Tallied::Moved) => {
                events::store_moved(S::BROKER, tally.store());
                tracing::warn!(
                    source = S::BROKER.as_str(),
                    "the store's positions moved (restored, emptied, or counted by another consumer); reading again \
                     from the store's positions"
                );
                source.store_moved();
                return Ok(true);
            }
            Some(Tallied::Counted(_)) => {}
        }
    }
    // Told after every batch, even one with nothing to count: Kafka seeks past
    // a run of messages counted before from there.
    source.counted(&batch.positions);
    if ack == AckTiming::AfterStore {
        source.ack(&batch.acks, ack).await?;
    }
    if !batch.positions.is_empty()
        && let Err(error) = tally.forget_acked(&batch.positions).await
    {
        // Left behind, what guarded the acknowledged messages only costs memory until it expires.
        tracing::debug!(%error, "could not drop the acknowledged messages' guard");
    }
    Ok(true)
}

/// Counts a batch, retrying the store until it succeeds: a batch is never
/// skipped. Gives up only on shutdown (`None`), leaving the batch
/// unacknowledged so the broker redelivers it to the next consumer.
///
/// The batch is one round trip, but each tweet gets its own store span (a
/// child of its process span, all covering the same round trip) so that the
/// write shows in every tweet's trace, not only in one of them.
async fn count_until_stored<S: Source, T: Tally<S::Position>>(
    tally: &T,
    records: &[TweetRecord],
    positions: &[S::Position],
    process_spans: &[Span],
    shutdown: &CancellationToken,
    health: &Readiness,
) -> Option<Tallied> {
    let store = tally.store();
    let system = store.as_str();
    let _store_spans: Vec<Span> = process_spans
        .iter()
        .map(|parent| {
            tracing::info_span!(
                parent: parent,
                "db.count",
                otel.name = %format_args!("EVALSHA {system}"),
                otel.kind = "client",
                db.system = system,
                db.system.name = system,
                db.operation.name = "EVALSHA",
                db.operation.batch.size = records.len(),
            )
        })
        .collect();
    let started = Instant::now();
    let count = || async {
        let counted = tally.count(records, positions).await;
        if counted.is_err() {
            events::store_write_failed(store);
        }
        health.set(counted.is_ok());
        counted
    };
    let tallied = retry_until_ok("store write", shutdown, count).await?;
    if let Tallied::Counted(new) = tallied {
        events::batch_counted(S::BROKER, store, new, records.len() as u64 - new, started.elapsed());
        tracing::debug!(records = records.len(), new, "batch counted");
    }
    Some(tallied)
}

#[cfg(test)]
mod tests;
