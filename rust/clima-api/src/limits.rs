//! What `POST /input` checks before its handler runs (see `router`).

use axum::{
    BoxError,
    body::Body,
    http::{Request, Response},
    response::IntoResponse,
};
use clima_http::auth::ApiKey;
use tower_http::validate_request::ValidateRequest;

use crate::ApiError;

/// Refuses a request without the key, if one is required (401, JSON body).
#[derive(Clone)]
pub(crate) struct RequireApiKey(pub(crate) Option<ApiKey>);

impl<B> ValidateRequest<B> for RequireApiKey {
    type ResponseBody = Body;

    fn validate(&mut self, request: &mut Request<B>) -> Result<(), Response<Body>> {
        match &self.0 {
            Some(key) if !key.is_presented(request.headers()) => Err(ApiError::Unauthorized.into_response()),
            _ => Ok(()),
        }
    }
}

/// The answer to a request the concurrency limit shed (`load_shed`'s only error).
pub(crate) async fn overloaded(_: BoxError) -> ApiError {
    ApiError::Overloaded
}
