use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use clima_http::auth::ApiKey;
use clima_proto::v1::{PublishRequest, TweetRecord, writer_service_client::WriterServiceClient};
use clima_telemetry::layers::{GrpcClient, GrpcClientLayer, LinkedSpans};
use futures::future::join_all;
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tower::Layer;
use tracing::{Instrument, Span};

use crate::ApiError;

/// gRPC clients of every configured writer. Channels connect lazily and
/// reconnect by themselves, so a writer that starts later is picked up.
pub struct Writers {
    writers: Vec<Writer>,
}

/// One broker's writer: one or more replicas (`--writer a|b`).
struct Writer {
    replicas: Vec<Replica>,
    /// Where the next call starts: calls go round the replicas in turn.
    next: AtomicUsize,
    /// `Bearer <--writer-api-key>`, if the writers require a key.
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

/// One writer process: its own channel, so a dead one fails alone.
struct Replica {
    endpoint: String,
    client: WriterServiceClient<GrpcClient<Channel>>,
    health: HealthClient<GrpcClient<Channel>>,
}

impl Writer {
    /// Publishes on one replica, in turn; a replica that cannot be reached
    /// (`UNAVAILABLE`: nothing was sent) hands the call to the next one. Any
    /// other failure is the answer: that replica may have published, and a
    /// retry is the client's, with its Idempotency-Key.
    async fn publish(&self, records: &[TweetRecord], requests: &[Span]) -> Result<(), (&str, tonic::Status)> {
        let count = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut outcome = Ok(());
        for attempt in 0..count {
            let replica = &self.replicas[(start + attempt) % count];
            outcome = replica.publish(records, requests, self.authorization.as_ref()).await;
            match &outcome {
                Err((endpoint, status)) if status.code() == tonic::Code::Unavailable && attempt + 1 < count => {
                    tracing::debug!(
                        endpoint,
                        message = status.message(),
                        "writer replica unreachable; trying the next"
                    );
                }
                _ => break,
            }
        }
        outcome
    }

    /// SERVING if any replica is, else the first replica's status.
    async fn health(&self) -> String {
        let checks = self.replicas.iter().map(|replica| async move {
            let request = HealthCheckRequest { service: String::new() };
            match replica.health.clone().check(request).await {
                Ok(response) => response.into_inner().status().as_str_name().to_owned(),
                Err(status) => {
                    tracing::debug!(endpoint = replica.endpoint, code = ?status.code(), "writer health check failed");
                    format!("UNREACHABLE ({:?})", status.code())
                }
            }
        });
        let statuses = join_all(checks).await;
        let serving = ServingStatus::Serving.as_str_name();
        statuses.iter().find(|status| *status == serving).unwrap_or(&statuses[0]).clone()
    }
}

impl Replica {
    /// One `Publish` call. Its client span (from the channel's
    /// `GrpcClientLayer`) is a child of the batch's first request and links
    /// to the others; its context travels in the metadata.
    async fn publish(
        &self,
        records: &[TweetRecord],
        requests: &[Span],
        authorization: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    ) -> Result<(), (&str, tonic::Status)> {
        let mut request = tonic::Request::new(PublishRequest { records: records.to_vec() });
        if requests.len() > 1 {
            request.extensions_mut().insert(LinkedSpans(requests[1..].to_vec()));
        }
        if let Some(authorization) = authorization {
            request.metadata_mut().insert("authorization", authorization.clone());
        }
        let parent = requests.first().cloned().unwrap_or_else(Span::current);
        let result = self.client.clone().publish(request).instrument(parent).await;
        result.map(drop).map_err(|status| (self.endpoint.as_str(), status))
    }
}

/// One writer's health as `/readyz` reports it: by its position in
/// --writer (1-based), not its address, which is internal.
#[derive(Debug, Serialize)]
pub struct WriterHealth {
    /// Its position in --writer, from 1.
    pub writer: usize,
    /// A `grpc.health.v1` status (`SERVING`, `NOT_SERVING`, ...), or
    /// `UNREACHABLE (<code>)`.
    pub status: String,
}

impl Writers {
    /// A lazily connecting client of each endpoint (`a|b` for replicas),
    /// with `timeout` per call, TLS if given, and the key the writers require.
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
                // `a|b`: replicas of one broker's writer, a channel each.
                let mut replicas = Vec::new();
                for replica in endpoint.split('|').map(str::trim) {
                    let mut channel = Endpoint::from_shared(replica.to_owned()).map_err(endpoint_error)?;
                    if let Some(tls) = &tls {
                        channel = channel.tls_config(tls.clone()).map_err(endpoint_error)?;
                    }
                    let channel = channel
                        .connect_timeout(timeout.min(Duration::from_secs(1)))
                        .timeout(timeout)
                        .tcp_nodelay(true)
                        .connect_lazy();
                    let channel = GrpcClientLayer::new(replica).layer(channel);
                    replicas.push(Replica {
                        endpoint: replica.to_owned(),
                        client: WriterServiceClient::new(channel.clone()),
                        health: HealthClient::new(channel),
                    });
                }
                Ok(Writer { replicas, next: AtomicUsize::new(0), authorization: authorization.clone() })
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
        let checks =
            self.writers.iter().enumerate().map(|(index, writer)| async move {
                WriterHealth { writer: index + 1, status: writer.health().await }
            });
        let writers = join_all(checks).await;
        let ready = writers.iter().all(|w| w.status == ServingStatus::Serving.as_str_name());
        (ready, writers)
    }
}
