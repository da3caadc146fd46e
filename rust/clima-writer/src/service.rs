use std::{sync::Arc, time::Instant};

use clima_proto::v1::{PublishRequest, PublishResponse, TweetRecord, writer_service_server::WriterService};
use clima_telemetry::{events, propagation};
use clima_tweet::{check_received_now, validate_record};
use tonic::{Request, Response, Status};

use crate::{Sink, sinks::Broker};

/// `clima.v1.WriterService` over one sink.
pub struct Writer<S> {
    sink: Arc<S>,
    max_records: usize,
}

impl<S: Sink> Writer<S> {
    /// The service over `sink`, refusing requests of over `max_records` records.
    pub fn new(sink: Arc<S>, max_records: usize) -> Self {
        Self { sink, max_records }
    }

    async fn publish_records(&self, request: PublishRequest) -> Result<PublishResponse, Status> {
        let mut records = request.records;
        if records.is_empty() {
            return Err(Status::invalid_argument("records: at least one record is required"));
        }
        if records.len() > self.max_records {
            return Err(Status::invalid_argument(format!(
                "records: {} records exceed the limit of {} per request",
                records.len(),
                self.max_records
            )));
        }
        let now = std::time::SystemTime::now();
        for (index, record) in records.iter().enumerate() {
            validate_record(record)
                .and_then(|()| check_received_now(record, now))
                .map_err(|error| Status::invalid_argument(format!("records[{index}].{}: {error}", error.field())))?;
        }
        let broker = self.sink.broker();
        continue_traces(broker, self.sink.destination(), &mut records);
        let started = Instant::now();
        let published = self.sink.publish(&records).await;
        if let Err(error) = published {
            events::publish_failed(broker, started.elapsed());
            let broker = broker.as_str();
            tracing::warn!(broker, %error, records = records.len(), "publish failed");
            return Err(Status::unavailable(format!("{broker}: {error}")));
        }
        events::published(broker, records.len(), started.elapsed());
        Ok(PublishResponse { published: records.len() as u32 })
    }
}

/// Gives each traced record a creation span (OpenTelemetry messaging
/// conventions: one per message of a batch), a child of the span the record
/// arrived with, and makes it the record's trace context: the consumer's
/// process span becomes its child, so each tweet keeps one trace although it
/// shares a broker message with others. Untraced records cost nothing.
fn continue_traces(broker: Broker, destination: &str, records: &mut [TweetRecord]) {
    for record in records.iter_mut().filter(|record| !record.trace_context.is_empty()) {
        let create = tracing::info_span!(
            parent: None,
            "messaging.create",
            otel.name = %format_args!("create {destination}"),
            otel.kind = "producer",
            messaging.system = broker.as_str(),
            messaging.destination.name = %destination,
            messaging.operation.type = "create",
            messaging.operation.name = "create",
            messaging.message.id = %record.id,
        );
        propagation::set_parent(&create, &record.trace_context);
        record.trace_context = propagation::context_map(&create);
    }
}

#[tonic::async_trait]
impl<S: Sink> WriterService for Writer<S> {
    // Its span and RED metrics come from the server's `GrpcServerLayer`.
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        self.publish_records(request.into_inner()).await.map(Response::new)
    }
}
