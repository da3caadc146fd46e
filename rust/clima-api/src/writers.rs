use std::time::{Duration, Instant};

use clima_http::auth::ApiKey;
use clima_proto::v1::{
    PublishRequest, TweetRecord, writer_service_client::WriterServiceClient, writer_service_server::SERVICE_NAME,
};
use clima_telemetry::propagation::{self, MetadataInjector};
use futures::future::join_all;
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tracing::{Instrument, Span, field::Empty};

use crate::ApiError;

/// gRPC clients of every configured writer. Channels connect lazily and
/// reconnect by themselves, so a writer that starts later is picked up.
pub struct Writers {
    writers: Vec<Writer>,
}

struct Writer {
    endpoint: String,
    /// `host` and `port` of the endpoint, for span attributes.
    address: (String, u16),
    client: WriterServiceClient<Channel>,
    health: HealthClient<Channel>,
    /// `Bearer <--writer-api-key>`, if the writers require a key.
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Writer {
    /// One `Publish` call: a client span whose context travels in the metadata.
    /// The span is a child of the batch's first request and links to the others.
    async fn publish(&self, records: &[TweetRecord], requests: &[Span]) -> Result<(), (&str, tonic::Status)> {
        let span = tracing::info_span!(
            parent: requests.first().and_then(Span::id),
            "grpc.client",
            otel.name = %format_args!("{SERVICE_NAME}/Publish"),
            otel.kind = "client",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = SERVICE_NAME,
            rpc.method = "Publish",
            rpc.grpc.status_code = Empty,
            server.address = %self.address.0,
            server.port = self.address.1,
        );
        for other in requests.iter().skip(1) {
            propagation::add_link(&span, other);
        }
        let mut request = tonic::Request::new(PublishRequest { records: records.to_vec() });
        propagation::inject(&span, &mut MetadataInjector(request.metadata_mut()));
        if let Some(authorization) = &self.authorization {
            request.metadata_mut().insert("authorization", authorization.clone());
        }

        let started = Instant::now();
        let result = self.client.clone().publish(request).instrument(span.clone()).await;
        let code = result.as_ref().map_or_else(tonic::Status::code, |_| tonic::Code::Ok);
        span.record("rpc.grpc.status_code", code as i32);
        if code != tonic::Code::Ok {
            span.record("otel.status_code", "ERROR");
        }
        let labels =
            [("method", "Publish".to_owned()), ("target", self.endpoint.clone()), ("code", format!("{code:?}"))];
        metrics::counter!("grpc_client_requests_total", &labels).increment(1);
        metrics::histogram!("grpc_client_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
        result.map(drop).map_err(|status| (self.endpoint.as_str(), status))
    }
}

/// One writer's health as `/readyz` reports it: by its position in
/// --writer (1-based), not its address, which is internal.
#[derive(Debug, Serialize)]
pub struct WriterHealth {
    pub writer: usize,
    pub status: String,
}

impl Writers {
    pub fn new(
        endpoints: &[String],
        timeout: Duration,
        tls: Option<ClientTlsConfig>,
        api_key: Option<ApiKey>,
    ) -> Result<Self, ApiError> {
        let authorization = api_key
            .map(|key| tonic::metadata::MetadataValue::try_from(key.bearer().as_bytes()))
            .transpose()
            .map_err(|_| clima_http::auth::ApiKeyError::NotHeaderSafe)?
            .map(|mut value| {
                // Kept out of HTTP/2's header compression table.
                value.set_sensitive(true);
                value
            });
        let writers = endpoints
            .iter()
            .map(|endpoint| {
                let endpoint_error = |source| ApiError::WriterEndpoint { endpoint: endpoint.clone(), source };
                // `a|b`: replicas of one broker's writer; each call goes to one
                // of them (tonic's power-of-two-choices balancer).
                let mut replicas = Vec::new();
                for replica in endpoint.split('|') {
                    let mut channel = Endpoint::from_shared(replica.trim().to_owned()).map_err(endpoint_error)?;
                    if let Some(tls) = &tls {
                        channel = channel.tls_config(tls.clone()).map_err(endpoint_error)?;
                    }
                    replicas.push(
                        channel.connect_timeout(timeout.min(Duration::from_secs(1))).timeout(timeout).tcp_nodelay(true),
                    );
                }
                let channel = match replicas.len() {
                    1 => replicas.remove(0).connect_lazy(),
                    _ => Channel::balance_list(replicas.into_iter()),
                };
                let first = endpoint.split('|').next().unwrap_or_default();
                let uri: http::Uri = first.trim().parse().unwrap_or_default();
                let address = (uri.host().unwrap_or_default().to_owned(), uri.port_u16().unwrap_or(80));
                Ok(Writer {
                    endpoint: endpoint.clone(),
                    address,
                    client: WriterServiceClient::new(channel.clone()),
                    health: HealthClient::new(channel),
                    authorization: authorization.clone(),
                })
            })
            .collect::<Result<_, ApiError>>()?;
        Ok(Self { writers })
    }

    /// Sends the records of a batch of requests (whose spans are `requests`)
    /// to every writer at once; `Ok` only if every writer confirmed them. The
    /// error names each writer that did not.
    pub async fn publish(&self, records: &[TweetRecord], requests: &[Span]) -> Result<(), ApiError> {
        let calls = self.writers.iter().map(|writer| writer.publish(records, requests));
        let mut failed = 0;
        for (endpoint, status) in join_all(calls).await.into_iter().filter_map(Result::err) {
            // The details are for operators; clients are not told internal endpoints.
            tracing::warn!(endpoint, code = ?status.code(), message = status.message(), "writer did not confirm");
            failed += 1;
        }
        if failed == 0 {
            Ok(())
        } else {
            Err(ApiError::Unavailable(format!(
                "{failed} of {} writers did not confirm in time; retry the request with the same Idempotency-Key",
                self.writers.len()
            )))
        }
    }

    /// Each writer's `grpc.health.v1` status; all SERVING means ready.
    pub async fn health(&self) -> (bool, Vec<WriterHealth>) {
        let checks = self.writers.iter().enumerate().map(|(index, writer)| async move {
            let request = HealthCheckRequest { service: String::new() };
            let status = match writer.health.clone().check(request).await {
                Ok(response) => response.into_inner().status().as_str_name().to_owned(),
                Err(status) => {
                    tracing::debug!(endpoint = writer.endpoint, code = ?status.code(), "writer health check failed");
                    format!("UNREACHABLE ({:?})", status.code())
                }
            };
            WriterHealth { writer: index + 1, status }
        });
        let writers = join_all(checks).await;
        let ready = writers.iter().all(|w| w.status == ServingStatus::Serving.as_str_name());
        (ready, writers)
    }
}
