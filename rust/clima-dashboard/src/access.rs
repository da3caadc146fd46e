//! Who may read the dashboard.

use axum::{
    Json, Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use clima_http::{auth::ApiKey, tls::TlsAcceptor};

/// TLS and API-key settings of the dashboard's port; the default is open,
/// plain HTTP, as on a developer's machine.
#[derive(Clone, Default)]
pub struct Access {
    pub tls: Option<TlsAcceptor>,
    pub api_key: Option<ApiKey>,
}

impl Access {
    /// `app`, answering 401 (or gRPC UNAUTHENTICATED) to requests without the key.
    pub(crate) fn guard(&self, app: Router) -> Router {
        app.layer(axum::middleware::from_fn_with_state(self.api_key.clone(), require_key))
    }
}

/// Probes and reflection answer without a key: kubelets and grpcurl have none,
/// and neither tells anything about the counts.
fn is_open(path: &str) -> bool {
    path == "/healthz"
        || path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

async fn require_key(State(api_key): State<Option<ApiKey>>, request: Request, next: Next) -> Response {
    let Some(key) = api_key else { return next.run(request).await };
    if is_open(request.uri().path()) || key.is_presented(request.headers()) {
        return next.run(request).await;
    }
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"));
    if is_grpc {
        return tonic::Status::unauthenticated("a valid API key is required (authorization: Bearer <key>)")
            .into_http::<Body>();
    }
    let body = serde_json::json!({
        "error": "unauthorized",
        "message": "a valid API key is required (Authorization: Bearer <key>, X-Api-Key: <key>, or the key as a Basic password)",
    });
    let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    // A browser asks for the key once and sends it with the page's feed requests too.
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Basic realm="clima dashboard", charset="UTF-8""#),
    );
    response
}
