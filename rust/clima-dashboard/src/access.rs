//! Who may read the dashboard.

use axum::{
    Json,
    body::Body,
    http::{HeaderValue, Request, StatusCode, header},
    response::{IntoResponse, Response},
};
use clima_http::{auth::ApiKey, tls::TlsAcceptor};
use tower_http::validate_request::{ValidateRequest, ValidateRequestHeaderLayer};

/// TLS and API-key settings of the dashboard's port; the default is open,
/// plain HTTP, as on a developer's machine.
#[derive(Clone, Default)]
pub struct Access {
    /// Serve TLS only (HTTP/1.1 and HTTP/2 by ALPN), with these files.
    pub tls: Option<TlsAcceptor>,
    /// The key every request but the probes and reflection needs.
    pub api_key: Option<ApiKey>,
}

impl Access {
    /// The key check: 401 (or gRPC UNAUTHENTICATED) to requests without the key.
    pub(crate) fn key_check(&self) -> ValidateRequestHeaderLayer<RequireKey> {
        ValidateRequestHeaderLayer::custom(RequireKey(self.api_key.clone()))
    }
}

/// What [`Access::key_check`] validates.
#[derive(Clone)]
pub(crate) struct RequireKey(Option<ApiKey>);

impl<B> ValidateRequest<B> for RequireKey {
    type ResponseBody = Body;

    fn validate(&mut self, request: &mut Request<B>) -> Result<(), Response> {
        match &self.0 {
            Some(key) if !is_open(request.uri().path()) && !key.is_presented(request.headers()) => {
                Err(unauthorized(request))
            }
            _ => Ok(()),
        }
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

/// Whether a request is a gRPC call (by its content type).
pub(crate) fn is_grpc(headers: &axum::http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// 401 with a JSON body, or UNAUTHENTICATED to a gRPC call.
fn unauthorized<B>(request: &Request<B>) -> Response {
    if is_grpc(request.headers()) {
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
