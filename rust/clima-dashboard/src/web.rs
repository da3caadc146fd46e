use std::convert::Infallible;

use axum::{
    Json, Router,
    extract::{Query, State},
    response::{
        Html, IntoResponse,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use clima_proto::v1::{GetStatsResponse, WatchStatsResponse};
use futures::StreamExt;
use serde::Deserialize;

use crate::{
    Stores,
    stats_service::{snapshots, watch_interval},
};

/// The page: HTML, CSS and JavaScript in one file, built into the binary.
const INDEX_HTML: &str = include_str!("../assets/index.html");

#[derive(Deserialize)]
struct StatsQuery {
    #[serde(default)]
    minutes: u32,
    #[serde(default)]
    interval_ms: u32,
}

pub(crate) fn router(stores: Stores) -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/stats", get(stats))
        .route("/api/stats/stream", get(stream))
        .with_state(stores)
}

/// A path no route has: gRPC's UNIMPLEMENTED to a gRPC client, else 404 JSON.
pub(crate) async fn unmatched(request: axum::extract::Request) -> axum::response::Response {
    if crate::access::is_grpc(request.headers()) {
        return tonic::Status::unimplemented(format!("no method {}", request.uri().path())).into_http();
    }
    let body = serde_json::json!({"error": "not_found", "message": format!("no route for {}", request.uri().path())});
    (axum::http::StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// `GET /api/stats?minutes=N`: a `clima.v1.GetStatsResponse` as proto3 JSON.
async fn stats(State(stores): State<Stores>, Query(query): Query<StatsQuery>) -> impl IntoResponse {
    Json(GetStatsResponse { snapshot: Some(stores.snapshot(query.minutes).await) })
}

/// `GET /api/stats/stream?minutes=N&interval_ms=M`: server-sent events, each
/// a `clima.v1.WatchStatsResponse` as proto3 JSON.
async fn stream(State(stores): State<Stores>, Query(query): Query<StatsQuery>) -> impl IntoResponse {
    let events = snapshots(stores, query.minutes, watch_interval(query.interval_ms)).map(|snapshot| {
        let message = WatchStatsResponse { snapshot: Some(snapshot) };
        Ok::<_, Infallible>(Event::default().event("stats").json_data(message).unwrap_or_default())
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
