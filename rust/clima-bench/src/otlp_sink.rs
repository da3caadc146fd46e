use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};

/// What `clima bench otlp-sink` runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to take OTLP/gRPC trace exports.
    pub listen: std::net::SocketAddr,
}

/// Takes every export and keeps only the number of spans: the receiving end
/// the services export to while `ci/bench` measures the cost of tracing.
#[derive(Default, Clone)]
struct Sink {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// Serves until SIGTERM or Ctrl-C, then prints how many spans arrived.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let sink = Sink::default();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink.clone()))
        .serve_with_shutdown(config.listen, stop)
        .await?;
    println!("{}", serde_json::json!({ "spans_received": sink.spans.load(Ordering::Relaxed) }));
    Ok(())
}
