//! End-to-end tests against the real Kafka-protocol broker, RabbitMQ, Redis
//! and Valkey of the local stack (`ci/test` starts them). `helpers::TestStack`
//! runs the services in this process, each started by the binary's own startup
//! code (`clima::Service::build`); `processes::ProcessStack` runs the real
//! `clima` binary, one process per service, as a user would.

mod api_errors;
mod dashboard;
mod helpers;
mod load_schedule;
mod observability;
mod pipeline;
mod processes;
mod reflection;
mod replicas;
mod tls;
