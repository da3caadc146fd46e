use std::time::{Duration, Instant};

use clima_api::ApiConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestStack, post_json};

const TWEET: &str = r#"{"description":"Está lloviendo","country":"GT","weather":"Lluvioso"}"#;

/// Each 4xx is covered without services in clima-api's `routes_tests`; this
/// sends a few through the real listener and stack and proves that none of
/// them is counted anywhere.
#[tokio::test]
async fn bad_requests_get_json_errors_and_are_counted_nowhere() {
    let stack = TestStack::spawn().await;
    let client = reqwest::Client::new();
    let url = format!("{}/input", stack.api);

    let wrong_type = client.post(&url).header("content-type", "text/plain").body(TWEET).send().await.unwrap();
    assert_eq!(wrong_type.status().as_u16(), 415);
    let answer: serde_json::Value = wrong_type.json().await.unwrap();
    assert_eq!(answer["error"], "unsupported_media_type");

    // 4 MiB is the default body limit.
    let huge = format!("[{}]", vec![TWEET; 70_000].join(","));
    let (status, answer) = post_json(&client, &url, &huge).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"], "payload_too_large");

    // One bad tweet rejects its whole array, the valid one with it.
    let (status, answer) = stack.post_input(r#"[{"description":"a","country":"GT","weather":"Soleado"},{"description":"b","country":"GTM","weather":"Soleado"}]"#).await;
    assert_eq!(
        (status, answer["error"].as_str(), answer["field"].as_str()),
        (422, Some("invalid_tweet"), Some("[1].country"))
    );

    let (redis, valkey) = stack.counted(0).await;
    assert_eq!((redis.total, valkey.total), (0, 0), "rejected requests are counted nowhere");
}

#[tokio::test]
async fn a_missing_writer_means_503_quickly_and_not_ready() {
    let stack = TestStack::spawn().await;
    // An API whose second writer does not exist: nothing listens on the port.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let missing = closed.local_addr().unwrap();
    drop(closed);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let config = ApiConfig::with_writers(vec![format!("http://{}", stack.kafka_writer), format!("http://{missing}")]);
    tokio::spawn(clima_api::serve(listener, config, std::future::pending()));

    let client = reqwest::Client::new();
    let started = Instant::now();
    let (status, answer) = post_json(&client, &format!("http://{api}/input"), TWEET).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "unavailable");
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("1 of 2 writers") && message.contains("Idempotency-Key"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3), "503 took {:?}", started.elapsed());

    let ready = client.get(format!("http://{api}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let ready = ready.text().await.unwrap();
    assert!(ready.contains("UNREACHABLE"), "{ready}");
    // Clients, probes included, are not told internal addresses; the API's log names them.
    for body in [&answer.to_string(), &ready] {
        assert!(!body.contains(&missing.port().to_string()), "an internal endpoint in {body}");
    }
    let health = client.get(format!("http://{api}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test]
async fn a_stalled_upload_times_out_and_excess_requests_are_shed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let stack = TestStack::spawn().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let config = ApiConfig {
        max_concurrent_requests: 1,
        request_timeout: Duration::from_millis(800),
        ..ApiConfig::with_writers(vec![
            format!("http://{}", stack.kafka_writer),
            format!("http://{}", stack.rabbitmq_writer),
        ])
    };
    tokio::spawn(clima_api::serve(listener, config, std::future::pending()));

    // A client that promises a body and sends only half of it holds the only slot.
    let mut stalled = tokio::net::TcpStream::connect(api).await.unwrap();
    let head = format!(
        "POST /input HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        TWEET.len()
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(&TWEET.as_bytes()[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let client = reqwest::Client::new();
    let (status, answer) = post_json(&client, &format!("http://{api}/input"), TWEET).await;
    assert_eq!((status, answer["error"].as_str()), (503, Some("overloaded")), "{answer}");

    let mut response = String::new();
    stalled.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("request_timeout"), "{response}");

    // The slot is free again.
    assert_eq!(post_json(&client, &format!("http://{api}/input"), TWEET).await.0, 202);
}

#[tokio::test]
async fn an_api_key_from_a_file_guards_input_but_not_the_probes() {
    let stack = TestStack::spawn().await;
    let key_file = std::env::temp_dir().join(clima_testkit::unique_name("api-key"));
    std::fs::write(&key_file, "s3cret-key\n").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let config = ApiConfig {
        api_key_file: Some(key_file.clone()),
        ..ApiConfig::with_writers(vec![
            format!("http://{}", stack.kafka_writer),
            format!("http://{}", stack.rabbitmq_writer),
        ])
    };
    // The listener is bound: connections wait in its backlog until serve accepts them.
    tokio::spawn(clima_api::serve(listener, config, std::future::pending()));

    let client = reqwest::Client::new();
    let url = format!("http://{api}/input");
    let post = |header: Option<(&'static str, &'static str)>| {
        let mut request = client.post(&url).header("content-type", "application/json").body(TWEET);
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        request.send()
    };
    for header in [None, Some(("authorization", "Bearer wrong")), Some(("x-api-key", "s3cret-ke"))] {
        let response = post(header).await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{header:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "unauthorized");
    }
    assert_eq!(post(Some(("authorization", "Bearer s3cret-key"))).await.unwrap().status().as_u16(), 202);
    assert_eq!(post(Some(("x-api-key", "s3cret-key"))).await.unwrap().status().as_u16(), 202);
    // The scheme's letter case does not matter (RFC 9110 §11.1).
    for scheme in ["bearer s3cret-key", "BEARER s3cret-key"] {
        assert_eq!(post(Some(("authorization", scheme))).await.unwrap().status().as_u16(), 202, "{scheme}");
    }
    assert_eq!(client.get(format!("http://{api}/healthz")).send().await.unwrap().status().as_u16(), 200);

    let (redis, valkey) = stack.counted(4).await;
    assert_eq!((redis.total, valkey.total), (4, 4), "only the four authorised tweets are counted");
    std::fs::remove_file(key_file).unwrap();
}

/// A TCP relay to `upstream` that forwards nothing until `release` is
/// cancelled: a real writer behind a network that stalls.
async fn stalled_relay(upstream: std::net::SocketAddr, release: CancellationToken) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let release = release.clone();
            tokio::spawn(async move {
                release.cancelled().await;
                let mut writer = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut writer).await;
            });
        }
    });
    address
}

/// A request timeout that strikes after the tweets were handed to the writers
/// must not say 4xx ("nothing was forwarded"): the tweet is still published
/// and counted, so the answer is a 503 that says to retry with the same key.
#[tokio::test]
async fn a_timeout_after_the_hand_off_is_a_503_and_the_tweet_is_counted() {
    let stack = TestStack::spawn().await;
    let release = CancellationToken::new();
    let stalled_writer = stalled_relay(stack.rabbitmq_writer, release.clone()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let config = ApiConfig {
        request_timeout: Duration::from_secs(1),
        writer_timeout: Duration::from_secs(5),
        ..ApiConfig::with_writers(vec![format!("http://{}", stack.kafka_writer), format!("http://{stalled_writer}")])
    };
    tokio::spawn(clima_api::serve(listener, config, std::future::pending()));

    let client = reqwest::Client::new();
    let started = Instant::now();
    let (status, answer) = post_json(&client, &format!("http://{api}/input"), TWEET).await;
    assert_eq!((status, answer["error"].as_str()), (503, Some("timeout_after_handoff")), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("Idempotency-Key"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());

    release.cancel();
    let (redis, valkey) = stack.counted(1).await;
    assert_eq!((redis.total, valkey.total), (1, 1), "the tweet behind the 503 is counted, once, in both stores");
}

/// A client that never finishes its headers, or keeps an idle connection,
/// loses it after --header-read-timeout.
#[tokio::test]
async fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let config = ApiConfig {
        header_read_timeout: Duration::from_millis(500),
        ..ApiConfig::with_writers(vec!["http://127.0.0.1:1".to_owned()])
    };
    tokio::spawn(clima_api::serve(listener, config, std::future::pending()));

    let closed_within = |mut stream: tokio::net::TcpStream| async move {
        let started = Instant::now();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the connection was still open after 10 s");
        (started.elapsed(), String::from_utf8_lossy(&rest).into_owned())
    };

    let mut slow = tokio::net::TcpStream::connect(api).await.unwrap();
    slow.write_all(b"POST /input HTTP/1.1\r\nhost: x\r\ncontent-type: application").await.unwrap();
    let (after, _) = closed_within(slow).await;
    assert!(after < Duration::from_secs(3), "slow headers held the connection for {after:?}");

    // A client that connects and sends nothing at all.
    let silent = tokio::net::TcpStream::connect(api).await.unwrap();
    let (after, _) = closed_within(silent).await;
    assert!(after < Duration::from_secs(3), "a silent client held the connection for {after:?}");

    let mut idle = tokio::net::TcpStream::connect(api).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let (after, response) = closed_within(idle).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(after < Duration::from_secs(3), "an idle keep-alive connection was held for {after:?}");
}
