//! The API→writer hop's two possible encodings, side by side in one process:
//! the same `Publish` calls with the same records over tonic (HTTP/2 +
//! protobuf, what clima uses) and over HTTP/1.1 keep-alive + the proto's JSON
//! mapping (pbjson, the mapping `POST /input` speaks). Both servers decode the
//! request and answer; neither publishes, so only the hop itself is measured.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::header, routing::post};
use clima_proto::v1::{
    PublishRequest, PublishResponse, Tweet, TweetRecord, Weather,
    writer_service_client::WriterServiceClient,
    writer_service_server::{WriterService, WriterServiceServer},
};
use hdrhistogram::Histogram;
use prost::Message;
use serde::Serialize;
use tokio::net::TcpListener;

/// What `clima bench hop` runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Records per Publish call.
    pub records: usize,
    /// Publish calls per encoding.
    pub calls: u64,
    /// Calls in flight at once (the API's --batch-in-flight is 8).
    pub concurrency: u64,
}

#[derive(Debug, Serialize)]
struct HopReport {
    encoding: &'static str,
    records: usize,
    calls: u64,
    seconds: f64,
    calls_per_s: f64,
    tweets_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Request body bytes (gRPC: its 5-byte frame header plus the protobuf).
    body_bytes_per_tweet: f64,
    /// User + system CPU of the whole process (client and server) per tweet.
    cpu_us_per_tweet: f64,
}

/// The writer's decode-and-answer, without a broker.
struct Decoder;

#[tonic::async_trait]
impl WriterService for Decoder {
    async fn publish(
        &self,
        request: tonic::Request<PublishRequest>,
    ) -> Result<tonic::Response<PublishResponse>, tonic::Status> {
        let published = u32::try_from(request.into_inner().records.len()).unwrap_or(u32::MAX);
        Ok(tonic::Response::new(PublishResponse { published }))
    }
}

async fn publish_json(
    State(()): State<()>,
    body: Bytes,
) -> Result<([(header::HeaderName, &'static str); 1], Vec<u8>), axum::http::StatusCode> {
    let request: PublishRequest = serde_json::from_slice(&body).map_err(|_| axum::http::StatusCode::BAD_REQUEST)?;
    let published = u32::try_from(request.records.len()).unwrap_or(u32::MAX);
    let answer = serde_json::to_vec(&PublishResponse { published })
        .map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], answer))
}

/// A request like the API's: canonical v7 ids, the receive time, a short Spanish report.
fn request(records: usize) -> PublishRequest {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let countries = ["GT", "MX", "SV", "HN", "CR", "PA", "CO", "PE"];
    let records = (0..records)
        .map(|i| TweetRecord {
            id: uuid::Uuid::now_v7().to_string(),
            received_at: Some(pbjson_types::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: now.subsec_nanos() as i32,
            }),
            tweet: Some(Tweet {
                description: "Está lloviendo en la capital".to_owned(),
                country: countries[i % countries.len()].to_owned(),
                weather: Weather::Lluvioso.into(),
            }),
            trace_context: Default::default(),
        })
        .collect();
    PublishRequest { records }
}

/// CPU seconds (user + system) this process has used; /proc counts in USER_HZ = 100.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |index: usize| fields.get(index).and_then(|value| value.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs `calls` calls of `call` with `concurrency` in flight; the latencies and the wall time.
async fn drive<F, Fut>(calls: u64, concurrency: u64, call: F) -> anyhow::Result<(Histogram<u64>, Duration)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let share = calls / concurrency + u64::from(worker < calls % concurrency);
        let (call, latencies) = (call.clone(), Arc::clone(&latencies));
        tasks.push(tokio::spawn(async move {
            let mut own = Histogram::<u64>::new(3)?;
            for _ in 0..share {
                let sent = Instant::now();
                call().await?;
                own.record(sent.elapsed().as_micros() as u64)?;
            }
            latencies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.add(own)?;
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let histogram = latencies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    Ok((histogram, elapsed))
}

fn report(
    encoding: &'static str,
    config: &Config,
    body_bytes: usize,
    latencies: &Histogram<u64>,
    elapsed: Duration,
    cpu: f64,
) -> HopReport {
    let tweets = (config.calls * config.records as u64) as f64;
    let seconds = elapsed.as_secs_f64();
    HopReport {
        encoding,
        records: config.records,
        calls: config.calls,
        seconds,
        calls_per_s: config.calls as f64 / seconds,
        tweets_per_s: tweets / seconds,
        p50_ms: latencies.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
        body_bytes_per_tweet: body_bytes as f64 / config.records as f64,
        cpu_us_per_tweet: cpu * 1e6 / tweets,
    }
}

/// Unmeasured calls before each encoding's run.
fn warm_up(config: &Config) -> u64 {
    (config.calls / 10).clamp(config.concurrency, 1000)
}

async fn listener() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    Ok((listener, address))
}

/// Runs the calls over both encodings and prints a JSON report of each.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let request = request(config.records.max(1));

    // gRPC: tonic on both ends, one HTTP/2 connection as the API keeps per writer;
    // once with TCP_NODELAY on the server's sockets (as the writer serves since
    // this comparison found it missing) and once without (as it served before).
    let mut reports = Vec::new();
    for (encoding, nodelay) in [("grpc+protobuf", true), ("grpc+protobuf, server without TCP_NODELAY", false)] {
        let (grpc_listener, grpc_address) = listener().await?;
        let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(nodelay));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(WriterServiceServer::new(Decoder))
                .serve_with_incoming(incoming),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_address}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        let client = WriterServiceClient::new(channel);
        let grpc_request = request.clone();
        let call = move || {
            let (mut client, request) = (client.clone(), grpc_request.clone());
            async move {
                client.publish(request).await?;
                Ok(())
            }
        };
        // Warm up (connections, allocator, branch predictors) before measuring.
        drive(warm_up(&config), config.concurrency, call.clone()).await?;
        let cpu = cpu_seconds();
        let (latencies, elapsed) = drive(config.calls, config.concurrency, call).await?;
        reports.push(report(encoding, &config, 5 + request.encoded_len(), &latencies, elapsed, cpu_seconds() - cpu));
    }

    // HTTP/1.1 + JSON: axum on the server, a keep-alive pool on the client.
    let (json_listener, json_address) = listener().await?;
    let app = Router::new().route("/clima.v1.WriterService/Publish", post(publish_json)).with_state(());
    tokio::spawn(async move { axum::serve(json_listener, app).await });
    let http = reqwest::Client::builder().http1_only().tcp_nodelay(true).build()?;
    let url = format!("http://{json_address}/clima.v1.WriterService/Publish");
    let json_body_len = serde_json::to_vec(&request)?.len();
    let call = move || {
        let (http, url, request) = (http.clone(), url.clone(), request.clone());
        async move {
            // Encoding is part of the cost, as the API would encode each call.
            let body = serde_json::to_vec(&request)?;
            let answer = http.post(&url).header("content-type", "application/json").body(body).send().await?;
            let answer: PublishResponse = serde_json::from_slice(&answer.error_for_status()?.bytes().await?)?;
            anyhow::ensure!(answer.published as usize == request.records.len(), "short answer");
            Ok(())
        }
    };
    drive(warm_up(&config), config.concurrency, call.clone()).await?;
    let cpu = cpu_seconds();
    let (latencies, elapsed) = drive(config.calls, config.concurrency, call).await?;
    reports.push(report("http/1.1+json", &config, json_body_len, &latencies, elapsed, cpu_seconds() - cpu));

    for line in reports {
        println!("{}", serde_json::to_string(&line)?);
    }
    Ok(())
}
