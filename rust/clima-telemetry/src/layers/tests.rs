//! The layers against real servers on loopback: what each request records.

use std::{future::Future, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{Method, StatusCode},
    routing::post,
};
use clima_http::ConnectionLimits;
use clima_proto::v1::{PublishRequest, writer_service_client::WriterServiceClient};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use tonic::transport::{Endpoint, Server, server::TcpIncoming};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tower::{Layer, ServiceExt};

use super::{GrpcClientLayer, GrpcServerLayer, HttpServerLayer};

/// Runs `test` with a recorder of its own, so tests running at once do not
/// see each other's samples; returns the recorder's rendering.
fn recorded<F: Future<Output = ()>>(test: impl FnOnce() -> F) -> String {
    let recorder: PrometheusRecorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    metrics::with_local_recorder(&recorder, || runtime.block_on(test()));
    handle.render()
}

/// The value of the one series of `name` that has every label of `labels`.
fn sample(rendered: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = rendered
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|(key, value)| line.contains(&format!("{key}=\"{value}\""))))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches several series in\n{rendered}");
    found.first().copied()
}

#[test]
fn an_http_request_is_counted_by_its_route_template_and_status() {
    let rendered = recorded(|| async {
        let app = Router::new()
            .route("/input/{id}", post(|| async { StatusCode::ACCEPTED }))
            .route("/boom", post(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
            .layer(HttpServerLayer);
        for uri in ["/input/1", "/input/2", "/boom", "/nowhere"] {
            let request = axum::http::Request::post(uri).body(Body::empty()).unwrap();
            app.clone().oneshot(request).await.unwrap();
        }
        // hyper accepts any token as a method; the route answers 405.
        for method in ["FOO1", "FOO2"] {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let request = axum::http::Request::builder().method(method).uri("/input/1").body(Body::empty()).unwrap();
            app.clone().oneshot(request).await.unwrap();
        }
    });
    let requests =
        |route, status| sample(&rendered, "http_server_requests_total", &[("route", route), ("status", status)]);
    assert_eq!(requests("/input/{id}", "202"), Some(2.0), "{rendered}");
    assert_eq!(requests("/boom", "500"), Some(1.0));
    // An unknown path is not a label of its own: the series stay bounded.
    assert_eq!(requests("unmatched", "404"), Some(1.0));
    assert!(!rendered.contains("/nowhere"), "{rendered}");
    // Nor is a made-up method.
    let others = sample(&rendered, "http_server_requests_total", &[("method", "_OTHER"), ("status", "405")]);
    assert_eq!(others, Some(2.0), "{rendered}");
    assert!(!rendered.contains("FOO"), "{rendered}");
    let timed =
        sample(&rendered, "http_server_request_duration_seconds_count", &[("route", "/input/{id}"), ("status", "202")]);
    assert_eq!(timed, Some(2.0));
}

/// hyper drops a request's future when its client goes away: the request
/// still counts, as 499 (nginx's "client closed request").
#[test]
fn an_http_request_its_client_left_is_counted_499() {
    let rendered = recorded(|| async {
        let app = Router::new().route("/slow", post(std::future::pending::<StatusCode>)).layer(HttpServerLayer);
        let request = axum::http::Request::post("/slow").body(Body::empty()).unwrap();
        let left = tokio::time::timeout(Duration::from_millis(20), app.oneshot(request)).await;
        assert!(left.is_err(), "the handler never answers");
    });
    let left = sample(&rendered, "http_server_requests_total", &[("route", "/slow"), ("status", "499")]);
    assert_eq!(left, Some(1.0), "{rendered}");
}

#[test]
fn a_grpc_call_is_counted_on_both_sides_by_the_status_it_ended_with() {
    let mut target = String::new();
    let rendered = recorded(|| async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        target = format!("http://{}", listener.local_addr().unwrap());
        let (_reporter, health) = tonic_health::server::health_reporter();
        // A server with only the standard services: WriterService is not among them.
        let server = Server::builder().layer(GrpcServerLayer::new(&[]).unwrap()).add_service(health);
        tokio::spawn(server.serve_with_incoming(TcpIncoming::from(listener)));

        let channel =
            GrpcClientLayer::new(&target).layer(Endpoint::from_shared(target.clone()).unwrap().connect_lazy());
        let mut health = HealthClient::new(channel.clone());
        // OK: the status arrives in the trailers, after the message.
        health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
        health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
        // NOT_FOUND: an error answered at once, its status in the headers.
        let unknown = health.check(HealthCheckRequest { service: "nope".to_owned() }).await.unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        // A service this server does not have: a path the client chose.
        let missing = WriterServiceClient::new(channel).publish(PublishRequest::default()).await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unimplemented);
    });

    for (side, extra) in [("server", None), ("client", Some(("target", target.as_str())))] {
        let calls = |service, method, code| {
            let mut labels = vec![("service", service), ("method", method), ("code", code)];
            labels.extend(extra);
            sample(&rendered, &format!("grpc_{side}_requests_total"), &labels)
        };
        assert_eq!(calls("grpc.health.v1.Health", "Check", "Ok"), Some(2.0), "{side}: {rendered}");
        assert_eq!(calls("grpc.health.v1.Health", "Check", "NotFound"), Some(1.0), "{side}: {rendered}");
        // A server labels the methods it does not have as one, however many
        // paths clients try; a client's paths are its own code's.
        let unknown = if side == "server" { ("_OTHER", "_OTHER") } else { ("clima.v1.WriterService", "Publish") };
        assert_eq!(calls(unknown.0, unknown.1, "Unimplemented"), Some(1.0), "{side}: {rendered}");
        let timed = &format!("grpc_{side}_request_duration_seconds_count");
        assert_eq!(sample(&rendered, timed, &[("method", "Check"), ("code", "Ok")]), Some(2.0), "{side}");
    }
}

#[test]
fn a_grpc_call_to_nobody_is_counted_unavailable() {
    let rendered = recorded(|| async {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let target = format!("http://127.0.0.1:{port}");
        let channel = GrpcClientLayer::new(&target).layer(Endpoint::from_shared(target).unwrap().connect_lazy());
        let failed = HealthClient::new(channel).check(HealthCheckRequest::default()).await.unwrap_err();
        assert_eq!(failed.code(), tonic::Code::Unavailable);
    });
    let calls = sample(&rendered, "grpc_client_requests_total", &[("method", "Check"), ("code", "Unavailable")]);
    assert_eq!(calls, Some(1.0), "{rendered}");
}

/// A gRPC path answered with plain HTTP (what the dashboard's key check
/// answers a browser, or a proxy in front of a writer): both sides count it
/// by gRPC's HTTP-to-gRPC mapping, not as a call cut short.
#[test]
fn a_grpc_call_answered_without_grpc_is_counted_by_its_http_status() {
    let mut seen = None;
    let rendered = recorded(|| async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            // A proxy's bare refusal.
            .route("/grpc.health.v1.Health/Check", post(|| async { StatusCode::UNAUTHORIZED }))
            // The dashboard's refusal to a browser.
            .route("/grpc.health.v1.Health/Watch", post(|| async { (StatusCode::UNAUTHORIZED, r#"{"error":"x"}"#) }))
            .route_layer(GrpcServerLayer::new(&[]).unwrap());
        tokio::spawn(clima_http::serve(listener, app, ConnectionLimits::default(), std::future::pending()));

        let channel =
            GrpcClientLayer::new(&target).layer(Endpoint::from_shared(target.clone()).unwrap().connect_lazy());
        let mut health = HealthClient::new(channel);
        seen = Some(health.check(HealthCheckRequest::default()).await.unwrap_err().code());
        // tonic reads the JSON as a gRPC message and fails to (Internal).
        let _ = health.watch(HealthCheckRequest::default()).await;
        // The server records when hyper has sent the answer.
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
    assert_eq!(seen, Some(tonic::Code::Unauthenticated));
    let calls = |side, method| {
        let labels = [("method", method), ("code", "Unauthenticated")];
        sample(&rendered, &format!("grpc_{side}_requests_total"), &labels)
    };
    assert_eq!(calls("client", "Check"), Some(1.0), "{rendered}");
    assert_eq!(calls("server", "Check"), Some(1.0), "{rendered}");
    assert_eq!(calls("server", "Watch"), Some(1.0), "{rendered}");
}
