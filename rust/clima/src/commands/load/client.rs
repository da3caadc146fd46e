//! A lean HTTP/1.1 client for the load generator: each connection is one
//! hyper `SendRequest` over keep-alive TCP, so sending costs little next to
//! the server it measures (no pool lookups, no URL parsing per request).

use std::sync::Mutex;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What one request attempt came to.
pub(super) enum Outcome {
    /// 202, with the number of tweets the API accepted.
    Accepted(u64),
    /// 4xx: the request is wrong and retrying will not help.
    Rejected(String),
    /// 5xx or a network error: worth retrying with the same Idempotency-Key.
    Failed(String),
}

/// Where requests go, parsed once.
pub(super) struct Target {
    uri: http::Uri,
    authority: String,
    address: String,
}

impl Target {
    pub(super) fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = url.parse().with_context(|| format!("invalid URL {url:?}"))?;
        anyhow::ensure!(uri.scheme_str() == Some("http"), "only http:// URLs are supported, not {url:?}");
        let authority = uri.authority().context("the URL has no host")?.to_string();
        let address = format!("{}:{}", uri.host().unwrap_or_default(), uri.port_u16().unwrap_or(80));
        Ok(Self { uri, authority, address })
    }

    pub(super) async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream =
            TcpStream::connect(&self.address).await.with_context(|| format!("connecting to {}", self.address))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the server closes the connection; the next send then fails and reconnects.
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// Idle keep-alive connections, shared by the requests of an open-loop run.
#[derive(Default)]
pub(super) struct Pool {
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Pool {
    /// Sends one request on an idle connection (or a new one) and returns the
    /// connection to the pool if it is still usable.
    pub(super) async fn post(&self, target: &Target, body: Bytes, idempotency_key: &str) -> Outcome {
        let idle = self.idle.lock().expect("pool lock").pop();
        let mut connection = match idle {
            Some(connection) if !connection.is_closed() => connection,
            _ => match target.connect().await {
                Ok(connection) => connection,
                Err(error) => return Outcome::Failed(format!("{error:#}")),
            },
        };
        let outcome = post(&mut connection, target, body, idempotency_key).await;
        if !connection.is_closed() && !matches!(outcome, Outcome::Failed(_)) {
            self.idle.lock().expect("pool lock").push(connection);
        }
        outcome
    }
}

/// `POST` the JSON body with an Idempotency-Key on `connection`.
pub(super) async fn post(
    connection: &mut SendRequest<Full<Bytes>>,
    target: &Target,
    body: Bytes,
    idempotency_key: &str,
) -> Outcome {
    if let Err(error) = connection.ready().await {
        return Outcome::Failed(format!("connection: {error}"));
    }
    let request = http::Request::post(&target.uri)
        .header(http::header::HOST, &target.authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", idempotency_key)
        .body(Full::new(body))
        .expect("a valid request");
    let response = match connection.send_request(request).await {
        Ok(response) => response,
        Err(error) => return Outcome::Failed(format!("{error}")),
    };
    let status = response.status();
    let body = match response.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => return Outcome::Failed(format!("reading the answer: {error}")),
    };
    if status == http::StatusCode::ACCEPTED {
        #[derive(serde::Deserialize)]
        struct Accepted {
            accepted: u64,
        }
        match serde_json::from_slice::<Accepted>(&body) {
            Ok(accepted) => Outcome::Accepted(accepted.accepted),
            Err(error) => Outcome::Failed(format!("202 with an unreadable body: {error}")),
        }
    } else if status.is_client_error() {
        Outcome::Rejected(format!("{status}: {}", String::from_utf8_lossy(&body)))
    } else {
        Outcome::Failed(format!("{status}: {}", String::from_utf8_lossy(&body)))
    }
}
