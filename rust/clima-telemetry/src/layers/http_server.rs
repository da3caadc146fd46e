use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

use axum::{
    extract::MatchedPath,
    http::{Method, Request, Response, StatusCode},
};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::{Instrument, Span, field::Empty, instrument::Instrumented};

use crate::{
    events,
    propagation::{self, HeaderExtractor},
};

/// Serves each HTTP request in a server span that joins the caller's trace
/// (`traceparent` honoured) and records `http_server_*` metrics by route and
/// status. Apply with `Router::layer`, which runs after routing, so the route
/// template (`MatchedPath`) is known.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpServerLayer;

impl<S> Layer<S> for HttpServerLayer {
    type Service = HttpServer<S>;

    fn layer(&self, inner: S) -> HttpServer<S> {
        HttpServer { inner }
    }
}

/// The service [`HttpServerLayer`] makes.
#[derive(Debug, Clone)]
pub struct HttpServer<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpServer<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = HttpResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let method = method_label(request.method());
        // Bounded label: the route template, never the raw path.
        let route = request.extensions().get::<MatchedPath>().cloned();
        let route_name = route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
        // Probes would flood the trace store; they still get metrics.
        let span = if matches!(route_name, "/healthz" | "/readyz") {
            Span::none()
        } else {
            tracing::info_span!(
                "http.server",
                otel.name = %format_args!("{method} {route_name}"),
                otel.kind = "server",
                otel.status_code = Empty,
                http.request.method = method,
                http.route = %route_name,
                url.path = %request.uri().path(),
                http.response.status_code = Empty,
                clima.tweets = Empty,
            )
        };
        propagation::set_parent(&span, &HeaderExtractor(request.headers()));
        let served = Served { method, route, started: Instant::now(), done: false };
        let inner = span.in_scope(|| self.inner.call(request)).instrument(span);
        HttpResponseFuture { inner, served }
    }
}

/// The `route` label of a path no route matched.
const UNMATCHED: &str = "unmatched";

/// The `method` label: one of HTTP's methods, or `_OTHER` (OpenTelemetry's
/// name) for any other token a client sends, which hyper accepts; the label
/// stays bounded whatever clients send.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ];
    KNOWN.iter().find(|known| *known == method).map_or("_OTHER", Method::as_str)
}

/// One request, recorded once: with its status when the response is ready,
/// or as 499 (nginx's "client closed request") if the future is dropped
/// before, as hyper does when the client goes away mid-request.
struct Served {
    method: &'static str,
    route: Option<MatchedPath>,
    started: Instant,
    done: bool,
}

impl Served {
    fn finish(&mut self, status: u16) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let route = self.route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
        events::http_request_served(self.method, route, status, self.started.elapsed());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.finish(CLIENT_CLOSED_REQUEST);
    }
}

/// The status recorded for a request whose client left before the answer.
const CLIENT_CLOSED_REQUEST: u16 = 499;

pin_project! {
    /// The response future of [`HttpServer`]: records the request when it
    /// resolves, or when it is dropped before.
    pub struct HttpResponseFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        served: Served,
    }
}

impl<F, ResBody, E> Future for HttpResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = ready!(this.inner.as_mut().poll(cx));
        let status = result.as_ref().map_or(StatusCode::INTERNAL_SERVER_ERROR, Response::status);
        let span = this.inner.span();
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        this.served.finish(status.as_u16());
        Poll::Ready(result)
    }
}
