use std::{future::Future, time::Duration};

use axum::{Router, http::StatusCode, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::readiness::Readiness;

/// 200 "ready", or 503 "not ready:" and the unmet conditions.
fn readyz(readiness: &Readiness) -> (StatusCode, String) {
    let unmet = readiness.unmet();
    if unmet.is_empty() {
        return (StatusCode::OK, "ready".to_owned());
    }
    let names: Vec<&str> = unmet.into_iter().map(crate::readiness::Condition::as_str).collect();
    (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}", names.join(", ")))
}

/// Serves `GET /metrics` (Prometheus text format), `GET /healthz` (the
/// process runs) and `GET /readyz` (`readiness`: 200, or 503) on `listener`
/// until `shutdown` resolves. Kept off the service's own port so that an
/// ingress exposing the API never exposes its metrics.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Histograms are folded into their buckets on upkeep; without it they would
    // grow between scrapes.
    let upkeep = tokio::spawn({
        let metrics = metrics.clone();
        async move {
            let mut interval = tokio::time::interval(Duration::from_secs(5));
            loop {
                interval.tick().await;
                metrics.run_upkeep();
            }
        }
    });
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(metrics.render())))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(move || std::future::ready(readyz(&readiness))));
    tracing::info!(address = ?listener.local_addr().ok(), "admin server listening (/metrics, /healthz, /readyz)");
    let result = clima_http::serve(listener, app, clima_http::ConnectionLimits::default(), shutdown).await;
    upkeep.abort();
    result
}
