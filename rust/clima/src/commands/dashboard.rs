use std::net::SocketAddr;

use anyhow::Context;
use clima_dashboard::{StoreReader, Stores};
use clima_store::KeySchema;
use tokio::net::TcpListener;

use super::stats::StoresArgs;
use crate::{shutdown, telemetry};

#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// Address to serve the page, /api/stats and gRPC StatsService on.
    #[arg(long, env = "CLIMA_DASHBOARD_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,

    #[command(flatten)]
    admin: telemetry::AdminArgs,

    #[command(flatten)]
    stores: StoresArgs,
}

pub async fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let shutdown = shutdown::on_signal();
    telemetry::serve_admin(args.admin.listen.unwrap_or(([127, 0, 0, 1], 9105).into()), &shutdown).await?;
    let keys = KeySchema::new(&args.stores.key_prefix);
    let stores = Stores::new(
        StoreReader::new(&args.stores.redis_url, keys.clone()),
        StoreReader::new(&args.stores.valkey_url, keys),
    );
    tracing::info!("dashboard: http://{}/", args.listen);
    clima_dashboard::serve(listener, stores, async move { shutdown.cancelled().await }).await?;
    Ok(())
}
