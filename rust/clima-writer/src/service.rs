use std::{sync::Arc, time::Instant};

use clima_proto::v1::{
    PublishRequest, PublishResponse, TweetRecord,
    writer_service_server::{SERVICE_NAME, WriterService},
};
use clima_telemetry::{
    events,
    propagation::{self, MetadataExtractor},
};
use clima_tweet::{check_received_now, validate_record};
use tonic::{Code, Request, Response, Status};
use tracing::{Instrument, field::Empty};

use crate::{Sink, sinks::Broker};

/// `clima.v1.WriterService` over one sink.
pub struct Writer<S> {
    sink: Arc<S>,
    max_records: usize,
}

impl<S: Sink> Writer<S> {
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
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %format_args!("{SERVICE_NAME}/Publish"),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = SERVICE_NAME,
            rpc.method = "Publish",
            rpc.grpc.status_code = Empty,
            messaging.system = self.sink.broker().as_str(),
        );
        propagation::set_parent(&span, &MetadataExtractor(request.metadata()));

        let started = Instant::now();
        let result = self.publish_records(request.into_inner()).instrument(span.clone()).await;
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        span.record("rpc.grpc.status_code", code as i32);
        if !matches!(code, Code::Ok | Code::InvalidArgument) {
            span.record("otel.status_code", "ERROR");
        }
        events::grpc_request_served("Publish", code, started.elapsed());
        result.map(Response::new)
    }
}
