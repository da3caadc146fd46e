//! What a broker must offer the [driver](crate::driver): messages in, and
//! acknowledgements, dead letters and reconnects out. Everything else
//! (batching, the store and its retries, spans, metrics, the ack timing) is
//! the driver's, so Kafka and RabbitMQ implement only what differs.

use std::future::Future;

use clima_proto::v1::TweetRecord;
use clima_telemetry::events::{Broker, Store};
use tokio_util::sync::CancellationToken;
use tracing::Span;

use crate::{AckTiming, ConsumerError};

/// A broker a consumer reads from.
pub trait Source: Send {
    /// Which broker this is (the `source` label of the consumer's metrics).
    const BROKER: Broker;

    /// What acknowledges one message (Kafka: its partition and next offset;
    /// RabbitMQ: its delivery tag).
    type Ack: Send + Sync;
    /// Where a message sits, for the store to recognise it when it comes again
    /// (Kafka: partition and offset; RabbitMQ: message id).
    type Position: Send + Sync;
    /// A rejected message as received, to dead-letter unchanged.
    type Original: Send + Sync;

    /// Waits for the next message. Must be cancel-safe: the driver drops it
    /// when a batch's linger ends and on shutdown. An error ends the batch in
    /// hand unacknowledged and calls [`Source::recover`].
    fn next(&mut self) -> impl Future<Output = Result<Message<Self>, ConsumerError>> + Send;

    /// Moves a rejected message to the dead-letter destination, with `reason`;
    /// returns once the broker has it. The message itself is acknowledged with
    /// its batch.
    fn dead_letter(
        &mut self,
        original: &Self::Original,
        reason: &str,
    ) -> impl Future<Output = Result<(), ConsumerError>> + Send;

    /// Acknowledges every message of a batch (`acks` in the order received),
    /// `timing` saying whether the store has counted them yet.
    fn ack(&mut self, acks: &[Self::Ack], timing: AckTiming) -> impl Future<Output = Result<(), ConsumerError>> + Send;

    /// Told after the store counted a batch (Kafka skips ahead with it).
    fn counted(&mut self, _positions: &[Self::Position]) {}

    /// Told when the store refused a batch because its positions are not the
    /// ones the source read from ([`Tallied::Moved`]): the batch is dropped
    /// unacknowledged, and the source must read again from the store's
    /// positions (Kafka re-assigns its partitions there).
    fn store_moved(&mut self) {}

    /// Reconnects after `next`, `dead_letter` or `ack` failed; false if
    /// `shutdown` came first.
    fn recover(&mut self, shutdown: &CancellationToken) -> impl Future<Output = bool> + Send;

    /// Called once when the driver stops (Kafka makes its last commit durable).
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// One received message and what the driver should do with it.
pub struct Message<S: Source + ?Sized> {
    /// What acknowledges it to the broker.
    pub ack: S::Ack,
    /// What it holds.
    pub content: Content<S>,
}

/// What a received message holds, as the driver treats it.
pub enum Content<S: Source + ?Sized> {
    /// A clima batch: its tweets, their process spans (see
    /// `process_spans`) and where the message sits.
    Tweets {
        /// The batch's tweets.
        records: Vec<TweetRecord>,
        /// One process span per tweet.
        spans: Vec<Span>,
        /// Where the message sits (Kafka: partition and offset).
        position: S::Position,
    },
    /// Not to be counted (not a clima batch, or delivered too often): to the
    /// dead-letter destination with `reason`.
    Rejected {
        /// The message as received, for the dead-letter destination.
        original: S::Original,
        /// Why it is not counted.
        reason: String,
    },
    /// Counted before (Kafka: below the store's next offset): only acknowledged.
    CountedBefore,
}

/// The store as the driver sees it: counts a batch once per message position
/// and tweet id. [`clima_store::CounterStore`] is the real one.
pub trait Tally<P>: Sync {
    /// Why a count failed (the driver retries it).
    type Error: std::fmt::Display + Send;

    /// Which store this is (the `store` metric label and the span's `db.system`).
    fn store(&self) -> Store;

    /// Counts `records` (the tweets of the messages at `positions`, in order);
    /// says how many were new. Must be idempotent: a retry after a failed
    /// call, or the same messages again, counts nothing twice.
    fn count(
        &self,
        records: &[TweetRecord],
        positions: &[P],
    ) -> impl Future<Output = Result<Tallied, Self::Error>> + Send;

    /// Told after the broker acknowledged counted messages: no redelivery can
    /// come, so what guarded against one may go.
    fn forget_acked(&self, _positions: &[P]) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }
}

/// What the store did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tallied {
    /// Counted: this many tweets were new.
    Counted(u64),
    /// Nothing written: the store's positions are not the ones the source
    /// read from (restored, emptied, or advanced by another consumer).
    Moved,
}
