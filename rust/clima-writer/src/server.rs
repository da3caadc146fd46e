use std::{future::Future, sync::Arc, time::Duration};

use clima_proto::v1::writer_service_server::{SERVICE_NAME, WriterServiceServer};
use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{Sink, service::Writer};

#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// Most records accepted in one Publish request.
    #[arg(long = "max-records", env = "CLIMA_WRITER_MAX_RECORDS", default_value_t = 1000)]
    pub max_records: usize,

    /// How often the broker connection is checked for the health service.
    #[arg(long = "health-interval", env = "CLIMA_WRITER_HEALTH_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { max_records: 1000, health_interval: Duration::from_secs(5) }
    }
}

/// Serves `clima.v1.WriterService`, reflection (v1 and v1alpha) and
/// `grpc.health.v1.Health` on `listener` until `shutdown` resolves.
///
/// Health is NOT_SERVING until the sink reached its broker, and follows the
/// broker afterwards (checked every `health_interval`).
pub async fn serve<S: Sink>(
    listener: TcpListener,
    sink: S,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let sink = Arc::new(sink);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&health_reporter, ServingStatus::NotServing).await;
    let health_task = tokio::spawn(report_health(Arc::clone(&sink), health_reporter, config.health_interval));

    let reflection_v1 = reflection().build_v1().expect("clima's descriptors are valid");
    let reflection_v1alpha = reflection().build_v1alpha().expect("clima's descriptors are valid");

    tracing::info!(address = ?listener.local_addr().ok(), broker = sink.name(), "writer listening");
    let result = Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(WriterServiceServer::new(Writer::new(sink, config.max_records)))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await;
    health_task.abort();
    result
}

async fn report_health<S: Sink>(sink: Arc<S>, reporter: HealthReporter, interval: Duration) {
    let mut serving = false;
    loop {
        let healthy = match sink.check().await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(broker = sink.name(), %error, "broker not reachable");
                false
            }
        };
        if healthy != serving {
            serving = healthy;
            let status = if healthy { "SERVING" } else { "NOT_SERVING" };
            tracing::info!(broker = sink.name(), status, "writer health changed");
            set_health(&reporter, if healthy { ServingStatus::Serving } else { ServingStatus::NotServing }).await;
        }
        // Retry quickly while unhealthy, so readiness follows a recovered broker fast.
        tokio::time::sleep(if healthy { interval } else { interval.min(Duration::from_secs(1)) }).await;
    }
}

/// Reflection over clima's protos and the health service's.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(clima_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Sets the writer service's status and the server's overall ("") status,
/// which is what `grpc_health_probe` and Kubernetes gRPC probes ask for.
async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status(SERVICE_NAME, status).await;
    reporter.set_service_status("", status).await;
}
