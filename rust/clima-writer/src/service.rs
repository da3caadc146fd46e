use std::sync::Arc;

use clima_proto::v1::{PublishRequest, PublishResponse, writer_service_server::WriterService};
use clima_tweet::validate_record;
use tonic::{Request, Response, Status};

use crate::Sink;

/// `clima.v1.WriterService` over one sink.
pub struct Writer<S> {
    sink: Arc<S>,
    max_records: usize,
}

impl<S: Sink> Writer<S> {
    pub fn new(sink: Arc<S>, max_records: usize) -> Self {
        Self { sink, max_records }
    }
}

#[tonic::async_trait]
impl<S: Sink> WriterService for Writer<S> {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        let records = request.into_inner().records;
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
        for (index, record) in records.iter().enumerate() {
            validate_record(record)
                .map_err(|error| Status::invalid_argument(format!("records[{index}].{}: {error}", error.field())))?;
        }
        self.sink.publish(&records).await.map_err(|error| {
            tracing::warn!(broker = self.sink.name(), %error, records = records.len(), "publish failed");
            Status::unavailable(format!("{}: {error}", self.sink.name()))
        })?;
        Ok(Response::new(PublishResponse { published: records.len() as u32 }))
    }
}
