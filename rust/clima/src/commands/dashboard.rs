use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clima_dashboard::{Access, StoreReader, Stores};
use clima_http::{auth::ApiKey, tls::TlsFiles};
use clima_store::KeySchema;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::stats::StoresArgs;
use crate::{Service, telemetry};

#[derive(Debug, clap::Args)]
pub(crate) struct DashboardArgs {
    /// Address to serve the page, /api/stats and gRPC StatsService on.
    #[arg(long, env = "CLIMA_DASHBOARD_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,

    #[command(flatten)]
    admin: telemetry::AdminArgs,

    #[command(flatten)]
    stores: StoresArgs,

    /// PEM certificate chain to serve HTTPS (and gRPC over TLS) with.
    #[arg(id = "tls_cert", long = "tls-cert", env = "CLIMA_DASHBOARD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(id = "tls_key", long = "tls-key", env = "CLIMA_DASHBOARD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// PEM CA certificate that must have signed every client's certificate (mutual TLS).
    #[arg(long = "tls-client-ca", env = "CLIMA_DASHBOARD_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,

    /// API key that the page, /api/stats and StatsService require
    /// (`Authorization: Bearer <key>`, `X-Api-Key`, or as the password of a
    /// browser's login prompt); none means open. Probes stay open.
    #[arg(long = "api-key", env = "CLIMA_DASHBOARD_API_KEY", hide_env_values = true, conflicts_with = "api_key_file")]
    api_key: Option<String>,

    /// File holding --api-key (e.g. a mounted Kubernetes Secret).
    #[arg(id = "api_key_file", long = "api-key-file", env = "CLIMA_DASHBOARD_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
}

impl DashboardArgs {
    fn access(&self) -> anyhow::Result<Access> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let files = TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: self.tls_client_ca.clone() };
                Some(files.acceptor().context("dashboard TLS")?)
            }
            _ => None,
        };
        let api_key = ApiKey::load(self.api_key.as_deref(), self.api_key_file.as_deref())?;
        Ok(Access { tls, api_key })
    }
}

pub(crate) async fn build(args: DashboardArgs, shutdown: CancellationToken) -> anyhow::Result<Service> {
    let access = args.access()?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    let admin = telemetry::serve_admin(
        args.admin.listen.unwrap_or(([127, 0, 0, 1], 9105).into()),
        telemetry::Readiness::ready(),
        &shutdown,
    )
    .await?;
    let keys = KeySchema::new(&args.stores.key_prefix);
    let stores = Stores::new(
        StoreReader::new(&args.stores.redis_url, keys.clone()),
        StoreReader::new(&args.stores.valkey_url, keys),
    );
    let scheme = if access.tls.is_some() { "https" } else { "http" };
    tracing::info!("dashboard: {scheme}://{address}/");
    let serving = clima_dashboard::serve(listener, stores, access, async move { shutdown.cancelled().await });
    Ok(Service::new(Some(address), admin, async move { Ok(serving.await?) }))
}
