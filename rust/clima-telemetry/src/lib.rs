//! Observability plumbing shared by every clima service.
//!
//! - [`propagation`]: W3C trace context (`traceparent`, `tracestate`,
//!   `baggage`) in and out of HTTP headers and gRPC metadata; the Kafka and
//!   AMQP carriers live beside their brokers in `clima-broker`.
//! - [`admin`]: the admin HTTP server every service runs: Prometheus
//!   `/metrics`, `/healthz` and `/readyz` (from [`readiness`]).
//!
//! Installing the tracer provider and the metrics recorder is the binary's job
//! (`rust/clima/src/telemetry.rs`); libraries only emit `tracing` spans and
//! `metrics` samples.

/// The admin HTTP server: `/metrics`, `/healthz`, `/readyz`.
pub mod admin;
pub mod events;
pub mod layers;
/// W3C trace context in and out of headers, metadata and records.
pub mod propagation;
pub mod readiness;
