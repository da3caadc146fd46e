use std::{
    error::Error,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use axum::http::{HeaderMap, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Code;
use tower::{Layer, Service};
use tracing::{Instrument, Span, field::Empty, instrument::Instrumented};

use crate::{
    events,
    propagation::{self, HeaderExtractor, HeaderInjector},
};

/// Probes call it every few seconds: metrics yes, spans no.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
/// OpenTelemetry's name for a method the server does not know; it keeps
/// metric labels bounded whatever paths clients send.
const OTHER: &str = "_OTHER";

/// Serves each gRPC call of a server in a `grpc.server` span that joins the
/// caller's trace, and records `grpc_server_*` metrics by service, method and
/// status code. `tonic::transport::Server::builder().layer(..)`, or
/// `Router::layer` for gRPC routes served through axum.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcServerLayer;

impl<S> Layer<S> for GrpcServerLayer {
    type Service = GrpcServer<S>;

    fn layer(&self, inner: S) -> GrpcServer<S> {
        GrpcServer { inner }
    }
}

/// The service [`GrpcServerLayer`] makes.
#[derive(Debug, Clone)]
pub struct GrpcServer<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcServer<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Error + 'static,
{
    type Response = Response<GrpcBody<ResBody>>;
    type Error = S::Error;
    type Future = GrpcResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (service, method) = rpc_name(request.uri());
        let span = if service == HEALTH_SERVICE {
            Span::none()
        } else {
            tracing::info_span!(
                "grpc.server",
                otel.name = %format_args!("{service}/{method}"),
                otel.kind = "server",
                otel.status_code = Empty,
                rpc.system = "grpc",
                rpc.service = %service,
                rpc.method = %method,
                rpc.grpc.status_code = Empty,
            )
        };
        propagation::set_parent(&span, &HeaderExtractor(request.headers()));
        let call =
            Call { side: Side::Server, service, method, span: span.clone(), started: Instant::now(), done: false };
        let inner = span.in_scope(|| self.inner.call(request)).instrument(span);
        GrpcResponseFuture { inner, call: Some(call) }
    }
}

/// Makes each call on a channel to `target` in a `grpc.client` span, a child
/// of the caller's current span, whose context travels in the request's
/// headers, and records `grpc_client_*` metrics by service, method, target
/// and status code. Wrap the channel: `Client::new(layer.layer(channel))`.
#[derive(Debug, Clone)]
pub struct GrpcClientLayer {
    target: Arc<str>,
}

impl GrpcClientLayer {
    /// `target` is the endpoint the channel connects to (`http://host:port`).
    pub fn new(target: &str) -> Self {
        Self { target: target.into() }
    }
}

impl<S> Layer<S> for GrpcClientLayer {
    type Service = GrpcClient<S>;

    fn layer(&self, inner: S) -> GrpcClient<S> {
        let uri: Uri = self.target.parse().unwrap_or_default();
        let host = uri.host().unwrap_or_default().into();
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
        GrpcClient { inner, target: Arc::clone(&self.target), host, port }
    }
}

/// The service [`GrpcClientLayer`] makes.
#[derive(Debug, Clone)]
pub struct GrpcClient<S> {
    inner: S,
    target: Arc<str>,
    /// `server.address` and `server.port` of the spans.
    host: Arc<str>,
    port: u16,
}

/// The spans of the other requests one call serves, such as a batch's: put in
/// the request's extensions, and the call's span links to each of them
/// (OpenTelemetry's batch links). The span's parent is the caller's current span.
#[derive(Debug, Clone, Default)]
pub struct LinkedSpans(pub Vec<Span>);

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcClient<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Error + 'static,
{
    type Response = Response<GrpcBody<ResBody>>;
    type Error = S::Error;
    type Future = GrpcResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let (service, method) = rpc_name(request.uri());
        let span = if service == HEALTH_SERVICE {
            Span::none()
        } else {
            tracing::info_span!(
                "grpc.client",
                otel.name = %format_args!("{service}/{method}"),
                otel.kind = "client",
                otel.status_code = Empty,
                rpc.system = "grpc",
                rpc.service = %service,
                rpc.method = %method,
                rpc.grpc.status_code = Empty,
                server.address = %self.host,
                server.port = self.port,
            )
        };
        if let Some(LinkedSpans(others)) = request.extensions_mut().remove::<LinkedSpans>() {
            for other in &others {
                propagation::add_link(&span, other);
            }
        }
        propagation::inject(&span, &mut HeaderInjector(request.headers_mut()));
        let side = Side::Client { target: Arc::clone(&self.target) };
        let call = Call { side, service, method, span: span.clone(), started: Instant::now(), done: false };
        let inner = span.in_scope(|| self.inner.call(request)).instrument(span);
        GrpcResponseFuture { inner, call: Some(call) }
    }
}

/// `/package.Service/Method` as (`package.Service`, `Method`).
fn rpc_name(uri: &Uri) -> (String, String) {
    match uri.path().trim_start_matches('/').split_once('/') {
        Some((service, method)) if !service.is_empty() && !method.is_empty() && !method.contains('/') => {
            (service.to_owned(), method.to_owned())
        }
        _ => (OTHER.to_owned(), OTHER.to_owned()),
    }
}

#[derive(Debug)]
enum Side {
    Server,
    Client { target: Arc<str> },
}

/// One call, recorded once: when its status is known, or as CANCELLED if
/// it is dropped before (the peer went away).
struct Call {
    side: Side,
    service: String,
    method: String,
    span: Span,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let took = self.started.elapsed();
        self.span.record("rpc.grpc.status_code", code as i32);
        // OpenTelemetry's RPC conventions: a client fails on every code but OK,
        // a server only on the codes that are its own fault.
        let failed = match self.side {
            Side::Client { .. } => code != Code::Ok,
            Side::Server => matches!(
                code,
                Code::Unknown
                    | Code::DeadlineExceeded
                    | Code::Unimplemented
                    | Code::Internal
                    | Code::Unavailable
                    | Code::DataLoss
            ),
        };
        if failed {
            self.span.record("otel.status_code", "ERROR");
        }
        let (service, method) =
            if code == Code::Unimplemented { (OTHER, OTHER) } else { (self.service.as_str(), self.method.as_str()) };
        match &self.side {
            Side::Server => events::grpc_request_served(service, method, code, took),
            Side::Client { target } => events::grpc_request_made(service, method, target, code, took),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// The status of a call whose response or trailers are `headers`, if they hold one.
fn status_code(headers: &HeaderMap) -> Option<Code> {
    headers.get("grpc-status").map(|value| Code::from_bytes(value.as_bytes()))
}

/// The status a failed call ends with, as tonic's client maps it.
fn error_code(error: &(dyn Error + 'static)) -> Code {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(status) = error.downcast_ref::<tonic::Status>() {
            return status.code();
        }
        if error.is::<tonic::TimeoutExpired>() {
            return Code::Cancelled;
        }
        source = error.source();
    }
    Code::Unavailable
}

pin_project! {
    /// The response future of [`GrpcServer`] and [`GrpcClient`].
    pub struct GrpcResponseFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for GrpcResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Error + 'static,
{
    type Output = Result<Response<GrpcBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = this.call.take().expect("GrpcResponseFuture polled after completion");
        Poll::Ready(match result {
            Ok(response) => {
                // A call that fails at once answers with its status in the
                // headers ("trailers-only"); any other call's status comes in
                // the trailers at the end of the body.
                if let Some(code) = status_code(response.headers()) {
                    call.finish(code);
                }
                Ok(response.map(|inner| GrpcBody { inner, call }))
            }
            Err(error) => {
                call.finish(error_code(&error));
                Err(error)
            }
        })
    }
}

pin_project! {
    /// A gRPC response body that records its call when the trailers arrive.
    pub struct GrpcBody<B> {
        #[pin]
        inner: B,
        call: Call,
    }
}

impl<B: Body> Body for GrpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    // Trailers without a status break the protocol.
                    this.call.finish(status_code(trailers).unwrap_or(Code::Unknown));
                }
            }
            // The stream broke, or ended without its status.
            Some(Err(_)) | None => this.call.finish(Code::Unknown),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
