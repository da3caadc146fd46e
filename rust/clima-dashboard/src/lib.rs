//! `clima dashboard`: what the counters say, for people and for programs.
//!
//! One port serves:
//! - `GET /`: a self-contained page (no CDN) with totals, per country, per
//!   weather, country × weather and the per-minute rate, Redis and Valkey side
//!   by side, updating live;
//! - `GET /api/stats` and `GET /api/stats/stream` (server-sent events): the
//!   `clima.v1.GetStatsResponse` / `WatchStatsResponse` messages in their
//!   proto3 JSON form, which the page renders;
//! - gRPC `clima.v1.StatsService` (plus reflection v1/v1alpha and health), the
//!   same messages in binary.
//!
//! With [`Access::api_key`], everything but the probes (`/healthz`, gRPC
//! health) and reflection requires the key; a browser gets a login prompt
//! (`WWW-Authenticate: Basic`, the key as password). With [`Access::tls`] the
//! port speaks TLS only (HTTP/1.1 and HTTP/2 by ALPN), with client
//! certificates if its files name a client CA.

mod access;
mod snapshot;
mod stats_service;
mod web;

use std::future::Future;

use clima_proto::v1::stats_service_server::{SERVICE_NAME, StatsServiceServer};
use clima_telemetry::layers::{GrpcServerLayer, HttpServerLayer};
use tokio::net::TcpListener;

pub use access::Access;
pub use snapshot::{StoreReader, Stores};

/// Serves the page, its feed and the gRPC services on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    stores: Stores,
    access: Access,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_service_status(SERVICE_NAME, tonic_health::ServingStatus::Serving).await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(clima_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let grpc = tonic::service::Routes::new(StatsServiceServer::new(stats_service::Stats::new(stores.clone())))
        .add_service(health_service)
        .add_service(reflection().build_v1().expect("clima's descriptors are valid"))
        .add_service(reflection().build_v1alpha().expect("clima's descriptors are valid"))
        .into_axum_router();
    // HTTP/1.1 for browsers and HTTP/2 (h2c) for gRPC, on the same port; each
    // request observed (outermost) before the key is checked.
    let web = access.guard(web::router(stores)).layer(HttpServerLayer);
    let app = web.merge(access.guard(grpc).layer(GrpcServerLayer));
    tracing::info!(
        address = ?listener.local_addr().ok(),
        tls = access.tls.is_some(),
        api_key = access.api_key.is_some(),
        "dashboard listening (page, /api/stats, gRPC StatsService)"
    );
    clima_http::serve_tls(listener, app, clima_http::ConnectionLimits::default(), access.tls, shutdown).await
}
