//! Logging: structured JSON for machines or pretty text for people.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct TelemetryArgs {
    /// Log line format.
    #[arg(long, global = true, env = "CLIMA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. "info,clima_consumer=debug".
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    log: String,
}

pub fn init(args: &TelemetryArgs) {
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|error| {
        eprintln!("invalid --log filter {:?} ({error}); using \"info\"", args.log);
        EnvFilter::new("info")
    });
    let registry = tracing_subscriber::registry().with(filter);
    match args.log_format {
        LogFormat::Pretty => registry.with(fmt::layer().with_writer(std::io::stderr)).init(),
        LogFormat::Json => registry.with(fmt::layer().json().with_writer(std::io::stderr)).init(),
    }
}
