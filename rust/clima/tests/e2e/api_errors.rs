use std::time::{Duration, Instant};

use clima_api::ApiConfig;
use tokio::net::TcpListener;

use crate::helpers::{TestStack, post_json};

const TWEET: &str = r#"{"description":"Está lloviendo","country":"GT","weather":"Lluvioso"}"#;

#[tokio::test]
async fn bad_requests_get_json_errors_that_name_the_problem() {
    let stack = TestStack::spawn().await;
    let client = reqwest::Client::new();
    let url = format!("{}/input", stack.api);

    let wrong_type = client.post(&url).header("content-type", "text/plain").body(TWEET).send().await.unwrap();
    assert_eq!(wrong_type.status().as_u16(), 415);
    let answer: serde_json::Value = wrong_type.json().await.unwrap();
    assert_eq!(answer["error"], "unsupported_media_type");

    let huge = format!("[{}]", vec![TWEET; 20_000].join(","));
    let (status, answer) = post_json(&client, &url, &huge).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"], "payload_too_large");

    let too_many = format!("[{}]", vec![TWEET; 1001].join(","));
    let (status, _) = post_json(&client, &url, &too_many).await;
    assert_eq!(status, 413);

    let (status, answer) = stack.post_input(r#"[{"description":"a","country":"GT","weather":"Soleado"},{"description":"b","country":"GTM","weather":"Soleado"}]"#).await;
    assert_eq!(
        (status, answer["error"].as_str(), answer["field"].as_str()),
        (422, Some("invalid_tweet"), Some("[1].country"))
    );

    let (status, answer) = stack.post_input(r#"{"description":"a","country":["GT"],"weather":"Soleado"}"#).await;
    assert_eq!(
        (status, answer["error"].as_str(), answer["field"].as_str()),
        (400, Some("invalid_json"), Some("country"))
    );

    let invalid_utf8 = client
        .post(&url)
        .header("content-type", "application/json")
        .body(b"{\"description\":\"\xff\",\"country\":\"GT\",\"weather\":\"Soleado\"}".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(invalid_utf8.status().as_u16(), 400);

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
    assert!(answer["message"].as_str().unwrap().contains(&missing.to_string()), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3), "503 took {:?}", started.elapsed());

    let ready = client.get(format!("http://{api}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
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
    tokio::spawn(clima_api::serve(listener, config, std::future::pending()));
    tokio::time::sleep(Duration::from_millis(100)).await;

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
    assert_eq!(client.get(format!("http://{api}/healthz")).send().await.unwrap().status().as_u16(), 200);

    let (redis, valkey) = stack.counted(2).await;
    assert_eq!((redis.total, valkey.total), (2, 2), "only the two authorised tweets are counted");
    std::fs::remove_file(key_file).unwrap();
}
