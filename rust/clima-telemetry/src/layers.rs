//! Instrumentation as tower layers: each request a service serves or makes
//! gets its span and its RED metrics (rate, errors, duration) from one layer,
//! so no handler times itself or spells a metric.
//!
//! - [`HttpServerLayer`]: axum routes; labels by route template.
//! - [`GrpcServerLayer`]: every gRPC service of a server; labels by service,
//!   method and status code, read from the response's trailers.
//! - [`GrpcClientLayer`]: a channel to one target; the call's span is the
//!   caller's child and its context travels in the request's headers.
//!
//! tower-http's `TraceLayer` was the first choice; its callbacks are shared by
//! every request and get no per-request state, so they cannot label a metric
//! by the route or method of the request they answer. These layers keep that
//! state in their (unboxed) futures and response bodies instead.

mod grpc;
mod http_server;

pub use grpc::{GrpcBody, GrpcClient, GrpcClientLayer, GrpcResponseFuture, GrpcServer, GrpcServerLayer, LinkedSpans};
pub use http_server::{HttpResponseFuture, HttpServer, HttpServerLayer};

#[cfg(test)]
mod tests;
