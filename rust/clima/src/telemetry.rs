//! Logs, traces and metrics of a clima process.
//!
//! Traces follow the standard OpenTelemetry environment variables:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) turns on OTLP/gRPC
//! export; `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER(_ARG)` (at the API, a client's sampled flag counts
//! only with `--trust-client-sampling`), `OTEL_BSP_*` and `OTEL_SDK_DISABLED=true`
//! work as the specification says. With no endpoint configured nothing
//! OpenTelemetry runs at all: no export cost, and no trace context forwarded.

use std::net::SocketAddr;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::{global, trace::TracerProvider};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{EnvFilter, Layer, prelude::*};

use crate::sampling::IngressSampler;
pub(crate) use clima_telemetry::readiness::Readiness;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, clap::Args)]
pub(crate) struct TelemetryArgs {
    /// Log line format; JSON lines carry trace_id and span_id when traces are on.
    #[arg(long, global = true, env = "CLIMA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. "info,clima_consumer=debug".
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    log: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct AdminArgs {
    /// Address of the admin HTTP server: Prometheus /metrics and /healthz
    /// [default: 127.0.0.1:9100 api, :9101 kafka writer, :9102 rabbitmq writer, :9105 dashboard,
    /// :9103 kafka consumer, :9104 rabbitmq consumer].
    #[arg(id = "admin_listen", long = "admin-listen", value_name = "ADDRESS", env = "CLIMA_ADMIN_LISTEN")]
    pub listen: Option<SocketAddr>,
}

/// Buckets of every latency histogram, in seconds.
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// What must be flushed before the process exits.
pub(crate) struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered.
    pub(crate) fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {error}");
        }
    }
}

/// Installs logging, and for a service (`service_name`) the tracer provider;
/// `trust_remote_sampling` as in [`IngressSampler`].
pub(crate) fn init(
    args: &TelemetryArgs,
    service_name: Option<&str>,
    trust_remote_sampling: bool,
) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(&args.log).with_context(|| format!("invalid --log filter {:?}", args.log))?;
    let tracer_provider = service_name.map(|name| tracer_provider(name, trust_remote_sampling)).transpose()?.flatten();
    // Each span pays for these whether it is sampled or not, and async spans
    // are entered on every poll: no busy/idle times and no OpenTelemetry
    // context activation on enter (clima reads a span's context explicitly),
    // no thread or source-location attributes (ci/bench: the cost of tracing).
    let otel_layer = tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("clima"))
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_threads(false)
            .with_location(false)
            .boxed()
    });
    let fmt_layer = match args.log_format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => {
            let mut layer = json_subscriber::fmt::layer().with_writer(std::io::stderr).flatten_event(true);
            layer = layer.with_current_span(false).with_span_list(false).with_opentelemetry_ids(true);
            layer.boxed()
        }
    };
    // Without traces, log lines carry no span ids, so the log layer takes
    // events only: every per-request and per-tweet span is then disabled and
    // costs next to nothing (ci/bench measures the difference).
    let fmt_layer = if tracer_provider.is_some() {
        fmt_layer
    } else {
        fmt_layer.with_filter(tracing_subscriber::filter::filter_fn(|metadata| metadata.is_event())).boxed()
    };
    tracing_subscriber::registry().with(filter).with(otel_layer).with(fmt_layer).init();
    log_panics();
    Ok(Telemetry { tracer_provider })
}

/// A panic, in any thread or task, is logged at ERROR with its message and
/// place before the default hook prints it to stderr: a service's log (JSON
/// in k8s) then says why it stopped, in its own format.
fn log_panics() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |panic| {
        let location = panic.location().map(ToString::to_string).unwrap_or_default();
        let message = panic
            .payload()
            .downcast_ref::<&str>()
            .map(|message| (*message).to_owned())
            .or_else(|| panic.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(%location, "panicked: {message}");
        default_hook(panic);
    }));
}

fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|set| set.trim().eq_ignore_ascii_case(value))
}

/// The tracer provider, if an OTLP endpoint is configured and the SDK is not disabled.
fn tracer_provider(service_name: &str, trust_remote_sampling: bool) -> anyhow::Result<Option<SdkTracerProvider>> {
    let endpoint_set = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|value| !value.is_empty()));
    if !endpoint_set || env_is("OTEL_SDK_DISABLED", "true") || env_is("OTEL_TRACES_EXPORTER", "none") {
        return Ok(None);
    }
    // W3C trace context only. No baggage: nothing in clima reads it, and a
    // client's baggage would otherwise ride along on every writer call.
    global::set_text_map_propagator(TraceContextPropagator::new());
    // The builder reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; ours is only the default.
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name.to_owned());
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build().context("OTLP exporter")?;
    // `Config::default()` is the sampler OTEL_TRACES_SAMPLER(_ARG) configure.
    let sampler = IngressSampler::new(opentelemetry_sdk::trace::Config::default().sampler, trust_remote_sampling);
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_sampler(sampler)
        .with_batch_exporter(exporter)
        .build();
    global::set_tracer_provider(provider.clone());
    Ok(Some(provider))
}

/// Installs the Prometheus recorder and starts the admin server on `listen`,
/// its `/readyz` answering from `readiness`; returns the address it serves on.
pub(crate) async fn serve_admin(
    listen: SocketAddr,
    readiness: Readiness,
    shutdown: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let metrics = metrics_recorder()?;
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding the admin server to {listen}"))?;
    let address = listener.local_addr()?;
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        if let Err(error) =
            clima_telemetry::admin::serve(listener, metrics, readiness, async move { shutdown.cancelled().await }).await
        {
            tracing::error!(%error, "admin server failed");
        }
    });
    Ok(address)
}

/// The process's Prometheus recorder, installed by the first service started
/// (one per process, unless tests start several in one).
fn metrics_recorder() -> anyhow::Result<PrometheusHandle> {
    static RECORDER: std::sync::Mutex<Option<PrometheusHandle>> = std::sync::Mutex::new(None);
    let mut installed = RECORDER.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(handle) = &*installed {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    Ok(installed.insert(handle).clone())
}
