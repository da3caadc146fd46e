//! End-to-end tests: the API, both writers and both consumers run in this
//! process on ephemeral ports, against the real Kafka-protocol broker,
//! RabbitMQ, Redis and Valkey of the local stack (`ci/test` starts them).

mod api_errors;
mod helpers;
mod pipeline;
mod reflection;
