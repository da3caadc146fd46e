//! Connection limits of `clima_http::serve` that need no broker: an HTTP/2
//! connection that starts no request within the idle timeout is closed, one
//! that keeps sending requests is not.

use std::time::{Duration, Instant};

use axum::{Router, routing::get};
use clima_http::ConnectionLimits;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

const IDLE: Duration = Duration::from_millis(400);

async fn server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let limits = ConnectionLimits { idle_timeout: IDLE, ..ConnectionLimits::default() };
    let app = Router::new().route("/", get(|| async { "ok" }));
    tokio::spawn(clima_http::serve(listener, app, limits, std::future::pending()));
    address
}

/// An HTTP/2 (h2c) connection: its request sender, and a task that ends when the connection does.
async fn h2_connection(
    address: std::net::SocketAddr,
) -> (hyper::client::conn::http2::SendRequest<Empty<Bytes>>, tokio::task::JoinHandle<()>) {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    (sender, tokio::spawn(async move { connection.await.unwrap_or_default() }))
}

async fn get_root(sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>) -> u16 {
    let request = http::Request::get("http://localhost/").body(Empty::new()).unwrap();
    sender.send_request(request).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_and_a_busy_one_is_not() {
    let address = server().await;

    let (mut idle, idle_connection) = h2_connection(address).await;
    assert_eq!(get_root(&mut idle).await, 200);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), idle_connection)
        .await
        .expect("the idle connection stayed open")
        .unwrap();
    assert!(started.elapsed() >= IDLE / 2, "closed after {:?}, before it was idle", started.elapsed());

    let (mut busy, busy_connection) = h2_connection(address).await;
    for _ in 0..12 {
        assert_eq!(get_root(&mut busy).await, 200);
        tokio::time::sleep(IDLE / 4).await;
    }
    assert!(!busy_connection.is_finished(), "a connection in use was closed");
}
