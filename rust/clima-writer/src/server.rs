use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use clima_http::auth::ApiKey;
use clima_proto::v1::writer_service_server::{SERVICE_NAME, WriterServiceServer};
use clima_telemetry::{layers::GrpcServerLayer, readiness::Readiness};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming};
use tonic::{Request, Status};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{Sink, service::Writer};

/// Default of `--max-records`.
pub const DEFAULT_MAX_RECORDS: usize = 1000;
/// Default of `--health-interval`.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// The writer's gRPC server: limits, health checks, TLS and its API key.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Most records accepted in one Publish request.
    pub max_records: usize,
    /// How often the broker connection is checked for the health service.
    pub health_interval: Duration,
    /// PEM certificate chain the writer presents: serve gRPC over TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate that must have signed every client's certificate (mutual TLS).
    pub tls_client_ca: Option<PathBuf>,
    /// API key every Publish call must present; none means open.
    pub api_key: Option<String>,
    /// File holding the API key.
    pub api_key_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_records: DEFAULT_MAX_RECORDS,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            api_key: None,
            api_key_file: None,
        }
    }
}

impl ServerConfig {
    /// The TLS settings, if --tls-cert is given.
    fn tls(&self) -> Result<Option<ServerTlsConfig>, ServeError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        if let Some(ca) = &self.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(Some(tls))
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|source| ServeError::ReadFile { path: path.clone(), source })
}

/// Why the writer's server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A TLS or key file could not be read.
    #[error("reading {path:?}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed (or refused its TLS settings).
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The API key is not usable.
    #[error(transparent)]
    ApiKey(#[from] clima_http::auth::ApiKeyError),
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
) -> Result<(), ServeError> {
    serve_reporting(listener, sink, config, Readiness::not_ready(), shutdown).await
}

/// [`serve`], also reporting the health status to `readiness` (the admin
/// port's `/readyz`, for probes that cannot speak the writer's TLS).
pub async fn serve_reporting<S: Sink>(
    listener: TcpListener,
    sink: S,
    config: ServerConfig,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let tls = config.tls()?;
    let api_key = ApiKey::load(config.api_key.as_deref(), config.api_key_file.as_deref())?;
    let sink = Arc::new(sink);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&health_reporter, ServingStatus::NotServing).await;
    let health_task =
        tokio::spawn(report_health(Arc::clone(&sink), health_reporter, readiness, config.health_interval));

    let reflection_v1 = reflection().build_v1().expect("clima's descriptors are valid");
    let reflection_v1alpha = reflection().build_v1alpha().expect("clima's descriptors are valid");

    tracing::info!(address = ?listener.local_addr().ok(), broker = sink.broker().as_str(), tls = tls.is_some(), "writer listening");
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let result = server
        .layer(GrpcServerLayer::new(&[clima_proto::FILE_DESCRIPTOR_SET]).expect("clima's descriptors are valid"))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(WriterServiceServer::with_interceptor(Writer::new(sink, config.max_records), require(api_key)))
        // `TcpIncoming::from` leaves Nagle's algorithm on (tonic sets TCP_NODELAY
        // only for the listeners it binds itself): each answer then waited for
        // the API's delayed ACK, up to 40 ms (clima bench hop, docs/FINDINGS.md).
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await;
    health_task.abort();
    Ok(result?)
}

/// Refuses a call without the API key, if one is required.
fn require(api_key: Option<ApiKey>) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| match &api_key {
        Some(key) if !key.is_presented(&request.metadata().clone().into_headers()) => {
            Err(Status::unauthenticated("a valid API key is required (authorization: Bearer <key>)"))
        }
        _ => Ok(request),
    }
}

async fn report_health<S: Sink>(sink: Arc<S>, reporter: HealthReporter, readiness: Readiness, interval: Duration) {
    let mut serving = false;
    loop {
        let healthy = match sink.check().await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(broker = sink.broker().as_str(), %error, "broker not reachable");
                false
            }
        };
        if healthy != serving {
            serving = healthy;
            let status = if healthy { "SERVING" } else { "NOT_SERVING" };
            tracing::info!(broker = sink.broker().as_str(), status, "writer health changed");
            set_health(&reporter, if healthy { ServingStatus::Serving } else { ServingStatus::NotServing }).await;
            readiness.set(healthy);
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
