use std::net::SocketAddr;

use anyhow::Context;
use clima_api::ApiConfig;
use tokio::net::TcpListener;

use crate::{shutdown, telemetry};

#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// Address to listen on for HTTP.
    #[arg(long, env = "CLIMA_API_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    #[command(flatten)]
    admin: telemetry::AdminArgs,

    /// Let a client's `traceparent` sampled flag decide whether its request
    /// is traced. Off: clima's own sampler (OTEL_TRACES_SAMPLER) decides, and
    /// the spans still join the client's trace.
    #[arg(long, env = "CLIMA_TRUST_CLIENT_SAMPLING")]
    pub(crate) trust_client_sampling: bool,

    #[command(flatten)]
    pub(crate) config: ApiConfig,
}

pub async fn run(args: ApiArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let shutdown = shutdown::on_signal();
    telemetry::serve_admin(
        args.admin.listen.unwrap_or(([127, 0, 0, 1], 9100).into()),
        telemetry::Readiness::ready(),
        &shutdown,
    )
    .await?;
    clima_api::serve(listener, args.config, async move { shutdown.cancelled().await }).await?;
    Ok(())
}
