//! `clima`: every Tweets del Clima service in one binary, a subcommand each.
//!
//! The binary (`main.rs`) only picks the allocator and calls [`run`]. Tests
//! start services in-process the same way through [`Service::build`]: the
//! same flags, env vars, startup and admin server as the binary.

mod commands;
mod deprecated;
mod flags;
mod sampling;
mod service;
mod shutdown;
mod telemetry;

use clap::{Parser, Subcommand};

pub use service::Service;

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
    /// gRPC writer: publishes tweets durably to Kafka (`writer kafka`) or RabbitMQ (`writer rabbitmq`).
    Writer(commands::writer::WriterArgs),
    /// Consumer: counts tweets from Kafka into Redis (`consumer kafka`), or from RabbitMQ into Valkey (`consumer rabbitmq`).
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
    /// Raw ceilings of the services clima runs on (plain clients at their best), as JSON lines.
    Bench(commands::bench::BenchArgs),
    /// Prints every command's flags with their env vars and defaults, as JSON
    /// (what ci/check_k8s.py checks the manifests against).
    #[command(hide = true)]
    CliSpec,
}

impl Command {
    /// The OpenTelemetry service name of the long-running services.
    fn service_name(&self) -> Option<&'static str> {
        match self {
            Self::Api(_) => Some("clima-api"),
            Self::Writer(args) => Some(args.service_name()),
            Self::Consumer(args) => Some(args.service_name()),
            Self::Dashboard(_) => Some("clima-dashboard"),
            Self::Load(_) | Self::Stats(_) | Self::Recount(_) | Self::KafkaAcls(_) | Self::Bench(_) | Self::CliSpec => {
                None
            }
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

/// `clima` with the process's command line: parses it, sets up telemetry,
/// and runs the command until it ends or, for a service, until SIGINT/SIGTERM.
pub async fn run() -> anyhow::Result<()> {
    let (argv, deprecation) = deprecated::upgrade(std::env::args_os().collect(), |name| std::env::var(name).ok());
    let cli = Cli::parse_from(argv);
    let telemetry = telemetry::init(&cli.telemetry, cli.command.service_name(), cli.command.trusts_callers_sampling())?;
    if let Some(deprecation) = deprecation {
        tracing::warn!("{deprecation}");
    }
    let result = match cli.command {
        command @ (Command::Api(_) | Command::Writer(_) | Command::Consumer(_) | Command::Dashboard(_)) => {
            match Service::start(command, shutdown::on_signal()).await {
                Ok(service) => service.run_until_stopped().await,
                Err(error) => Err(error),
            }
        }
        Command::Load(args) => commands::load::run(args).await,
        Command::Stats(args) => commands::stats::run(args).await,
        Command::Recount(args) => commands::recount::run(args).await,
        Command::KafkaAcls(args) => commands::kafka_acls::run(args),
        Command::Bench(args) => commands::bench::run(args).await,
        Command::CliSpec => {
            use clap::CommandFactory;
            println!("{}", serde_json::to_string_pretty(&cli_spec(Cli::command()))?);
            Ok(())
        }
    };
    if let Err(error) = &result {
        tracing::error!("{error:#}");
    }
    telemetry.shutdown();
    result
}

/// `clima cli-spec`: for every command path that runs something (`api`,
/// `writer kafka`, ...), its long flags, each with its env var and default
/// (several defaults joined with commas, as the env var takes them). Global
/// flags are listed under every command, as `--help` shows them.
fn cli_spec(cli: clap::Command) -> serde_json::Value {
    let spec: serde_json::Map<_, _> = command_paths(cli)
        .into_iter()
        .map(|(path, command)| {
            let flags: serde_json::Map<_, _> = command
                .get_arguments()
                .filter_map(|arg| {
                    let long = arg.get_long()?;
                    let defaults: Vec<_> =
                        arg.get_default_values().iter().map(|value| value.to_string_lossy().into_owned()).collect();
                    let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
                    let default = (!defaults.is_empty()).then(|| defaults.join(","));
                    Some((format!("--{long}"), serde_json::json!({ "env": env, "default": default })))
                })
                .collect();
            (path, flags.into())
        })
        .collect();
    spec.into()
}

/// Every command users run, by its path (`api`, `writer kafka`), nested
/// subcommands included; not the hidden ones, nor clap's generated `help`.
/// Built first, so the global flags (--log, --log-format) are in each.
fn command_paths(mut cli: clap::Command) -> Vec<(String, clap::Command)> {
    fn walk(path: &str, command: &clap::Command, found: &mut Vec<(String, clap::Command)>) {
        let runnable = |subcommand: &&clap::Command| !subcommand.is_hide_set() && subcommand.get_name() != "help";
        for subcommand in command.get_subcommands().filter(runnable) {
            let path = format!("{path} {}", subcommand.get_name()).trim().to_owned();
            found.push((path.clone(), subcommand.clone()));
            walk(&path, subcommand, found);
        }
    }
    cli.build();
    let mut found = Vec::new();
    walk("", &cli, &mut found);
    found
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    fn commands() -> Vec<(String, clap::Command)> {
        super::command_paths(super::Cli::command())
    }

    #[test]
    fn cli_is_consistent_and_every_flag_has_an_env_var() {
        super::Cli::command().debug_assert();
        let paths: Vec<_> = commands().into_iter().map(|(path, _)| path).collect();
        assert!(
            paths.contains(&"writer rabbitmq".to_owned()) && paths.contains(&"consumer kafka".to_owned()),
            "{paths:?}"
        );
        for (path, command) in commands() {
            for arg in command.get_arguments() {
                if arg.get_long().is_some() && !matches!(arg.get_id().as_str(), "help" | "version") {
                    assert!(
                        arg.get_env().is_some(),
                        "clima {path} --{} has no environment variable",
                        arg.get_long().unwrap()
                    );
                }
            }
        }
    }

    #[test]
    fn the_cli_spec_lists_each_broker_commands_own_flags_with_env_and_default() {
        use clap::CommandFactory;
        let spec = super::cli_spec(super::Cli::command());
        let kafka_writer = &spec["writer kafka"];
        assert_eq!(kafka_writer["--kafka-topic"]["env"], "CLIMA_KAFKA_TOPIC");
        assert_eq!(kafka_writer["--kafka-topic"]["default"], clima_broker::kafka::DEFAULT_TOPIC);
        assert_eq!(kafka_writer["--log-format"]["env"], "CLIMA_LOG_FORMAT", "global flags are listed too");
        assert!(kafka_writer.get("--rabbitmq-exchange").is_none());
        assert_eq!(spec["api"]["--writer"]["default"], clima_api::DEFAULT_WRITERS.join(","));
        assert_eq!(spec["consumer rabbitmq"]["--batch-linger"]["default"], "10ms");
        assert!(spec.get("cli-spec").is_none() && spec.get("writer help").is_none(), "{spec:#}");
    }

    /// The deprecated `--sink`/`--source` spellings still parse, as the broker subcommand.
    #[test]
    fn the_deprecated_spellings_still_run_the_broker_subcommand() {
        use clap::Parser;
        let argv = ["clima", "consumer", "--source", "kafka", "--kafka-group", "g"].map(std::ffi::OsString::from);
        let (argv, warning) = super::deprecated::upgrade(argv.to_vec(), |_| None);
        assert!(warning.is_some());
        let cli = super::Cli::try_parse_from(argv).unwrap();
        assert_eq!(cli.command.service_name(), Some("clima-consumer-kafka"));
    }

    /// Each broker's writer and consumer take that broker's flags and no other's.
    #[test]
    fn a_broker_subcommand_refuses_the_other_brokers_flags() {
        use clap::Parser;
        for argv in [
            &["clima", "writer", "kafka", "--rabbitmq-exchange", "x"][..],
            &["clima", "writer", "rabbitmq", "--kafka-topic", "x"],
            &["clima", "consumer", "kafka", "--rabbitmq-prefetch", "5"],
            &["clima", "consumer", "rabbitmq", "--kafka-group", "x"],
        ] {
            let error = super::Cli::try_parse_from(argv).expect_err("a flag of the other broker");
            assert_eq!(error.kind(), clap::error::ErrorKind::UnknownArgument, "{argv:?}");
        }
        for argv in [
            &["clima", "writer", "kafka", "--kafka-topic", "x"][..],
            &["clima", "consumer", "rabbitmq", "--rabbitmq-prefetch", "5"],
        ] {
            super::Cli::try_parse_from(argv).unwrap_or_else(|error| panic!("{argv:?}: {error}"));
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
        for (path, command) in commands() {
            for arg in command.get_arguments() {
                let Some(env) = arg.get_env().and_then(|env| env.to_str()) else { continue };
                if is_secret(env) {
                    secrets += 1;
                    assert!(arg.is_hide_env_values_set(), "clima {path} --help would print {env}'s value");
                }
            }
        }
        assert!(secrets >= 6, "the rule found only {secrets} secret-bearing flags");
    }

    /// `--help` shows a default for --writer, so running without it must work.
    #[test]
    fn every_service_starts_from_its_defaults() {
        use clap::Parser;
        for argv in [
            &["clima", "api"][..],
            &["clima", "dashboard"],
            &["clima", "writer", "kafka"],
            &["clima", "consumer", "rabbitmq"],
        ] {
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
