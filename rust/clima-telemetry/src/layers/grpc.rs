use std::{
    collections::HashSet,
    error::Error,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use axum::http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prost::Message as _;
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
/// `Router::route_layer` for gRPC routes served through axum.
#[derive(Debug, Clone)]
pub struct GrpcServerLayer {
    /// `/package.Service/Method` of every method the server has.
    methods: Arc<HashSet<String>>,
}

impl GrpcServerLayer {
    /// A layer for a server with the services of these encoded
    /// `FileDescriptorSet`s (what reflection registers), besides the health
    /// and reflection services every clima server has. Calls of any other
    /// path are labelled `_OTHER`: clients choose paths, and the key check or
    /// the router may answer before anything refuses an unknown one.
    pub fn new(descriptor_sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let standard = [
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut methods = HashSet::new();
        for encoded in descriptor_sets.iter().chain(&standard) {
            for file in prost_types::FileDescriptorSet::decode(*encoded)?.file {
                let package = file.package();
                for service in &file.service {
                    let service_name = if package.is_empty() {
                        service.name().to_owned()
                    } else {
                        format!("{package}.{}", service.name())
                    };
                    methods.extend(service.method.iter().map(|method| format!("/{service_name}/{}", method.name())));
                }
            }
        }
        Ok(Self { methods: Arc::new(methods) })
    }
}

impl<S> Layer<S> for GrpcServerLayer {
    type Service = GrpcServer<S>;

    fn layer(&self, inner: S) -> GrpcServer<S> {
        GrpcServer { inner, methods: Arc::clone(&self.methods) }
    }
}

/// The service [`GrpcServerLayer`] makes.
#[derive(Debug, Clone)]
pub struct GrpcServer<S> {
    inner: S,
    methods: Arc<HashSet<String>>,
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
        let known = self.methods.contains(request.uri().path());
        let call = Call::start(Side::Server, request.uri(), known, |service, method| {
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
        });
        propagation::set_parent(&call.span, &HeaderExtractor(request.headers()));
        GrpcResponseFuture::new(call, |span| span.in_scope(|| self.inner.call(request)))
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
        let side = Side::Client { target: Arc::clone(&self.target) };
        // Its own code chooses the paths: all are labels.
        let call = Call::start(side, request.uri(), true, |service, method| {
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
        });
        if let Some(LinkedSpans(others)) = request.extensions_mut().remove::<LinkedSpans>() {
            for other in &others {
                propagation::add_link(&call.span, other);
            }
        }
        propagation::inject(&call.span, &mut HeaderInjector(request.headers_mut()));
        GrpcResponseFuture::new(call, |span| span.in_scope(|| self.inner.call(request)))
    }
}

/// `/package.Service/Method` as (`package.Service`, `Method`).
fn rpc_name(uri: &Uri) -> Option<(String, String)> {
    match uri.path().trim_start_matches('/').split_once('/') {
        Some((service, method)) if !service.is_empty() && !method.is_empty() && !method.contains('/') => {
            Some((service.to_owned(), method.to_owned()))
        }
        _ => None,
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
    /// A call of `uri`'s method (`_OTHER` unless `known`), in the span `span`
    /// makes of its service and method (none for health checks).
    fn start(side: Side, uri: &Uri, known: bool, span: impl FnOnce(&str, &str) -> Span) -> Self {
        let (service, method) = rpc_name(uri).filter(|_| known).unwrap_or_else(|| (OTHER.to_owned(), OTHER.to_owned()));
        let span = if service == HEALTH_SERVICE { Span::none() } else { span(&service, &method) };
        Self { side, service, method, span, started: Instant::now(), done: false }
    }

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
        let (service, method) = (self.service.as_str(), self.method.as_str());
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

/// The status of a call answered with HTTP `status` and no gRPC status, by
/// gRPC's HTTP-to-gRPC mapping (tonic's, for an answer without a body);
/// `None` for 200, whose status is still to come in the trailers.
fn http_status_code(status: StatusCode) -> Option<Code> {
    Some(match status {
        StatusCode::OK => return None,
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    })
}

/// The status of a call that got no response: the `Status` in the error if
/// there is one, `Cancelled` for the channel's timeout (as tonic's client
/// says), else `Unavailable`. (tonic's client also reads hyper's and h2's
/// errors more finely; these metrics do not.)
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

impl<F> GrpcResponseFuture<F> {
    /// The future `call_inner` makes, run in `call`'s span.
    fn new(call: Call, call_inner: impl FnOnce(&Span) -> F) -> Self {
        let span = call.span.clone();
        Self { inner: call_inner(&span).instrument(span), call: Some(call) }
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
                // headers ("trailers-only"); an answer that is not gRPC (a
                // proxy's 502, the dashboard's JSON 401) has its HTTP status;
                // any other call's status comes in the trailers at the end of
                // the body.
                if let Some(code) = status_code(response.headers()).or_else(|| http_status_code(response.status())) {
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
        let mut this = self.project();
        let frame = {
            // A streaming server's work happens as its body is polled: in the span.
            let _entered = this.call.span.enter();
            ready!(this.inner.as_mut().poll_frame(cx))
        };
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    // Trailers without a status break the protocol.
                    this.call.finish(status_code(trailers).unwrap_or(Code::Unknown));
                } else if this.inner.is_end_stream() {
                    // hyper polls no further once a body says it has ended.
                    this.call.finish(Code::Unknown);
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
