//! Per-request span and metrics for the HTTP API.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use clima_telemetry::propagation::{self, HeaderExtractor};
use tracing::{Instrument, field::Empty};

use crate::{ApiError, AppState};

/// Bounds what `POST /input` may cost: requests beyond --max-concurrent-requests
/// are shed at once with 503 (memory stays bounded under overload). The
/// handler applies --request-timeout itself, as its answer depends on whether
/// the tweets had been handed to the writers.
pub(crate) async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key
        && !key.is_presented(request.headers())
    {
        return ApiError::Unauthorized.into_response();
    }
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        return ApiError::Overloaded.into_response();
    };
    next.run(request).await
}

/// Wraps every request: a server span that joins the caller's trace
/// (`traceparent` honoured), and `http_server_*` metrics by route and status.
pub(crate) async fn observe(route: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    // Bounded label: the route template, never the raw path.
    let route = route.map_or_else(|| "unmatched".to_owned(), |route| route.as_str().to_owned());
    // Probes would flood the trace store; they still get metrics.
    let span = if matches!(route.as_str(), "/healthz" | "/readyz") {
        tracing::Span::none()
    } else {
        tracing::info_span!(
            "http.server",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = %method,
            http.route = %route,
            url.path = %request.uri().path(),
            http.response.status_code = Empty,
            clima.tweets = Empty,
        )
    };
    propagation::set_parent(&span, &HeaderExtractor(request.headers()));

    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    clima_telemetry::events::http_request_served(method.as_str(), &route, status.as_u16(), started.elapsed());
    response
}
