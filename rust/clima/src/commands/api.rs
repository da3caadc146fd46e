use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};

use tokio_util::sync::CancellationToken;

use crate::{Service, flags::ApiFlags, telemetry};

#[derive(Debug, clap::Args)]
pub(crate) struct ApiArgs {
    /// Address to listen on for HTTP.
    #[arg(long, env = "CLIMA_API_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Let several `clima api` processes listen on the same address
    /// (SO_REUSEPORT): the kernel spreads new connections across them, as a
    /// Service does across pods.
    #[arg(long, env = "CLIMA_API_REUSE_PORT")]
    reuse_port: bool,

    #[command(flatten)]
    admin: telemetry::AdminArgs,

    /// Let a client's `traceparent` sampled flag decide whether its request
    /// is traced. Off: clima's own sampler (OTEL_TRACES_SAMPLER) decides, and
    /// the spans still join the client's trace.
    #[arg(long, env = "CLIMA_TRUST_CLIENT_SAMPLING")]
    pub(crate) trust_client_sampling: bool,

    #[command(flatten)]
    pub(crate) config: ApiFlags,
}

fn bind(address: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(reuse_port)?;
    socket.bind(address)?;
    // Room for bursts of new connections while --max-connections are busy
    // (`TcpListener::bind` would give 128); the kernel caps it at somaxconn.
    socket.listen(1024)
}

pub(crate) async fn build(args: ApiArgs, shutdown: CancellationToken) -> anyhow::Result<Service> {
    let listener = bind(args.listen, args.reuse_port).with_context(|| format!("binding {}", args.listen))?;
    let admin = telemetry::serve_admin(
        args.admin.listen.unwrap_or(([127, 0, 0, 1], 9100).into()),
        telemetry::Readiness::ready(),
        &shutdown,
    )
    .await?;
    let address = listener.local_addr()?;
    // Built here, so a bad --writer or key file fails the start, not the serving.
    let api = clima_api::Api::new(args.config.into())?;
    let serving = api.serve(listener, async move { shutdown.cancelled().await });
    Ok(Service::new(Some(address), admin, async move { Ok(serving.await?) }))
}
