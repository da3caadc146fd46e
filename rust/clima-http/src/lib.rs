//! Serves an axum `Router` on a TCP listener with the limits a public HTTP
//! port needs, which `axum::serve` does not set:
//!
//! - a **header-read timeout**: a client must send a request's headers within
//!   it, and an idle keep-alive connection is closed after it (hyper starts
//!   the timer whenever a connection waits for its next request), so slow or
//!   idle clients cannot hold connections forever;
//! - a **connection cap**: at most that many connections are served; further
//!   ones wait in the listen backlog until one closes, so file descriptors and
//!   per-connection buffers stay bounded;
//! - an **idle timeout**: a connection that starts no request for that long
//!   is closed gracefully (HTTP/2 GOAWAY; streams in flight finish), since
//!   HTTP/2 pings alone keep an idle connection open forever;
//! - **HTTP/2 keep-alive pings** and a stream limit, for gRPC and h2c clients;
//! - optional **TLS** ([`tls`]), with client certificates, and a handshake
//!   bounded by the header-read timeout.
//!
//! Every connection gets `TCP_NODELAY` (small answers are not held back by
//! Nagle's algorithm) and is drained on shutdown. [`auth`] holds the API-key
//! check that clima's HTTP and gRPC ports share.

use std::{future::Future, pin::pin, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    net::TcpListener,
    sync::{Notify, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

pub mod auth;
pub mod tls;

/// Limits of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Longest a client may take to send a request's headers (or finish the
    /// TLS handshake), and longest an idle HTTP/1 keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// Longest any connection stays open without starting a request.
    pub idle_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
}

/// Default header-read timeout.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Default idle timeout: long enough for a dashboard or gRPC client between
/// polls, short enough that abandoned HTTP/2 connections do not pile up.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default connection cap.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Serves `app` over plain HTTP; see [`serve_tls`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_tls(listener, app, limits, None, shutdown).await
}

/// Serves `app` on `listener` within `limits`, over TLS if `tls` is given,
/// until `shutdown` resolves; then waits for the connections in flight to
/// finish their requests.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<tls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(256);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut shutdown = pin!(shutdown);
    loop {
        // Waiting for a free slot before accepting leaves excess clients in
        // the kernel's backlog instead of refusing them.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
        let connection = Connection { builder: builder.clone(), app: app.clone(), limits, stop: stop.clone() };
        let tls = tls.clone();
        connections.spawn(async move {
            let _slot = slot;
            // hyper's header timer starts once it knows the protocol; a client
            // that connects and sends nothing gets the same time to begin.
            // (`peek` waits for a byte; `readable` may report a fresh socket ready.)
            let mut first = [0u8; 1];
            match tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut first)).await {
                Ok(Ok(read)) if read > 0 => {}
                _ => return,
            }
            match tls {
                None => connection.serve(TokioIo::new(stream)).await,
                Some(acceptor) => match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await
                {
                    Ok(Ok(stream)) => connection.serve(TokioIo::new(stream)).await,
                    Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// One accepted connection and what serving it needs.
struct Connection {
    builder: auto::Builder<TokioExecutor>,
    app: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
}

impl Connection {
    async fn serve<I>(self, io: I)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let request_started = Arc::new(Notify::new());
        let service = {
            let request_started = Arc::clone(&request_started);
            self.app.map_request(move |request| {
                request_started.notify_one();
                request
            })
        };
        let mut connection = pin!(self.builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service)));
        let mut closing = false;
        // Until its first request a connection gets only the header-read time:
        // hyper's header timer does not cover a client that finished the TLS
        // handshake (or the HTTP/2 preface) and then went silent.
        let mut idle_timeout = self.limits.header_read_timeout;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    return;
                }
                // A request began: the idle timer starts again.
                () = request_started.notified(), if !closing => idle_timeout = self.limits.idle_timeout,
                () = tokio::time::sleep(idle_timeout), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = self.stop.cancelled(), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
