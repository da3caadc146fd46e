//! `clima api`: the HTTP ingress.
//!
//! `POST /input` takes one tweet object or a JSON array of them, decoded
//! through the proto JSON mapping of `clima.v1.TweetInput` and validated by
//! `clima-tweet`. Each accepted tweet gets a UUIDv7 id and a received time and
//! goes to every writer over gRPC, together with the tweets of other requests
//! in flight (see `batcher.rs`); the answer is 202 only after every writer
//! confirmed that its broker durably accepted every tweet.

mod batcher;
mod config;
mod error;
mod input;
mod limits;
mod writers;

#[cfg(test)]
mod routes_tests;

use std::{convert::Infallible, future::Future, sync::Arc};

use axum::{
    Router,
    error_handling::HandleErrorLayer,
    extract::DefaultBodyLimit,
    routing::{get, post},
};
use clima_telemetry::layers::HttpServerLayer;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::validate_request::ValidateRequestHeaderLayer;

pub use config::{
    ApiConfig, DEFAULT_BATCH_IN_FLIGHT, DEFAULT_BATCH_MAX_TWEETS, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_MAX_TWEETS, DEFAULT_REQUEST_TIMEOUT, DEFAULT_WRITER_TIMEOUT,
    DEFAULT_WRITERS,
};
pub use error::ApiError;
pub use writers::Writers;

#[derive(Clone)]
struct AppState {
    writers: Arc<Writers>,
    /// Group commit of concurrent requests into shared writer calls.
    batcher: Arc<batcher::Batcher>,
    config: Arc<ApiConfig>,
}

/// The HTTP routes, ready to serve. Must be called within a Tokio runtime
/// (it starts the batcher's task).
pub fn router(config: ApiConfig) -> Result<Router, ApiError> {
    let writers = Arc::new(Writers::new(
        &config.writers,
        config.writer_timeout,
        config.writer_tls()?,
        config.resolved_writer_api_key()?,
    )?);
    // What `POST /input` may cost: beyond --max-concurrent-requests a request
    // is shed at once with 503, so memory stays bounded under overload. (The
    // handler applies --request-timeout itself: its answer, 408 or 503,
    // depends on whether the tweets had reached the writers.)
    let shedding = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(limits::overloaded))
        .load_shed()
        .concurrency_limit(config.max_concurrent_requests);
    // The key check is a layer of its own, outside: tower readies a stack
    // all the way down before its first layer sees the request, so inside
    // one stack a request without the key would hold a slot while refused.
    let input = post(input::post_input)
        .layer::<_, Infallible>(shedding)
        .layer::<_, Infallible>(ValidateRequestHeaderLayer::custom(limits::RequireApiKey(config.resolved_api_key()?)))
        .layer::<_, Infallible>(DefaultBodyLimit::max(config.max_body_bytes));
    let batcher =
        Arc::new(batcher::Batcher::start(Arc::clone(&writers), config.batch_max_tweets, config.batch_in_flight));
    let state = AppState { writers, batcher, config: Arc::new(config) };
    Ok(Router::new()
        .route("/input", input)
        .route("/healthz", get(input::healthz))
        .route("/readyz", get(input::readyz))
        .layer(HttpServerLayer)
        .with_state(state))
}

/// The API built from its config, ready to serve: building checks the
/// writers' endpoints, TLS and key files, so a bad one fails before serving.
pub struct Api {
    app: Router,
    limits: clima_http::ConnectionLimits,
}

impl Api {
    /// The routes (see [`router`]) and the connection limits of `config`.
    /// Must be called within a Tokio runtime.
    pub fn new(config: ApiConfig) -> Result<Self, ApiError> {
        let limits = config.connection_limits();
        Ok(Self { app: router(config)?, limits })
    }

    /// Serves on `listener` until `shutdown` resolves, then lets in-flight
    /// requests finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ApiError> {
        tracing::info!(address = ?listener.local_addr().ok(), "api listening");
        clima_http::serve(listener, self.app, self.limits, shutdown).await.map_err(ApiError::Serve)
    }
}

/// Builds the API from `config` and serves it on `listener` until `shutdown`
/// resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    config: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    Api::new(config)?.serve(listener, shutdown).await
}
