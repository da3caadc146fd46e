use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// Every error the API answers with; all are JSON:
/// `{"error": "<code>", "message": "...", "field": "<JSON path>"}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `invalid_json`: the body is not JSON, or not a tweet's shape.
    #[error("{message}")]
    InvalidJson {
        /// JSON path of the offending value, when known.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// 422 `invalid_tweet`: well-formed, but breaks a tweet's rules.
    #[error("{message}")]
    InvalidTweet {
        /// JSON path of the offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// 400 `bad_request`: anything else wrong with the request.
    #[error("{0}")]
    BadRequest(String),
    /// 415: the body is not declared `application/json`.
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// 413: over --max-body-bytes or --max-tweets.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 503 `unavailable`: a writer did not confirm, or the API is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// 503 `overloaded`: shed beyond --max-concurrent-requests.
    #[error("the server is at its limit of concurrent requests; retry shortly")]
    Overloaded,
    /// 408: --request-timeout passed before any tweet was handed on.
    #[error("the request took longer than {0:?}; none of its tweets was forwarded")]
    RequestTimeout(std::time::Duration),
    /// 503 `timeout_after_handoff`: --request-timeout passed after the tweets
    /// were handed to the writers.
    #[error(
        "the request took longer than {0:?} after its tweets were handed to the writers; they may still be \
         counted, so retry with the same Idempotency-Key"
    )]
    TimedOutAfterHandOff(std::time::Duration),
    /// At startup: a --writer endpoint that is not a valid URI, or TLS
    /// settings tonic refused for it.
    #[error("invalid writer endpoint {endpoint:?}: {source}")]
    WriterEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why tonic refused it.
        #[source]
        source: tonic::transport::Error,
    },
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Serve(#[source] std::io::Error),
    /// 401: the API key is required and was not presented.
    #[error("a valid API key is required (Authorization: Bearer <key> or X-Api-Key: <key>)")]
    Unauthorized,
    /// At startup: a TLS or key file could not be read.
    #[error("reading {path:?}: {source}")]
    ReadFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// At startup: the API key is not usable.
    #[error(transparent)]
    ApiKey(#[from] clima_http::auth::ApiKeyError),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidJson { .. } => (StatusCode::BAD_REQUEST, "invalid_json"),
            Self::InvalidTweet { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_tweet"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::TimedOutAfterHandOff(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout_after_handoff"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::WriterEndpoint { .. } | Self::Serve(_) | Self::ReadFile { .. } | Self::ApiKey(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

impl ApiError {
    /// The stable error code of the JSON body (also a bounded metric label).
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = self.status_and_code();
        let field = match &self {
            Self::InvalidJson { field, .. } => field.as_deref(),
            Self::InvalidTweet { field, .. } => Some(field.as_str()),
            _ => None,
        };
        let body = ErrorBody { error, message: self.to_string(), field };
        if matches!(self, Self::Unauthorized) {
            return (status, [(axum::http::header::WWW_AUTHENTICATE, "Bearer")], Json(body)).into_response();
        }
        (status, Json(body)).into_response()
    }
}
