//! A long-running service, started the way the binary starts it.

use std::{ffi::OsString, future::Future, net::SocketAddr, pin::Pin};

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::{Cli, Command, commands, deprecated};

/// A service (`api`, `writer …`, `consumer …` or `dashboard`) with its ports
/// bound and its admin server up, ready to serve.
pub struct Service {
    address: Option<SocketAddr>,
    admin_address: SocketAddr,
    serving: Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>,
}

impl Service {
    /// Builds the service `args` name (`["writer", "kafka", "--listen",
    /// "127.0.0.1:0", …]`: the command line after `clima`) with the binary's
    /// startup code: flags (old spellings too) and their env vars parsed, its
    /// settings checked, ports bound (port 0 picks a free one), the admin
    /// server started. It stops when `shutdown` is cancelled. Unlike the
    /// binary, it leaves logging, tracing and signals to the caller.
    pub async fn build<I, T>(args: I, shutdown: CancellationToken) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let argv = std::iter::once(OsString::from("clima")).chain(args.into_iter().map(Into::into)).collect();
        let (argv, deprecation) = deprecated::upgrade(argv, |name| std::env::var(name).ok());
        if let Some(deprecation) = deprecation {
            tracing::warn!("{deprecation}");
        }
        Self::start(Cli::try_parse_from(argv)?.command, shutdown).await
    }

    pub(crate) async fn start(command: Command, shutdown: CancellationToken) -> anyhow::Result<Self> {
        match command {
            Command::Api(args) => commands::api::build(args, shutdown).await,
            Command::Writer(args) => commands::writer::build(args, shutdown).await,
            Command::Consumer(args) => commands::consumer::build(args, shutdown).await,
            Command::Dashboard(args) => commands::dashboard::build(args, shutdown).await,
            _ => anyhow::bail!("not a service: only api, writer, consumer and dashboard run as one"),
        }
    }

    pub(crate) fn new(
        address: Option<SocketAddr>,
        admin_address: SocketAddr,
        serving: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> Self {
        Self { address, admin_address, serving: Box::pin(serving) }
    }

    /// Where it serves HTTP or gRPC; none for a consumer.
    pub fn address(&self) -> Option<SocketAddr> {
        self.address
    }

    /// Its admin server: `/metrics`, `/healthz` and `/readyz`.
    pub fn admin_address(&self) -> SocketAddr {
        self.admin_address
    }

    /// Serves until the shutdown token is cancelled and in-flight work is done.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.serving.await
    }
}
