use std::time::Duration;

use clima_proto::v1::{PublishRequest, TweetRecord, writer_service_client::WriterServiceClient};
use futures::future::join_all;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::ApiError;

/// gRPC clients of every configured writer. Channels connect lazily and
/// reconnect by themselves, so a writer that starts later is picked up.
pub struct Writers {
    writers: Vec<Writer>,
}

struct Writer {
    endpoint: String,
    client: WriterServiceClient<Channel>,
    health: HealthClient<Channel>,
}

/// One writer's health as `/readyz` reports it.
#[derive(Debug, Serialize)]
pub struct WriterHealth {
    pub endpoint: String,
    pub status: String,
}

impl Writers {
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Self, ApiError> {
        let writers = endpoints
            .iter()
            .map(|endpoint| {
                let channel = Endpoint::from_shared(endpoint.clone())
                    .map_err(|source| ApiError::WriterEndpoint { endpoint: endpoint.clone(), source })?
                    .connect_timeout(timeout.min(Duration::from_secs(1)))
                    .timeout(timeout)
                    .tcp_nodelay(true)
                    .connect_lazy();
                Ok(Writer {
                    endpoint: endpoint.clone(),
                    client: WriterServiceClient::new(channel.clone()),
                    health: HealthClient::new(channel),
                })
            })
            .collect::<Result<_, ApiError>>()?;
        Ok(Self { writers })
    }

    /// Sends the records to every writer at once; `Ok` only if every writer
    /// confirmed them. The error names each writer that did not.
    pub async fn publish(&self, records: &[TweetRecord]) -> Result<(), ApiError> {
        let calls = self.writers.iter().map(|writer| async move {
            let request = PublishRequest { records: records.to_vec() };
            writer.client.clone().publish(request).await.map_err(|status| (writer.endpoint.as_str(), status))
        });
        let failures: Vec<String> = join_all(calls)
            .await
            .into_iter()
            .filter_map(Result::err)
            .map(|(endpoint, status)| {
                tracing::warn!(endpoint, code = ?status.code(), message = status.message(), "writer did not confirm");
                format!("writer {endpoint}: {:?}: {}", status.code(), status.message())
            })
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Unavailable(format!("not every writer confirmed; retry the request ({})", failures.join("; "))))
        }
    }

    /// Each writer's `grpc.health.v1` status; all SERVING means ready.
    pub async fn health(&self) -> (bool, Vec<WriterHealth>) {
        let checks = self.writers.iter().map(|writer| async move {
            let request = HealthCheckRequest { service: String::new() };
            let status = match writer.health.clone().check(request).await {
                Ok(response) => response.into_inner().status().as_str_name().to_owned(),
                Err(status) => format!("UNREACHABLE ({:?})", status.code()),
            };
            WriterHealth { endpoint: writer.endpoint.clone(), status }
        });
        let writers = join_all(checks).await;
        let ready = writers.iter().all(|w| w.status == ServingStatus::Serving.as_str_name());
        (ready, writers)
    }
}
