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

use axum::handler::HandlerWithoutStateExt;
use clima_proto::v1::stats_service_server::{SERVICE_NAME, StatsServiceServer};
use clima_telemetry::layers::{GrpcServerLayer, HttpServerLayer};
use tokio::net::TcpListener;
use tower::Layer;

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
    // request observed (outermost) before the key is checked. A path neither
    // router has is the fallback's, observed as an HTTP request, and behind
    // the key too: without it, which paths exist is not told.
    let grpc_layer = GrpcServerLayer::new(&[clima_proto::FILE_DESCRIPTOR_SET]).expect("clima's descriptors are valid");
    let key_check = access.key_check();
    let web = web::router(stores.clone()).layer(key_check.clone()).layer(HttpServerLayer);
    let app = web
        .merge(grpc.layer(key_check.clone()).route_layer(grpc_layer))
        .fallback_service(HttpServerLayer.layer(key_check.layer(web::unmatched.into_service())));
    tracing::info!(
        address = ?listener.local_addr().ok(),
        tls = access.tls.is_some(),
        api_key = access.api_key.is_some(),
        "dashboard listening (page, /api/stats, gRPC StatsService)"
    );
    let closing = stores.closing.clone();
    let shutdown = async move {
        shutdown.await;
        closing.cancel();
    };
    clima_http::serve_tls(listener, app, clima_http::ConnectionLimits::default(), access.tls, shutdown).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clima_http::auth::ApiKey;
    use clima_store::KeySchema;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::{Access, StoreReader, Stores, serve};

    /// A browser's `GET path` to a dashboard with `access`, and its raw answer.
    async fn browse(access: Access, path: &str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // Nothing listens on port 1: the stores are unreachable.
        let reader = || StoreReader::new("redis://127.0.0.1:1", KeySchema::new("clima-test"));
        tokio::spawn(serve(listener, Stores::new(reader(), reader()), access, std::future::pending()));
        let mut browser = TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
        browser.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        browser.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// A path no route has is a 404 with a JSON body to a browser, not a
    /// gRPC answer (the gRPC router's fallback was the whole port's).
    #[tokio::test]
    async fn an_unknown_path_is_a_json_404() {
        let answer = browse(Access::default(), "/favicon.ico").await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert!(answer.contains(r#""error":"not_found""#), "{answer}");
    }

    /// With a key, every path but the probes asks for it, unknown ones too.
    #[tokio::test]
    async fn with_a_key_an_unknown_path_asks_for_it() {
        let api_key = ApiKey::load(Some("the-key"), None).unwrap();
        let access = Access { api_key, ..Access::default() };
        let answer = browse(access.clone(), "/favicon.ico").await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(answer.contains(r#""error":"unauthorized""#), "{answer}");
        let probe = browse(access, "/healthz").await;
        assert!(probe.starts_with("HTTP/1.1 200"), "{probe}");
    }

    /// A browser left open on the page must not keep the dashboard from
    /// stopping: its watch ends with the shutdown.
    #[tokio::test]
    async fn shutdown_ends_the_watches_still_open() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // Nothing listens on port 1: the watch reports the stores unreachable.
        let reader = || StoreReader::new("redis://127.0.0.1:1", KeySchema::new("clima-test"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Stores::new(reader(), reader()), Access::default(), async {
            stopped.await.ok();
        }));

        let mut browser = TcpStream::connect(address).await.unwrap();
        browser.write_all(b"GET /api/stats/stream?interval_ms=200 HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
        let mut head = [0; 64];
        let read = browser.read(&mut head).await.unwrap();
        assert!(head[..read].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..read]));

        stop.send(()).unwrap();
        let stopped = tokio::time::timeout(Duration::from_secs(5), server).await;
        let stopped = stopped.expect("the dashboard still waited on an open watch 5 s after its shutdown");
        assert!(matches!(stopped, Ok(Ok(()))), "the dashboard did not stop cleanly: {stopped:?}");
    }
}
