//! `clima`: every Tweets del Clima service in one binary, a subcommand each.

mod commands;
mod flags;
mod sampling;
mod shutdown;
mod telemetry;

use clap::{Parser, Subcommand};

/// mimalloc: per-request allocations were a sixth of the API's CPU time with
/// glibc's malloc (perf, ci/bench), and it returns memory to the system sooner.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tweets del Clima: weather reports over HTTP, published to Kafka and
/// RabbitMQ, counted exactly once in Redis and Valkey.
///
/// Every flag also reads the environment variable shown in its help.
#[derive(Debug, Parser)]
#[command(name = "clima", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    telemetry: telemetry::TelemetryArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// HTTP ingress: POST /input, fanned out to every writer over gRPC.
    Api(commands::api::ApiArgs),
    /// gRPC writer: publishes tweets durably to Kafka or RabbitMQ.
    Writer(commands::writer::WriterArgs),
    /// Consumer: counts tweets from Kafka into Redis, or from RabbitMQ into Valkey.
    Consumer(commands::consumer::ConsumerArgs),
    /// Live dashboard: a web page, its JSON/SSE feed and the gRPC StatsService.
    Dashboard(commands::dashboard::DashboardArgs),
    /// Load generator: sends tweets to POST /input and can verify they were counted.
    Load(commands::load::LoadArgs),
    /// Prints the counts in Redis and Valkey side by side.
    Stats(commands::stats::StatsArgs),
    /// Rebuilds the Redis counts from the Kafka log into fresh keys and compares them with the live ones.
    Recount(commands::recount::RecountArgs),
    /// Prints the Kafka ACLs the writer and the consumers need (a Strimzi KafkaUser's `acls`).
    KafkaAcls(commands::kafka_acls::KafkaAclsArgs),
}

impl Command {
    /// The OpenTelemetry service name of the long-running services.
    fn service_name(&self) -> Option<&'static str> {
        match self {
            Self::Api(_) => Some("clima-api"),
            Self::Writer(args) => Some(args.service_name()),
            Self::Consumer(args) => Some(args.service_name()),
            Self::Dashboard(_) => Some("clima-dashboard"),
            Self::Load(_) | Self::Stats(_) | Self::Recount(_) | Self::KafkaAcls(_) => None,
        }
    }

    /// Whether a remote parent's sampled flag decides: the API's callers are
    /// clients, trusted only on request; every other service's are clima's own.
    fn trusts_callers_sampling(&self) -> bool {
        match self {
            Self::Api(args) => args.trust_client_sampling,
            _ => true,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = telemetry::init(&cli.telemetry, cli.command.service_name(), cli.command.trusts_callers_sampling())?;
    let result = match cli.command {
        Command::Api(args) => commands::api::run(args).await,
        Command::Writer(args) => commands::writer::run(args).await,
        Command::Consumer(args) => commands::consumer::run(args).await,
        Command::Dashboard(args) => commands::dashboard::run(args).await,
        Command::Load(args) => commands::load::run(args).await,
        Command::Stats(args) => commands::stats::run(args).await,
        Command::Recount(args) => commands::recount::run(args).await,
        Command::KafkaAcls(args) => commands::kafka_acls::run(args),
    };
    if let Err(error) = &result {
        tracing::error!("{error:#}");
    }
    telemetry.shutdown();
    result
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_every_flag_has_an_env_var() {
        let command = super::Cli::command();
        command.clone().debug_assert();
        for subcommand in command.get_subcommands() {
            for arg in subcommand.get_arguments() {
                if arg.get_long().is_some() && !matches!(arg.get_id().as_str(), "help" | "version") {
                    assert!(
                        arg.get_env().is_some(),
                        "clima {} --{} has no environment variable",
                        subcommand.get_name(),
                        arg.get_long().unwrap()
                    );
                }
            }
        }
    }

    /// Secrets travel in URLs (`redis://:password@…`), client options
    /// (`sasl.password=…`) and keys: `--help` must not print their values.
    #[test]
    fn flags_that_can_carry_secrets_hide_their_env_values() {
        let is_secret = |env: &str| {
            env.ends_with("_URL") || env.ends_with("_OPTIONS") || env.ends_with("API_KEY") || env.contains("PASSWORD")
        };
        let mut secrets = 0;
        for subcommand in super::Cli::command().get_subcommands() {
            for arg in subcommand.get_arguments() {
                let Some(env) = arg.get_env().and_then(|env| env.to_str()) else { continue };
                if is_secret(env) {
                    secrets += 1;
                    assert!(
                        arg.is_hide_env_values_set(),
                        "clima {} --help would print {env}'s value",
                        subcommand.get_name()
                    );
                }
            }
        }
        assert!(secrets >= 6, "the rule found only {secrets} secret-bearing flags");
    }

    /// `--help` shows a default for --writer, so running without it must work.
    #[test]
    fn every_service_starts_from_its_defaults() {
        use clap::Parser;
        for argv in [&["clima", "api"][..], &["clima", "dashboard"], &["clima", "writer", "--sink", "kafka"]] {
            if let Err(error) = super::Cli::try_parse_from(argv) {
                panic!("{argv:?}: {error}");
            }
        }
        let api = super::Cli::try_parse_from(["clima", "api"]).unwrap();
        let super::Command::Api(args) = api.command else { panic!("not the api") };
        let config = clima_api::ApiConfig::from(args.config);
        assert_eq!(config.writers.len(), 2, "{:?}", config.writers);
    }
}
