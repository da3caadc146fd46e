//! `clima writer`: a gRPC service that publishes tweets durably to one broker.
//!
//! - [`service`]: the `clima.v1.WriterService` implementation (validation,
//!   then the sink; a reply only after the broker acknowledged).
//! - [`server`]: the tonic server with reflection (v1 and v1alpha) and the
//!   standard health service, whose status follows the broker's.
//! - [`sinks`]: one module per broker, each with its `config`, `sink` and `tests`.

/// The tonic server: reflection, health, TLS and the API key.
pub mod server;
/// The `clima.v1.WriterService` implementation over a [`Sink`].
pub mod service;
pub mod sinks;

pub use server::{DEFAULT_HEALTH_INTERVAL, DEFAULT_MAX_RECORDS, ServeError, ServerConfig, serve, serve_reporting};
pub use sinks::{Sink, SinkError};
